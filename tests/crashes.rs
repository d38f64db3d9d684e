//! A worker that dies mid-task (killed, aborted, segfaulted, exited) fails only the
//! task it was running, with `WorkerLost` and the `multiprocessing` exitcode; every
//! other task completes, the pool replaces the worker, and nothing hangs.

mod common;

use std::collections::HashSet;

use common::*;
use nix::sys::signal::Signal;
use procpool::JobError;

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
    assert_eq!(
        lost,
        vec![&JobError::WorkerLost {
            pid: victim,
            exitcode: -9,
            attempts: 1,
        }],
        "exactly the killed worker's task fails"
    );
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
