//! Cancelling a task (queued: dropped; running: its worker is killed and replaced),
//! and waiting for many results (`wait`, `as_completed`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use procpool::{JobError, WaitFor, as_completed, wait};

procpool::test_harness!();

#[test]
fn a_queued_task_is_dropped_without_touching_the_worker() {
    let pool = pool(1);
    let dir = scratch_dir("cancel-queued");
    let busy = pool
        .apply_async(mark_and_sleep, (dir.to_string_lossy().into_owned(), 500))
        .unwrap();
    let worker = first_marker(&dir);
    let queued = pool.apply_async(square, 4).unwrap();
    assert!(queued.cancel());
    assert_eq!(queued.get(), Err(JobError::Cancelled));
    assert_eq!(busy.get(), Ok(worker), "the running task was not disturbed");
    assert_eq!(pool.worker_pids(), vec![worker]);
    close_and_check(pool);
}

#[test]
fn a_running_task_is_stopped_by_replacing_its_worker() {
    let pool = pool(1);
    let dir = scratch_dir("cancel-running");
    let running = pool
        .apply_async(
            mark_and_sleep,
            (dir.to_string_lossy().into_owned(), 600_000),
        )
        .unwrap();
    let worker = first_marker(&dir);
    assert!(running.cancel());
    assert_eq!(running.get(), Err(JobError::Cancelled));
    assert!(eventually(|| !is_running(worker)));
    assert_gone(&[worker]);
    assert_eq!(pool.apply(square, 6), Ok(36), "a new worker serves");
    close_and_check(pool);
}

#[test]
fn a_finished_task_cannot_be_cancelled_and_a_map_cancels_whole() {
    let pool = pool(2);
    let done = pool.apply_async(square, 3).unwrap();
    done.wait();
    assert!(!done.cancel());
    assert_eq!(done.get(), Ok(9));

    let map = pool
        .map_async_chunked(sleep_ms, vec![600_000; 6], 1)
        .unwrap();
    assert!(map.cancel());
    assert_eq!(map.get(), Err(JobError::Cancelled));
    assert!(eventually(|| pool.worker_pids().len() == 2));
    assert_eq!(pool.map(square, 0..4), Ok(vec![0, 1, 4, 9]));
    close_and_check(pool);
}

#[test]
fn wait_returns_as_asked() {
    let pool = pool(3);
    let results = vec![
        pool.apply_async(sleep_ms, 60_000).unwrap(),
        pool.apply_async(sleep_ms, 0).unwrap(),
        pool.apply_async(sleep_ms, 60_000).unwrap(),
    ];
    let (done, pending) = wait(&results, WaitFor::FirstCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![1], vec![0, 2]));

    let started = Instant::now();
    let (done, pending) = wait(&results, WaitFor::All, Some(Duration::from_millis(200)));
    assert_eq!(
        (done, pending),
        (vec![1], vec![0, 2]),
        "the timeout ended the wait"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    pool.terminate();
    let (done, pending) = wait(&results, WaitFor::All, None);
    assert_eq!((done.len(), pending.len()), (3, 0));

    let pool = common::pool(2);
    let results = vec![
        pool.apply_async(fail_on_threes, 1).unwrap(),
        pool.apply_async(fail_on_threes, 3).unwrap(),
    ];
    let more = pool.apply_async(sleep_ms, 60_000).unwrap();
    let (done, _) = wait(&results, WaitFor::FirstError, Some(PATIENCE));
    assert!(done.contains(&1), "the error is among the done: {done:?}");
    assert_eq!(results[1].successful(), Some(false));
    drop(more);
    pool.terminate();
}

#[test]
fn as_completed_yields_in_completion_order() {
    let pool = pool(3);
    let results = [1_500u64, 0, 700]
        .into_iter()
        .map(|ms| pool.apply_async(sleep_ms, ms).unwrap())
        .collect();
    let order: Vec<(usize, Result<u64, JobError>)> = as_completed(results).collect();
    assert_eq!(order, vec![(1, Ok(0)), (2, Ok(700)), (0, Ok(1_500))]);
    close_and_check(pool);
}
