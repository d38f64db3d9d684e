//! Chaos: 20,000 tasks on 4 workers while a thread SIGKILLs a random worker every few
//! milliseconds (every 10 ms). Every task resolves exactly once, every value is right, every
//! failure is `WorkerLost` (none with retries on), and the pool ends with 4 workers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use procpool::{JobError, Pool, StartMethod, TaskOptions};

procpool::test_harness!();

const TASKS: u64 = 20_000;

/// Runs `TASKS` squares through `imap_unordered` while workers are killed; returns
/// the failures and how many workers were killed.
fn under_fire(pool: &Pool, options: TaskOptions) -> (Vec<JobError>, usize) {
    let done = AtomicBool::new(false);
    let mut seen = vec![false; TASKS as usize];
    let mut failures = Vec::new();
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| kill_workers_until(pool, Duration::from_millis(10), &done, 7));
        let results = pool
            .imap_unordered(square, 0..TASKS)
            .options(options)
            .max_in_flight(16)
            .with_positions();
        for (position, result) in results {
            assert!(!seen[position], "input {position} resolved twice");
            seen[position] = true;
            match result {
                Ok(v) => assert_eq!(v, (position as u64).pow(2), "wrong value for {position}"),
                Err(e) => failures.push(e),
            }
        }
        done.store(true, Ordering::SeqCst);
        killer.join().unwrap()
    });
    eprintln!("chaos: {kills} kills, {} failures", failures.len());
    assert!(seen.iter().all(|s| *s), "some inputs never resolved");
    (failures, kills)
}

fn chaos_pool(method: StartMethod) -> Pool {
    // The procpool command (whose built-in `square` matches ours) starts
    // much faster than this test binary, and this test starts thousands of workers.
    // Killing workers as they start counts against the start-failure limit; this test
    // is about exactly-once delivery, so that limit is set out of its way.
    Pool::builder()
        .processes(4)
        .start_method(method)
        .worker_executable(builtin_worker())
        .max_start_failures(u32::MAX)
        .build()
        .unwrap()
}

/// Without retries: every failure is the task of a SIGKILLed worker, at most one per
/// kill, and the pool ends with its 4 workers.
fn lost_tasks_are_only_the_killed_ones(method: StartMethod) {
    let pool = chaos_pool(method);
    let (failures, kills) = under_fire(&pool, TaskOptions::default());
    assert!(kills > 10, "the chaos thread killed only {kills} workers");
    for e in &failures {
        assert!(
            matches!(e, JobError::WorkerLost { exitcode: -9, .. }),
            "unexpected failure {e:?}"
        );
    }
    assert!(
        failures.len() <= kills,
        "{} failures from {kills} kills",
        failures.len()
    );
    assert!(
        eventually(|| pool.worker_pids().len() == 4),
        "the pool keeps 4 workers"
    );
    close_and_check(pool);
}

#[test]
fn every_task_resolves_exactly_once_while_workers_are_killed() {
    lost_tasks_are_only_the_killed_ones(StartMethod::Spawn);
}

#[test]
fn with_retries_every_task_succeeds_while_workers_are_killed() {
    let pool = chaos_pool(StartMethod::Spawn);
    let (failures, kills) = under_fire(&pool, TaskOptions::default().retries(1_000));
    assert!(kills > 10, "the chaos thread killed only {kills} workers");
    assert!(
        failures.is_empty(),
        "failures despite retries: {failures:?}"
    );
    assert!(eventually(|| pool.worker_pids().len() == 4));
    close_and_check(pool);
}

#[test]
fn a_fork_server_pool_resolves_every_task_exactly_once_while_workers_are_killed() {
    // Replacements come from the fork server: its exit reports, not wait4, tell the
    // supervisor how each killed worker ended.
    lost_tasks_are_only_the_killed_ones(StartMethod::ForkServer);
}
