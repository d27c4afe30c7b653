//! Fuzz body for the admin socket's command reader (`messenger::CommandReader`) and its
//! command parser (`messenger::parse_command`): whatever a local client writes, in
//! whatever pieces.
//!
//! Input layout: byte 0 seeds the chunking, byte 1 how many times the rest is repeated
//! (so a short input can make a command far over the 64 KiB limit); the rest is what the
//! client writes.
//!
//! Properties: no panic; the command is exactly the bytes before the first NUL or
//! newline, and there is none when the client closes without either (it is answered
//! nothing, as by Ceph); it is refused if and only if what came before the terminator (or
//! the end) is longer than the limit, and nothing beyond the limit is ever buffered; the
//! parse is an object with a string `prefix`. A first byte NUL is a request of Ceph's
//! binary protocol: never refused, its fourth byte picks the command, and cut short it
//! gets no answer.

use messenger::{parse_command, CommandReader, CommandTooLong};

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
    let outcome = read(*seed, &stream);
    if stream.first() == Some(&0) {
        let expected = stream.get(3).map(|&code| match code {
            0 => "0",
            1 => "perfcounters_dump",
            2 => "perfcounters_schema",
            _ => "foo",
        });
        let command = outcome.expect("a binary request was refused");
        let prefix = command.map(|c| parse_command(&c)["prefix"].as_str().map(str::to_owned));
        assert_eq!(prefix, expected.map(|p| Some(p.to_owned())));
        return;
    }
    let end = stream.iter().position(|&b| b == 0 || b == b'\n');
    let expected = &stream[..end.unwrap_or(stream.len())];
    let too_long = expected.len() > CommandReader::MAX;
    match outcome {
        Ok(Some(command)) => {
            assert!(end.is_some(), "a command without a terminator was taken");
            assert!(!too_long, "a {}-byte command was accepted", expected.len());
            assert_eq!(command, expected);
            let parsed = parse_command(&command);
            assert!(parsed.get("prefix").is_some_and(|p| p.is_string()), "{parsed}");
        }
        Ok(None) => {
            assert!(end.is_none(), "a terminated command was left unanswered");
            assert!(!too_long, "a {}-byte command was buffered whole", expected.len());
        }
        Err(_) => assert!(too_long, "a {}-byte command was refused", expected.len()),
    }
}

/// What a reader makes of `stream`, fed in pieces drawn from `seed` and then closed: the
/// command (`None`: nothing to answer, the stream ended first) or its refusal.
fn read(seed: u8, stream: &[u8]) -> Result<Option<Vec<u8>>, CommandTooLong> {
    let mut reader = CommandReader::default();
    let mut state = u32::from(seed) | 0x100;
    let mut at = 0;
    while at < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + (state % 8192) as usize).min(stream.len() - at);
        if let Some(command) = reader.feed(&stream[at..at + n])? {
            return Ok(Some(command));
        }
        at += n;
    }
    Ok(None)
}
