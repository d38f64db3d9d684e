//! The seed programs of the primitives issue, run as the real programs they are: each
//! example starts its own processes (the `init()` path) and prints what it proved.

mod common;

use std::process::Command;

use common::*;

procpool::test_harness!();

fn run_example(name: &str) -> String {
    run_example_with(name, &[])
}

fn run_example_with(name: &str, args: &[&str]) -> String {
    let out = Command::new(workspace_binary(name, true))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn producer_consumer_moves_every_word() {
    let out = run_example("producer_consumer");
    assert!(
        out.contains("produced 14 words, consumed 14, 57 letters in all"),
        "{out}"
    );
}

#[test]
fn washer_and_dryers_handle_every_dish() {
    let out = run_example("washer_dryer");
    assert!(out.contains("washer washed 6 dishes"), "{out}");
    assert_eq!(out.matches("Putting away").count(), 6, "{out}");
    assert!(out.contains("Putting away saucer (dried by"), "{out}");
}

#[test]
fn the_shared_counter_reaches_forty_thousand_with_the_lock() {
    let out = run_example("counter");
    assert!(out.contains("with a lock:    40000"), "{out}");
    assert!(out.contains("atomic fetch_add:          40000"), "{out}");
}

#[test]
fn a_terminated_process_reports_minus_fifteen() {
    let out = run_example("terminate");
    assert!(
        out.contains("join_timeout(500ms) -> None, is_alive = true"),
        "{out}"
    );
    assert!(
        out.contains("after terminate: killed by SIGTERM (exitcode -15)\n"),
        "{out}"
    );
    assert!(out.contains("return: exitcode 0, result Ok(42)"), "{out}");
    assert!(out.contains("exit: exitcode 3"), "{out}");
}

#[test]
fn the_async_example_awaits_and_cancels_under_a_timeout() {
    let out = run_example("async_tokio");
    assert!(out.contains("awaited both: 200 and 100"), "{out}");
    assert!(out.contains("the task was cancelled"), "{out}");
    assert!(out.contains("after the cancel: 10"), "{out}");
}

#[test]
fn the_demo_says_its_speedup_and_the_cpus_it_really_got() {
    // A small count (5^5, eight times): the figures are not checked, only said.
    let out = run_example_with("count", &["5", "8"]);
    assert!(out.contains("counting to 5^5 = 3125 8 times"), "{out}");
    assert!(out.contains("CPUs available to this process"), "{out}");
    assert!(out.contains("using"), "{out}");
    assert!(out.contains("the CPUs they really got allow"), "{out}");
}
