//! An `AsyncResult` in async code: what dropping an awaited one does (its task runs on),
//! what `cancel_on_drop` does (its task stops), and that its value is handed over once.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::*;
use procpool::JobError;

procpool::test_harness!();

/// Sleeps `ms`, then writes `path`: the mark that the job ran to its end.
#[procpool::job]
fn sleep_then_mark(path: String, ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(&path, b"done").map_err(|e| e.to_string())?;
    Ok(ms)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn dropping_an_awaited_result_lets_its_task_run_to_its_end() {
    let pool = pool(1);
    let worker = pool.worker_pids();
    let mark = scratch_dir("dropped-result").join("done");
    let r = pool
        .apply_async(sleep_then_mark, (mark.to_string_lossy().into_owned(), 300))
        .unwrap();
    // Awaited, then given up on: the timeout drops the future.
    let waited =
        runtime().block_on(async { tokio::time::timeout(Duration::from_millis(10), r).await });
    assert!(waited.is_err(), "the task takes longer than the timeout");
    assert!(eventually(|| mark.exists()), "the task ran to its end");
    assert_eq!(pool.worker_pids(), worker, "its worker was not replaced");
    close_and_check(pool);
}

#[test]
fn cancel_on_drop_stops_a_running_task_when_its_future_is_dropped() {
    let pool = pool(1);
    let dir = scratch_dir("cancel-on-drop");
    let r = pool
        .apply_async(mark_and_sleep, (dir.to_string_lossy().into_owned(), 60_000))
        .unwrap()
        .cancel_on_drop();
    let running = first_marker(&dir);
    let waited =
        runtime().block_on(async { tokio::time::timeout(Duration::from_millis(10), r).await });
    assert!(waited.is_err());
    // The worker running it was killed and replaced, so the pool's one worker is free
    // again long before the minute the task would have taken.
    assert_gone(&[running]);
    let next = pool.apply_async(square, 3).unwrap();
    assert_eq!(next.get_timeout(PATIENCE), Ok(9));
    close_and_check(pool);
}

#[test]
fn cancel_on_drop_get_timeout_gives_up_and_cancels() {
    let pool = pool(1);
    let dir = scratch_dir("cancel-on-drop-get");
    let r = pool
        .apply_async(mark_and_sleep, (dir.to_string_lossy().into_owned(), 60_000))
        .unwrap()
        .cancel_on_drop();
    let running = first_marker(&dir);
    assert!(matches!(
        r.get_timeout(Duration::from_millis(10)),
        Err(JobError::WaitTimeout { .. })
    ));
    assert_gone(&[running]);
    // A result that resolves is not cancelled by its drop, and into_inner disarms it.
    let done = pool.apply_async(square, 4).unwrap().cancel_on_drop();
    assert_eq!(done.get(), Ok(16));
    let plain = pool
        .apply_async(square, 5)
        .unwrap()
        .cancel_on_drop()
        .into_inner();
    assert_eq!(plain.get_timeout(PATIENCE), Ok(25));
    close_and_check(pool);
}

#[test]
fn a_result_hands_its_value_over_once() {
    let pool = pool(1);
    let mut r = pool.apply_async(square, 3).unwrap();
    assert!(r.wait_timeout(PATIENCE));
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(Pin::new(&mut r).poll(&mut cx), Poll::Ready(Ok(9)));
    // `get` and `get_timeout` take the handle; only polling a finished future again can
    // ask twice.
    assert_eq!(
        Pin::new(&mut r).poll(&mut cx),
        Poll::Ready(Err(JobError::ResultTaken))
    );
    close_and_check(pool);
}
