//! The sans-IO benches' exchange (`testing::OneWay`, as benches/v1.rs and benches/v2.rs
//! run it) a fixed number of times, with no clock or thread, for counting instructions
//! per 4 KiB message under callgrind:
//!
//! `v1_one_way CRC(0|1) lossy|lossless reads|pieces|budget BATCH ITERS [v1|v2|v2secure]`
//!
//! (`reads`: `carry_reads`; `pieces`: `carry_with_credit`; `budget`: `carry`. The last
//! word picks the machines: msgr v1 by default, msgr2 in crc or secure mode, for which
//! CRC is ignored: msgr2's crc mode always checks its crcs.) Per message: (Ir of 2·ITERS
//! − Ir of ITERS) ÷ (ITERS · BATCH), which leaves out the setup.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use protocol::auth::ConMode;
use protocol::testing::{Delivery, OneWay, Pair};

#[allow(clippy::disallowed_methods)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let crc = arg(1) != "0";
    let lossy = arg(2) == "lossy";
    let delivery = match arg(3) {
        "pieces" => Delivery::Pieces,
        "budget" => Delivery::BudgetPerMessage,
        _ => Delivery::Reads,
    };
    let batch: u64 = arg(4).parse().unwrap_or(250);
    let iters: u64 = arg(5).parse().unwrap_or(100);
    let open = match arg(6) {
        "v2" => Pair::open_v2(Instant::now(), ConMode::CRC, lossy),
        "v2secure" => Pair::open_v2(Instant::now(), ConMode::SECURE, lossy),
        _ => Pair::open_v1(Instant::now(), crc, lossy),
    };
    let mut case = OneWay::new(open, 4096);
    let mut total = 0;
    for _ in 0..iters {
        let got = case.run(batch, delivery);
        assert_eq!(got, batch);
        total += got;
    }
    println!("{total} messages, {} reads, {} direct", case.reads.reads, case.reads.direct_reads);
}
