//! msgr v1 frames: banner, connect, connect_reply, tags, message header and footer, crc32c.
