//! A worker that dies mid-task (killed, aborted, segfaulted, exited) fails only the
//! task it was running, with `WorkerLost` and the `multiprocessing` exitcode; every
//! other task completes, the pool replaces the worker, and nothing hangs.

mod common;

use std::collections::HashSet;

use common::*;
use nix::sys::signal::Signal;
use procpool::{JobError, Pool};

procpool::test_harness!();

#[test]
fn killed_worker_fails_only_its_task() {
    let pool = pool(4);
    let dir = scratch_dir("killed");
    let arg = (dir.to_string_lossy().into_owned(), 1500u64);
    let results = std::thread::scope(|s| {
        let run = s.spawn(|| pool.map_results(mark_and_sleep, vec![arg.clone(); 8]));
        let victim = first_marker(&dir);
        signal(victim, Signal::SIGKILL);
        let results = run.join().expect("map thread").expect("map submits");
        (victim, results)
    });
    let (victim, results) = results;
    let lost: Vec<&JobError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    match lost.as_slice() {
        [
            JobError::WorkerLost {
                pid,
                exitcode: -9,
                attempts: 1,
                cause,
            },
        ] => {
            assert_eq!(*pid, victim);
            assert_ne!(
                cause.oom_killed,
                Some(true),
                "a kill by hand is not an OOM kill"
            );
            assert!(cause.peak_rss.is_some_and(|r| r > 0), "{cause:?}");
        }
        other => panic!("expected exactly the killed worker's task to fail: {other:?}"),
    }
    assert!(
        results.iter().flatten().all(|&pid| pid != victim),
        "the victim finished nothing after its death"
    );
    assert!(
        eventually(|| pool.worker_pids().len() == 4),
        "the pool keeps its size"
    );
    assert!(!pool.worker_pids().contains(&victim));
    assert_gone(&[victim]);
    close_and_check(pool);
}

#[test]
fn abort_segfault_and_exit_each_fail_one_task_with_their_exitcode() {
    let pool = pool(3);
    let inputs = vec![
        Crash::None,
        Crash::Abort,
        Crash::None,
        Crash::Segfault,
        Crash::None,
        Crash::Exit(3),
        Crash::None,
        Crash::Panic,
        Crash::None,
    ];
    let results = pool.map_results_chunked(crash, inputs.clone(), 1).unwrap();
    let mut dead = HashSet::new();
    for (input, result) in inputs.iter().zip(&results) {
        match (input, result) {
            (Crash::None, Ok(7)) => {}
            (Crash::Panic, Err(JobError::Panicked { .. })) => {}
            (
                Crash::Abort,
                Err(JobError::WorkerLost {
                    pid, exitcode: -6, ..
                }),
            )
            | (
                Crash::Segfault,
                Err(JobError::WorkerLost {
                    pid, exitcode: -11, ..
                }),
            )
            | (
                Crash::Exit(3),
                Err(JobError::WorkerLost {
                    pid, exitcode: 3, ..
                }),
            ) => {
                assert!(dead.insert(*pid), "each crash took its own worker");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(dead.len(), 3);
    assert!(eventually(|| pool.worker_pids().len() == 3));
    let dead: Vec<u32> = dead.into_iter().collect();
    assert!(dead.iter().all(|p| !pool.worker_pids().contains(p)));
    assert_gone(&dead);
    close_and_check(pool);
}

#[test]
fn a_storm_of_crashes_resolves_every_task_exactly_once() {
    let pool = pool(2);
    let inputs: Vec<Crash> = (0..60)
        .map(|i| match i % 6 {
            0 => Crash::Exit(5),
            3 => Crash::Abort,
            _ => Crash::None,
        })
        .collect();
    let results = pool.map_results(crash, inputs.clone()).unwrap();
    assert_eq!(results.len(), inputs.len());
    // With chunking a crash takes the rest of its chunk with it (as in Python), so
    // an input may fail with the exit of an earlier input in its chunk.
    for (input, result) in inputs.iter().zip(&results) {
        match (input, result) {
            (Crash::None, Ok(7)) => {}
            (_, Err(JobError::WorkerLost { exitcode, .. })) if [5, -6].contains(exitcode) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // With chunk size 1 nothing but the crashing tasks themselves fails.
    let results = pool.map_results_chunked(crash, inputs.clone(), 1).unwrap();
    for (input, result) in inputs.iter().zip(&results) {
        match (input, result) {
            (Crash::None, Ok(7)) => {}
            (Crash::Exit(5), Err(JobError::WorkerLost { exitcode: 5, .. })) => {}
            (Crash::Abort, Err(JobError::WorkerLost { exitcode: -6, .. })) => {}
            other => panic!("unexpected outcome with chunk size 1: {other:?}"),
        }
    }
    assert!(eventually(|| pool.worker_pids().len() == 2));
    close_and_check(pool);
}

#[test]
fn a_lost_worker_reports_its_last_stderr_lines() {
    let pool = Pool::builder()
        .processes(1)
        .capture_stderr(5)
        .build()
        .unwrap();
    match pool.apply(shout_and_abort, "the database is on fire".into()) {
        Err(JobError::WorkerLost {
            exitcode: -6,
            cause,
            ..
        }) => {
            let last = cause.stderr_tail.last().cloned().unwrap_or_default();
            assert_eq!(last, "the database is on fire", "{:?}", cause.stderr_tail);
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    close_and_check(pool);
}
