//! Throughput through a real Sendmail 8.17 (private instances from Debian's packages,
//! loopback-only network namespace: run with bench/run.sh): smtp-source -> Sendmail ->
//! smtp-sink, alternating rounds of Sendmail without a milter, with a do-nothing milter
//! and with msys-milter, each configured with packaging/sendmail/msys-milter.mc. Prints
//! a Markdown table for BENCHMARKS.md.

#[allow(dead_code)] // Each benchmark uses its own subset.
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{
    bench_messages, campaign_message, median, null_milter, print_milter_rows, smtp_sink, submit,
};
use support::Milter;
use support::postfix::free_port;
use support::sendmail::Sendmail;

/// Sendmail defers or refuses mail when the load average passes a few per CPU; a
/// benchmark on 2 cores gets there, and the test is of the milter, not of that policy.
const NO_LOAD_LIMITS: &str = "define(`confQUEUE_LA', `1000')dnl\n\
                              define(`confREFUSE_LA', `1000')dnl\n\
                              define(`confDELAY_LA', `0')dnl\n";

fn main() {
    if std::env::var_os("MSYS_TEST_SENDMAIL_ROOT").is_none() {
        println!(
            "### Through Sendmail\n\nNot run: MSYS_TEST_SENDMAIL_ROOT is unset (bench/run.sh unpacks Sendmail)."
        );
        return;
    }
    let count = bench_messages().map_or(2000, |n| n / 2);
    let rounds = 3;
    let (_sink, sink_port) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message.txt");
    campaign_message(&message);

    let plain = Sendmail::start_for_benchmark(None, sink_port, NO_LOAD_LIMITS);
    let null_port = free_port();
    let _null = null_milter(null_port);
    let with_null = Sendmail::start_for_benchmark(Some(null_port), sink_port, NO_LOAD_LIMITS);
    let msys_port = free_port();
    let with_msys = Sendmail::start_for_benchmark(Some(msys_port), sink_port, NO_LOAD_LIMITS);
    let _msys = Milter::start_on(
        msys_port,
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
    );
    let round = |sendmail: &Sendmail, count: usize| {
        submit(sendmail.smtp_port, &message, count, 20, || {
            sendmail.queue_is_empty()
        })
    };
    for s in [&plain, &with_null, &with_msys] {
        round(s, count / 10);
    }
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(round(&plain, count));
        b.push(round(&with_null, count));
        c.push(round(&with_msys, count));
    }
    let (a, b, c) = (median(a), median(b), median(c));
    println!("### Through Sendmail: smtp-source -> Sendmail -> smtp-sink\n");
    println!(
        "Sendmail 8.17.1.9 (Debian's packages, unpacked), configured with packaging/sendmail/msys-milter.mc; {count} messages a round (the message of the Postfix table), 20 sessions, median of {rounds} alternating rounds; msgs/s from the first message sent until Sendmail's queue is empty. Sendmail forks a process per connection and per delivery.\n"
    );
    print_milter_rows("Sendmail", a, b, c);
}
