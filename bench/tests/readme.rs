//! README's bench commands still run as written: every `--peers` list in its code (spans
//! and blocks) names peers the bench knows, every `cargo run -p bench` line of its blocks
//! parses, and the commands under "Where the goals stand" judge the goals with their
//! defaults. A peer renamed or dropped (as `early` was) fails here, not in a reader's
//! shell.
#![allow(clippy::unwrap_used)]

use bench::args::{Args, Mode};
use bench::goals;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Pushes the inline code spans of one paragraph (a span may run over a line break).
fn spans(paragraph: &str, out: &mut Vec<String>) {
    let parts: Vec<&str> = paragraph.split('`').collect();
    assert!(parts.len() % 2 == 1, "a code span left open in README:\n{paragraph}");
    out.extend(parts.iter().skip(1).step_by(2).map(|s| s.to_string()));
}

/// The code in markdown `md`: each line of its fenced blocks and each inline span.
fn code(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut paragraph = String::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            spans(&paragraph, &mut out);
            paragraph.clear();
            fenced = !fenced;
        } else if fenced {
            out.push(line.to_string());
        } else if line.trim().is_empty() {
            spans(&paragraph, &mut out);
            paragraph.clear();
        } else {
            paragraph.push_str(line);
            paragraph.push('\n');
        }
    }
    spans(&paragraph, &mut out);
    out
}

/// Every list given to `--peers` in `code`, without placeholders: `...` in a list stands
/// for other peers, and a list in capitals (`--peers P`) for any.
fn peers_lists(code: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for c in code {
        let mut words = c.split_whitespace();
        while let Some(word) = words.next() {
            if word != "--peers" {
                continue;
            }
            let list = words.next().unwrap_or_else(|| panic!("`{c}`: --peers without a list"));
            if list.chars().all(|ch| ch.is_ascii_uppercase()) {
                continue;
            }
            let named: Vec<&str> = list.split(',').filter(|p| !matches!(*p, "..." | "…")).collect();
            if !named.is_empty() {
                out.push(named.join(","));
            }
        }
    }
    out
}

/// The arguments of each `cargo run --release -p bench -- …` line in `code`, without
/// the comment after `#`.
fn bench_commands<'a>(code: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    code.into_iter()
        .filter_map(|line| line.split_once("-p bench -- "))
        .map(|(_, rest)| rest.split('#').next().unwrap_or("").trim().to_string())
        .collect()
}

fn parse(command: &str) -> Result<Args, String> {
    Args::parse(command.split_whitespace().map(String::from))
}

#[test]
fn every_peers_list_in_readme_names_peers_the_bench_knows() {
    let lists = peers_lists(&code(&readme()));
    // README has a dozen; far fewer means the extraction broke, not that all is well.
    assert!(lists.len() >= 8, "README's --peers lists not found: {lists:?}");
    let refused: Vec<String> = lists
        .iter()
        .filter_map(|l| parse(&format!("--peers {l}")).err().map(|e| format!("--peers {l}: {e}")))
        .collect();
    assert!(refused.is_empty(), "README names peers the bench refuses: {refused:#?}");
}

#[test]
fn every_bench_command_in_readme_s_blocks_parses() {
    let code = code(&readme());
    let commands = bench_commands(code.iter().map(String::as_str));
    assert!(commands.len() >= 15, "README's bench commands not found: {commands:?}");
    let refused: Vec<String> =
        commands.iter().filter_map(|c| parse(c).err().map(|e| format!("{c}: {e}"))).collect();
    assert!(refused.is_empty(), "README shows commands the bench refuses: {refused:#?}");
}

/// The figures of "Where the goals stand" are these commands' goal tables: each must
/// judge the goals as shown, with no setting that departs from the issue's.
#[test]
fn the_goals_commands_in_readme_judge_the_goals() {
    let md = readme();
    let at = md.find("### Where the goals stand").expect("README's goals section");
    let block = md[at..].split("```").nth(1).expect("the section's command block");
    let mut judging = 0;
    for command in bench_commands(block.lines()) {
        let args = parse(&command).unwrap_or_else(|e| panic!("{command}: {e}"));
        if matches!(args.mode, Mode::Matrix | Mode::Modes | Mode::Conns | Mode::Idle) {
            assert_eq!(goals::departures(&args), Vec::<&str>::new(), "{command}");
            judging += 1;
        }
    }
    assert!(judging >= 4, "matrix, modes, conns and idle not all found in:\n{block}");
}
