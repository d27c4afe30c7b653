//! Fuzz body for the admin socket's command reader (`messenger::CommandReader`) and its
//! command parser (`messenger::parse_command`): whatever a local client writes, in
//! whatever pieces.
//!
//! Input layout: byte 0 seeds the chunking, byte 1 how many times the rest is repeated
//! (so a short input can make a command far over the 64 KiB limit); the rest is what the
//! client writes.
//!
//! Properties: no panic; the command is exactly the bytes before the first NUL or newline
//! (or all of them when the client closes without either); it is refused if and only if that is longer
//! than the limit, and nothing beyond the limit is ever buffered; the parse is an object
//! with a string `prefix`.

use messenger::{parse_command, CommandReader};

/// Most bytes a repeated input grows to.
const MAX_STREAM: usize = 256 << 10;

pub fn admin_command(data: &[u8]) {
    let [seed, repeat, bytes @ ..] = data else { return };
    let times = 1 + usize::from(*repeat) * 64;
    let mut stream = Vec::with_capacity((bytes.len() * times).min(MAX_STREAM));
    for _ in 0..times {
        if stream.len() + bytes.len() > MAX_STREAM {
            break;
        }
        stream.extend_from_slice(bytes);
    }
    let expected = match stream.iter().position(|&b| b == 0 || b == b'\n') {
        Some(end) => &stream[..end],
        None => &stream[..],
    };
    let too_long = expected.len() > CommandReader::MAX;
    let mut reader = CommandReader::default();
    let mut state = u32::from(*seed) | 0x100;
    let mut at = 0;
    let mut outcome = None;
    while at < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + (state % 8192) as usize).min(stream.len() - at);
        match reader.feed(&stream[at..at + n]) {
            Ok(Some(command)) => {
                outcome = Some(Ok(command));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                outcome = Some(Err(e));
                break;
            }
        }
        at += n;
    }
    match outcome.unwrap_or_else(|| Ok(reader.finish())) {
        Ok(command) => {
            assert!(!too_long, "a {}-byte command was accepted", expected.len());
            assert_eq!(command, expected);
            let parsed = parse_command(&command);
            assert!(parsed.get("prefix").is_some_and(|p| p.is_string()), "{parsed}");
        }
        Err(_) => assert!(too_long, "a {}-byte command was refused", expected.len()),
    }
}
