//! Exactly once where the fast paths meet: tasks sent ahead to a worker, cancels, time
//! limits, a busy result thread, and user code (a result type's `Deserialize`,
//! callbacks) that could break the pool if it ran where the pool's bookkeeping runs.
//! Each job writes a line to an `O_APPEND` ledger when it starts, so a test can count
//! how often an input really started.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use procpool::{AsyncResult, JobError, Pool, TaskOptions};

procpool::test_harness!();

const LONG: Duration = Duration::from_secs(60);

fn ledger(name: &str) -> (std::path::PathBuf, String) {
    let path = scratch_dir(name).join("ledger");
    let text = path.to_string_lossy().into_owned();
    (path, text)
}

/// Warms up pipelining: after a few short tasks, the worker is sent tasks ahead.
fn warm_up(pool: &Pool) {
    for i in 0..20 {
        assert_eq!(pool.apply(square, i), Ok(i * i));
    }
}

#[test]
fn random_cancels_never_start_a_task_twice_without_retries() {
    let pool = Pool::builder().processes(1).build().unwrap();
    warm_up(&pool);
    for round in 0..4u64 {
        cancel_round(&pool, round);
    }
    close_and_check(pool);
}

/// 250 tasks of about 1 ms, submitted while the worker runs, with cancels of tasks
/// that may be queued, sent ahead, running, or finished with their reply not yet read.
fn cancel_round(pool: &Pool, round: u64) {
    let (path, text) = ledger(&format!("once-cancels-{round}"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (round + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut results: Vec<(u64, AsyncResult<u64>, bool)> = Vec::new();
    for input in 0..250u64 {
        let ms = rng.next() % 2;
        let r = pool
            .apply_async(ledger_sleep, (text.clone(), input, ms))
            .unwrap();
        if rng.next() % 4 == 0 {
            // A slow callback now and then: the worker runs ahead of the bookkeeping.
            r.on_complete(|_| std::thread::sleep(Duration::from_millis(3)));
        }
        results.push((input, r, false));
        // Rounds differ in pace: the worker keeps up with the submissions (cancels
        // then hit the running task, or one just finished), or falls behind.
        if rng.next() % (round + 1) == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 1500));
        }
        if rng.next() % 3 == 0 {
            let back = (rng.next() % (3 + 3 * round)) as usize;
            let at = results.len().saturating_sub(1 + back);
            let entry = &mut results[at];
            entry.1.cancel();
            entry.2 = true;
        }
    }
    let mut outcomes = Vec::new();
    for (input, r, cancelled) in results {
        let got = r.get_timeout(LONG);
        assert!(
            !matches!(got, Err(JobError::WaitTimeout { .. })),
            "input {input} never resolved"
        );
        if !cancelled {
            assert_eq!(got, Ok(input), "input {input} was never cancelled");
        }
        outcomes.push((input, got));
    }
    let starts = ledger_starts(&path);
    for (input, got) in &outcomes {
        let n = starts.get(input).copied().unwrap_or(0);
        assert!(n <= 1, "input {input} started {n} times with retries 0");
        if got.is_ok() {
            assert_eq!(n, 1, "input {input} has a value but never started");
        }
    }
}

#[test]
fn a_busy_result_thread_does_not_turn_short_tasks_into_timeouts_or_reruns() {
    // Each task takes about 2 ms of its 50 ms limit, but every completion callback
    // takes 60 ms: a time limit is about the job's run time, not about how busy the
    // caller's side is.
    let pool = Pool::builder().processes(1).build().unwrap();
    warm_up(&pool);
    let (path, text) = ledger("once-busy");
    let options = TaskOptions::default().timeout(Duration::from_millis(50));
    let results: Vec<_> = (0..30u64)
        .map(|input| {
            let r = pool
                .apply_async_with(ledger_sleep, (text.clone(), input, 2), options)
                .unwrap();
            r.on_complete(|_| std::thread::sleep(Duration::from_millis(60)));
            r
        })
        .collect();
    for (input, r) in results.into_iter().enumerate() {
        assert_eq!(r.get_timeout(LONG), Ok(input as u64), "input {input}");
    }
    let starts = ledger_starts(&path);
    for input in 0..30u64 {
        assert_eq!(starts.get(&input), Some(&1), "starts of input {input}");
    }
    close_and_check(pool);
}

#[test]
fn a_timeout_behind_a_busy_result_thread_starts_no_sent_ahead_task_twice() {
    let pool = Pool::builder().processes(1).build().unwrap();
    warm_up(&pool);
    let (path, text) = ledger("once-timeout");
    // The short tasks' limit is far above their run time but below the callbacks'.
    let short = TaskOptions::default().timeout(Duration::from_millis(25));
    let mut results = Vec::new();
    for input in 0..40u64 {
        // Every tenth task runs past its limit; its worker is killed while the tasks
        // sent ahead behind it wait.
        let (ms, options) = if input % 10 == 5 {
            (
                60_000,
                TaskOptions::default().timeout(Duration::from_millis(30)),
            )
        } else {
            (1, short)
        };
        let r = pool
            .apply_async_with(ledger_sleep, (text.clone(), input, ms), options)
            .unwrap();
        r.on_complete(|_| std::thread::sleep(Duration::from_millis(50)));
        results.push(r);
    }
    for (input, r) in results.into_iter().enumerate() {
        let got = r.get_timeout(LONG);
        if input % 10 == 5 {
            assert_eq!(got, Err(JobError::Timeout), "input {input}");
        } else {
            assert_eq!(got, Ok(input as u64), "input {input}");
        }
    }
    let starts = ledger_starts(&path);
    for input in 0..40u64 {
        assert_eq!(starts.get(&input), Some(&1), "starts of input {input}");
    }
    close_and_check(pool);
}

#[test]
fn a_task_cancelled_while_sent_ahead_never_runs_and_the_pool_goes_on() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    warm_up(&pool);
    let (path, text) = ledger("once-cancel-ahead");
    // The first is short, and the second is sent ahead behind it and cancelled at once.
    let first = pool
        .apply_async(ledger_sleep, (text.clone(), 1, 3))
        .unwrap();
    let second = pool
        .apply_async(ledger_sleep, (text.clone(), 2, 60_000))
        .unwrap();
    assert!(second.cancel());
    assert_eq!(second.get_timeout(LONG), Err(JobError::Cancelled));
    assert_eq!(first.get_timeout(LONG), Ok(1));
    // The pool still serves, within the time limit it was given.
    assert_eq!(
        pool.apply_async(square, 7).unwrap().get_timeout(LONG),
        Ok(49)
    );
    let starts = ledger_starts(&path);
    assert_eq!(starts.get(&1), Some(&1));
    assert!(starts.get(&2).copied().unwrap_or(0) <= 1);

    // Tasks sent ahead behind one that runs for a while, cancelled before it ends,
    // never start, and the running one is left alone.
    warm_up(&pool);
    let running = pool
        .apply_async(ledger_sleep, (text.clone(), 10, 400))
        .unwrap();
    let behind: Vec<_> = (11..16u64)
        .map(|i| {
            pool.apply_async(ledger_sleep, (text.clone(), i, 1))
                .unwrap()
        })
        .collect();
    for r in &behind {
        assert!(r.cancel());
    }
    for r in behind {
        assert_eq!(r.get_timeout(LONG), Err(JobError::Cancelled));
    }
    assert_eq!(running.get_timeout(LONG), Ok(10));
    let starts = ledger_starts(&path);
    for i in 11..16u64 {
        assert_eq!(
            starts.get(&i),
            None,
            "input {i} was cancelled before it started"
        );
    }
    pool.close();
    assert!(
        pool.join_timeout(Duration::from_secs(5)).unwrap(),
        "join within its bound"
    );
}

#[test]
fn a_result_type_whose_deserialize_panics_fails_only_its_task() {
    let pool = Pool::builder().processes(2).build().unwrap();
    let running = pool.apply_async(sleep_ms, 300).unwrap();
    let r = pool.apply_async(bomb, 3).unwrap();
    match r.get_timeout(LONG) {
        Err(JobError::Codec { message }) => {
            assert!(message.contains("panicked"), "{message}")
        }
        other => panic!("expected Codec, got {other:?}"),
    }
    assert_eq!(running.get_timeout(LONG), Ok(300));
    assert_eq!(pool.apply(square, 5), Ok(25), "the pool goes on");
    let many = pool.map_results(bomb, 0..10u64).unwrap();
    assert!(
        many.iter()
            .all(|o| matches!(o, Err(JobError::Codec { .. })))
    );
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    close_and_check(pool);
}

#[test]
fn a_callback_can_use_the_pool_it_was_called_from() {
    let pool = Arc::new(Pool::builder().processes(2).build().unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = pool.clone();
    let r = pool.apply_async(square, 3).unwrap();
    r.on_complete(move |v| {
        let nested = inner.apply(square, 4);
        let _ = tx.send((v.clone(), nested));
    });
    assert_eq!(
        rx.recv_timeout(LONG).expect("the callback finished"),
        (Ok(9), Ok(16))
    );
    // The callback's closure, and its handle, go once it has returned.
    assert!(eventually(|| Arc::strong_count(&pool) == 1));
    let pool = Arc::into_inner(pool).expect("the callback let go of the pool");
    close_and_check(pool);
}

#[test]
fn a_callback_can_terminate_its_pool() {
    let pool = Arc::new(Pool::builder().processes(2).build().unwrap());
    let pids = pool.worker_pids();
    let long = pool.apply_async(sleep_ms, 600_000).unwrap();
    let (tx, rx) = mpsc::channel();
    let inner = pool.clone();
    let r = pool.apply_async(square, 3).unwrap();
    r.on_complete(move |_| {
        inner.terminate();
        let _ = tx.send(());
    });
    rx.recv_timeout(LONG)
        .expect("terminate returned inside the callback");
    assert_eq!(long.get_timeout(LONG), Err(JobError::Terminated));
    assert!(pool.join_timeout(LONG).unwrap());
    assert_gone(&pids);
}

#[test]
fn a_callback_can_drop_the_last_handle_of_its_pool() {
    let pool = Arc::new(Pool::builder().processes(1).build().unwrap());
    let pids = pool.worker_pids();
    let (tx, rx) = mpsc::channel();
    let r = pool.apply_async(square, 3).unwrap();
    let last = std::sync::Mutex::new(Some(pool));
    r.on_complete(move |_| {
        drop(last.lock().unwrap().take());
        let _ = tx.send(());
    });
    rx.recv_timeout(LONG)
        .expect("the pool was dropped inside the callback");
    assert!(eventually(|| pids.iter().all(|p| !is_running(*p))));
    assert_gone(&pids);
}

#[test]
fn cancelling_a_map_of_a_hundred_thousand_chunks_is_one_pass() {
    // One cancel of 100k tasks queued behind 100k others: each used to scan the
    // queue from its front (10^10 steps on the supervisor thread).
    let pool = Pool::builder().processes(1).build().unwrap();
    let blocker = pool.apply_async(sleep_ms, 60_000).unwrap();
    let ahead = pool.map_async_chunked(square, 0..100_000u64, 1).unwrap();
    let map = pool.map_async_chunked(square, 0..100_000u64, 1).unwrap();
    assert!(map.cancel());
    assert_eq!(map.get_timeout(LONG), Err(JobError::Cancelled));
    assert!(blocker.cancel());
    assert_eq!(ahead.get_timeout(LONG).map(|v| v.len()), Ok(100_000));
    close_and_check(pool);
}
