//! Fuzz body for the typed message decoders (`protocol::messages`).
//!
//! Input layout: byte 0 picks the message type ([`TYPES`], modulo its length), byte 1
//! holds the header version (low nibble) and compat version (high nibble), the rest is
//! the front. Properties checked on every input:
//! - decoding never panics (a typed error or a value);
//! - what decodes re-encodes (Pacific features) to bytes that decode to the same value,
//!   and re-encoding that value is byte-identical (encode ∘ decode is a fixpoint);
//! - the same bytes read as a bare MonMap blob obey the same fixpoint, and encode for
//!   every feature level without panicking.

use bytes::Bytes;
use protocol::messages::{decode_any, AnyMessage, MonMap, TypedMessage};
use protocol::types::Features;
use protocol::Message;

/// The message types the registry decodes, indexed by the input's first byte.
pub const TYPES: [u16; 14] = [2, 70, 97, 98, 17, 18, 15, 16, 4, 62, 19, 20, 50, 51];

const PACIFIC: Features = Features::PACIFIC_ADVERTISED;

/// Feature levels that select every MonMap / address / subscribe encoding.
const LEVELS: [Features; 5] = [
    Features::PACIFIC_ADVERTISED,
    Features(Features::PACIFIC_ADVERTISED.0 & !Features::SERVER_NAUTILUS.0),
    Features(Features::PACIFIC_ADVERTISED.0 & !Features::MONENC.0),
    Features(Features::PACIFIC_ADVERTISED.0 & !Features::MONNAMES.0),
    Features::NONE,
];

/// Builds the received message an input describes (`None` if it is too short).
pub fn message_from_input(data: &[u8]) -> Option<Message> {
    let [ty, vc, front @ ..] = data else { return None };
    let mut m = Message::new(TYPES[usize::from(*ty) % TYPES.len()], Bytes::copy_from_slice(front));
    m.set_version(u16::from(vc & 0x0f));
    m.set_compat_version(u16::from(vc >> 4));
    Some(m)
}

/// The input that describes `msg` (for writing seed corpus files).
pub fn input_from_message(msg: &Message) -> Vec<u8> {
    let idx = TYPES.iter().position(|&t| t == msg.msg_type()).unwrap_or(0);
    let vc = (msg.compat_version().min(15) as u8) << 4 | msg.version().min(15) as u8;
    let mut out = vec![idx as u8, vc];
    out.extend_from_slice(msg.front());
    out
}

fn encode(any: &AnyMessage, f: Features) -> Message {
    match any {
        AnyMessage::Ping(m) => m.to_message(f),
        AnyMessage::OsdPing(m) => m.to_message(f),
        AnyMessage::Command(m) => m.to_message(f),
        AnyMessage::CommandReply(m) => m.to_message(f),
        AnyMessage::Auth(m) => m.to_message(f),
        AnyMessage::AuthReply(m) => m.to_message(f),
        AnyMessage::MonSubscribe(m) => m.to_message(f),
        AnyMessage::MonSubscribeAck(m) => m.to_message(f),
        AnyMessage::MonMap(m) => m.to_message(f),
        AnyMessage::Config(m) => m.to_message(f),
        AnyMessage::MonGetVersion(m) => m.to_message(f),
        AnyMessage::MonGetVersionReply(m) => m.to_message(f),
        AnyMessage::MonCommand(m) => m.to_message(f),
        AnyMessage::MonCommandAck(m) => m.to_message(f),
        AnyMessage::Raw(m) => m.clone(),
    }
}

/// The target body.
pub fn typed_messages(data: &[u8]) {
    if let Some(msg) = message_from_input(data) {
        if let Ok(any) = decode_any(&msg) {
            assert!(!matches!(any, AnyMessage::Raw(_)), "a typed type decoded raw");
            let wire = encode(&any, PACIFIC);
            let again =
                decode_any(&wire).unwrap_or_else(|e| panic!("re-encoded {any:?} fails: {e}"));
            assert_eq!(again, any, "decode(encode(x)) != x");
            assert_eq!(encode(&again, PACIFIC), wire, "encoding is not a fixpoint");
            for f in LEVELS {
                let _ = encode(&any, f);
            }
        }
    }
    if let Ok(map) = MonMap::decode(data) {
        let bytes = map.to_bytes(PACIFIC);
        let again = MonMap::decode(&bytes).unwrap_or_else(|e| panic!("re-encoded map fails: {e}"));
        assert_eq!(again, map);
        for f in LEVELS {
            assert!(MonMap::decode(&map.to_bytes(f)).is_ok(), "{f:?} form does not decode");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Replays `corpus/typed_messages/` (and every prefix of each seed) through the body.
    #[test]
    fn typed_messages_corpus_replays_cleanly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/typed_messages");
        let mut seeds = 0;
        let mut decoded = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}"));
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            typed_messages(&data);
            if message_from_input(&data).is_some_and(|m| decode_any(&m).is_ok()) {
                decoded += 1;
            }
            for cut in 0..data.len() {
                typed_messages(&data[..cut]);
            }
            seeds += 1;
        }
        assert!(seeds >= 14, "a seed per message type, found {seeds}");
        assert_eq!(decoded, seeds, "every seed is a valid message");
    }

    /// Stand-in for a libFuzzer session without cargo-fuzz: mutates the seeds (bit flips,
    /// byte stores, cuts, splices of random runs, big values over count fields).
    /// `FUZZ_ITERS=2000000 FUZZ_SEED=7 cargo test --release typed_messages -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn typed_messages_random_mutations() {
        let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
        let (iters, seed) = (env("FUZZ_ITERS", 200_000), env("FUZZ_SEED", 0x5eed));
        eprintln!("typed_messages: seed {seed}, {iters} inputs");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/typed_messages");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect();
        assert!(!seeds.is_empty());
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, start) = (0u64, std::time::Instant::now());
        for _ in 0..iters {
            let mut buf = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                if buf.is_empty() {
                    break;
                }
                let at = (next() % buf.len() as u64) as usize;
                match next() % 6 {
                    0 => buf[at] ^= 1 << (next() % 8),
                    1 => buf[at] = next() as u8,
                    2 => buf.truncate(at),
                    3 => {
                        let n = (next() % 12) as usize;
                        let run: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                        buf.splice(at..at, run);
                    }
                    4 if at + 4 <= buf.len() => {
                        let v = if next() % 2 == 0 { next() as u32 } else { (next() % 40) as u32 };
                        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    _ => {
                        let end = (at + (next() % 16) as usize).min(buf.len());
                        buf.drain(at..end);
                    }
                }
            }
            // Keep the header byte mostly valid so the decoders, not the compat check, run.
            if buf.len() > 1 && next() % 4 != 0 {
                buf[1] = (buf[1] & 0x0f) | 0x10;
            }
            if message_from_input(&buf).is_some_and(|m| decode_any(&m).is_ok()) {
                ok += 1;
            }
            typed_messages(&buf);
        }
        eprintln!("typed_messages: {iters} executions ({ok} decoded) in {:?}", start.elapsed());
    }
}
