//! `Process`: one job in a process of its own, with `multiprocessing`'s exitcodes,
//! joins that return within their timeout, and no zombie whatever becomes of the
//! handle.

mod common;

use std::time::{Duration, Instant};

use common::*;
use procpool::{JobError, Process, StartMethod};

procpool::test_harness!();

#[test]
fn a_job_returns_its_value_with_exitcode_zero() {
    let p = Process::spawn(square, 12).expect("process starts");
    assert!(
        p.name().starts_with("Process-"),
        "default name {}",
        p.name()
    );
    assert_eq!(p.result(), Ok(144));
    assert_eq!(
        p.result(),
        Err(JobError::ResultTaken),
        "the value is handed over once"
    );
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    assert_gone(&[p.pid()]);
}

#[test]
fn join_timeout_on_a_sleeping_job_returns_and_it_is_still_alive() {
    let p = Process::builder()
        .name("sleeper")
        .spawn(sleep_ms, 60_000)
        .expect("process starts");
    assert_eq!(p.name(), "sleeper");
    let asked = Instant::now();
    assert_eq!(p.join_timeout(Duration::from_millis(200)), None);
    // Not a timing assertion: only that the join did not wait for the 60 s job.
    assert!(asked.elapsed() < Duration::from_secs(30));
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    assert!(is_running(p.pid()));
    p.kill();
    assert_eq!(p.join_timeout(PATIENCE), Some(-9));
    assert_gone(&[p.pid()]);
}

#[test]
fn terminate_gives_minus_fifteen_and_terminated() {
    let p = Process::spawn(sleep_ms, 60_000).expect("process starts");
    p.terminate();
    assert_eq!(p.join(), -15);
    assert_eq!(p.result(), Err(JobError::Terminated));
    assert_gone(&[p.pid()]);
}

#[test]
fn kill_gives_minus_nine() {
    let p = Process::spawn(sleep_ms, 60_000).expect("process starts");
    p.kill();
    assert_eq!(p.join(), -9);
    assert_eq!(p.result(), Err(JobError::Terminated));
    // Signals after the end reach nobody (the pid may be someone else's by now).
    p.kill();
    p.terminate();
    assert_gone(&[p.pid()]);
}

#[test]
fn exit_three_gives_three_and_worker_lost() {
    let p = Process::spawn(crash, Crash::Exit(3)).expect("process starts");
    assert_eq!(p.join(), 3);
    match p.result() {
        Err(JobError::WorkerLost { pid, exitcode, .. }) => {
            assert_eq!((pid, exitcode), (p.pid(), 3));
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
}

#[test]
fn a_panic_gives_a_nonzero_exitcode_and_panicked() {
    let p = Process::spawn(crash, Crash::Panic).expect("process starts");
    assert_eq!(p.join(), 1);
    match p.result() {
        Err(JobError::Panicked { message }) => assert!(message.contains("deliberate panic")),
        other => panic!("expected Panicked, got {other:?}"),
    }
}

#[test]
fn a_failing_job_gives_exitcode_one_and_failed() {
    let p = Process::spawn(fail_on_threes, 9).expect("process starts");
    assert_eq!(p.join(), 1);
    assert_eq!(
        p.result(),
        Err(JobError::Failed {
            message: "9 is a multiple of three".into()
        })
    );
}

#[test]
fn a_segfault_gives_minus_eleven() {
    let p = Process::spawn(crash, Crash::Segfault).expect("process starts");
    assert_eq!(p.join(), -11);
    assert!(matches!(
        p.result(),
        Err(JobError::WorkerLost { exitcode: -11, .. })
    ));
}

#[test]
fn dropping_an_unjoined_handle_leaves_no_zombie() {
    let p = Process::spawn(sleep_ms, 100).expect("process starts");
    let pid = p.pid();
    drop(p);
    assert!(eventually(|| !is_running(pid) && !is_our_zombie(pid)));
    assert_gone(&[pid]);
}

#[test]
fn a_job_the_program_lacks_is_unknown_job_and_exitcode_one() {
    let p = Process::builder()
        .worker_executable(builtin_worker())
        .spawn(fail_on_threes, 3)
        .expect("process starts");
    assert_eq!(p.join(), 1, "{:?}", p.result());
    assert!(matches!(p.result(), Err(JobError::UnknownJob { .. })));
}

#[test]
fn a_program_that_never_says_hello_fails_to_start_within_its_timeout() {
    let p = Process::builder()
        .worker_executable("/bin/sleep")
        .worker_args(["60"])
        .start_timeout(Duration::from_millis(300))
        .spawn(square, 3)
        .expect("process starts");
    assert_eq!(
        p.join_timeout(PATIENCE),
        Some(-9),
        "killed after the timeout"
    );
    assert!(matches!(p.result(), Err(JobError::StartFailed { .. })));
    assert_gone(&[p.pid()]);
}

#[test]
fn fork_start_method_has_the_same_semantics() {
    let ok = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(square, 5)
        .expect("forked process starts");
    let killed = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(sleep_ms, 60_000)
        .expect("forked process starts");
    assert_eq!(ok.result(), Ok(25));
    assert_eq!(ok.exitcode(), Some(0));
    assert_eq!(killed.join_timeout(Duration::from_millis(100)), None);
    killed.terminate();
    assert_eq!(killed.join(), -15);
    assert_gone(&[ok.pid(), killed.pid()]);
}

#[test]
fn fork_server_is_refused_with_a_config_error() {
    let r = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(square, 5);
    assert!(matches!(r, Err(procpool::Error::Config(_))));
}

#[test]
fn a_large_argument_and_result_cross_through_shared_memory() {
    let input: Vec<u8> = (0..5usize << 20).map(|i| (i % 253) as u8).collect();
    let p = Process::spawn(reverse, input.clone()).expect("process starts");
    let mut expected = input;
    expected.reverse();
    assert!(p.result().expect("a value") == expected);
    assert_eq!(p.exitcode(), Some(0));
}
