//! What a caller sees of a healthy pool: results, order, errors, streaming, callbacks,
//! futures, initializers and recycling. Every test runs real worker processes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::*;
use procpool::{JobError, Pool};

procpool::test_harness!();

/// Descriptors of this process that are procpool payload memfds.
fn payload_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("fd table")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("procpool-payload"))
        .count()
}

#[test]
fn large_arguments_and_results_cross_through_shared_memory_intact() {
    let pool = pool(2);
    let pattern =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8 ^ seed).collect() };
    // Small, just over the shared threshold, and large, in one map.
    let inputs = vec![
        pattern(10, 1),
        pattern(pool_worker::payload::SHARED_ABOVE + 1, 2),
        pattern(20 << 20, 3),
        pattern(1000, 4),
    ];
    let results = pool.map_chunked(reverse, inputs.clone(), 1).expect("map");
    for (input, output) in inputs.iter().zip(&results) {
        let mut expected = input.clone();
        expected.reverse();
        assert!(
            output == &expected,
            "a payload of {} bytes came back intact",
            input.len()
        );
    }
    // Many large arguments in one chunk: the batch is shared as a whole.
    let lens = pool
        .map_chunked(byte_len, vec![vec![5u8; 300_000]; 6], 6)
        .expect("map");
    assert_eq!(lens, vec![300_000; 6]);
    // A large result to a small argument (no scratch: a sealed memfd of the worker's).
    for _ in 0..3 {
        let made = pool.apply(pattern_bytes, 3 << 20).expect("apply");
        assert!(made == (0..3 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    }
    close_and_check(pool);
    // Other tests' pools may still run, so the spare list is freed here rather than
    // when the last pool ends; nothing else may hold a payload open.
    pool_worker::payload::free_spare();
    assert_eq!(payload_fds(), 0, "no shared payload is left open");
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = pool(3);
    let got = pool.map(square, 0..10_000).unwrap();
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
    assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    close_and_check(pool);
}

#[test]
fn the_job_is_still_a_plain_function_here() {
    assert_eq!(square(12), 144);
    assert_eq!(add(2, 3), 5);
}

#[test]
fn apply_and_apply_async_run_in_workers() {
    let pool = pool(2);
    assert_eq!(pool.apply(add, (40, 2)).unwrap(), 42);
    let r = pool.apply_async(square, 12).unwrap();
    assert!(r.wait_timeout(PATIENCE));
    assert_eq!(r.successful(), Some(true));
    assert_eq!(r.get_timeout(PATIENCE).unwrap(), 144);

    let pid = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(pid, std::process::id());
    assert!(pool.worker_pids().contains(&pid));
    close_and_check(pool);
}

#[test]
fn a_timed_wait_returns_on_time_and_the_task_still_finishes() {
    let pool = pool(1);
    let gave_up = pool.apply_async(sleep_ms, 500).unwrap();
    assert!(matches!(
        gave_up.get_timeout(Duration::from_millis(10)),
        Err(JobError::WaitTimeout { .. })
    ));
    let r = pool.apply_async(sleep_ms, 500).unwrap();
    assert!(!r.wait_timeout(Duration::from_millis(10)));
    assert!(!r.ready());
    assert_eq!(r.successful(), None);
    assert!(r.wait_timeout(PATIENCE));
    assert_eq!(r.get().unwrap(), 500);
    close_and_check(pool);
}

#[test]
fn a_job_error_is_failed_with_its_message_and_map_reports_the_first_in_order() {
    let pool = pool(2);
    assert_eq!(
        pool.apply(fail_on_threes, 9),
        Err(JobError::Failed {
            message: "9 is a multiple of three".into()
        })
    );
    // Inputs 3 and 6 fail; map's error is the first in input order, as in Python.
    let err = pool
        .map_chunked(fail_on_threes, [1, 2, 6, 4, 3], 1)
        .unwrap_err();
    assert_eq!(
        err,
        JobError::Failed {
            message: "6 is a multiple of three".into()
        }
    );
    // map_results keeps every outcome.
    let all = pool.map_results(fail_on_threes, 1..=6).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0], Ok(1));
    assert!(matches!(&all[2], Err(JobError::Failed { message }) if message.starts_with('3')));
    assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 4);
    close_and_check(pool);
}

#[test]
fn failures_and_panics_inside_one_chunk_keep_their_places() {
    let pool = pool(1);
    // One chunk: failures first, last, and next to each other, among values.
    let inputs = [3, 1, 6, 9, 2, 4, 12];
    let all = pool
        .map_results_chunked(fail_on_threes, inputs, inputs.len())
        .unwrap();
    let failed = |x: u64| {
        Err(JobError::Failed {
            message: format!("{x} is a multiple of three"),
        })
    };
    assert_eq!(
        all,
        vec![
            failed(3),
            Ok(1),
            failed(6),
            failed(9),
            Ok(2),
            Ok(4),
            failed(12)
        ]
    );
    assert_eq!(
        pool.map_chunked(fail_on_threes, inputs, inputs.len()),
        failed(3).map(|x| vec![x])
    );
    let crashes = [Crash::None, Crash::Panic, Crash::None];
    let got = pool.map_results_chunked(crash, crashes, 3).unwrap();
    assert_eq!(got[0], Ok(7));
    assert!(matches!(&got[1], Err(JobError::Panicked { .. })), "{got:?}");
    assert_eq!(got[2], Ok(7));
    close_and_check(pool);
}

#[test]
fn a_panic_is_reported_and_the_worker_lives_on() {
    let pool = pool(1);
    let before = pool.worker_pids();
    assert_eq!(
        pool.apply(crash, Crash::Panic),
        Err(JobError::Panicked {
            message: "deliberate panic in a job".into()
        })
    );
    assert_eq!(pool.apply(crash, Crash::None), Ok(7));
    assert_eq!(pool.worker_pids(), before, "the same worker served both");
    close_and_check(pool);
}

#[test]
fn imap_yields_in_order_and_imap_unordered_as_tasks_finish() {
    let pool = pool(2);
    let ordered: Vec<u64> = pool
        .imap(square, 0..200)
        .chunksize(7)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ordered, (0..200u64).map(|x| x * x).collect::<Vec<_>>());

    // The slow input comes first; unordered yields the quick ones before it.
    let inputs = [1500, 0, 0, 0, 0, 0];
    let unordered: Vec<u64> = pool
        .imap_unordered(sleep_ms, inputs)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(unordered.len(), inputs.len());
    assert_eq!(unordered.last(), Some(&1500));
    let mut sorted = unordered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 0, 0, 0, 0, 1500]);
    close_and_check(pool);
}

#[test]
fn imap_reads_an_endless_input_lazily() {
    let pool = pool(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let first: Vec<u64> = pool
        .imap(square, endless)
        .chunksize(4)
        .max_in_flight(3)
        .take(100)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    // 100 taken, plus at most 3 tasks of 4 read ahead.
    let read = pulled.load(Ordering::SeqCst);
    assert!(read <= 100 + 3 * 4, "read {read} inputs for 100 results");
    close_and_check(pool);
}

/// Inputs without end, as far as a pool can tell; reading past `guard` of them fails
/// the test (in place of eating memory for ever).
fn endless(guard: u64) -> impl Iterator<Item = u64> + Send + 'static {
    (0u64..).inspect(move |&i| assert!(i < guard, "imap read {i} inputs and went on"))
}

/// Runs `f` on a thread of its own; its value, or a test failure if it has not
/// returned within `PATIENCE` (a hang fails the test instead of hanging the suite).
fn within_patience<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .expect("the stream did not end within PATIENCE (or its thread panicked)")
}

#[test]
fn imap_of_a_job_the_workers_lack_ends_with_the_error() {
    // The pool-worker executable has no `add`: nothing can be submitted, and the
    // stream ends with why after one chunk, instead of reading its input for ever.
    let pool = Arc::new(builtin_worker_pool(1));
    let p = pool.clone();
    let got = within_patience(move || {
        let pairs = endless(100_000).map(|i| (i as i64, 1));
        p.imap(add, pairs).chunksize(3).collect::<Vec<_>>()
    });
    assert_eq!(got.len(), 3, "{got:?}");
    for r in got {
        assert!(
            matches!(&r, Err(JobError::UnknownJob { name, .. }) if name == "add"),
            "{r:?}"
        );
    }
    let got = within_patience({
        let p = pool.clone();
        move || {
            p.imap_unordered(add, endless(100_000).map(|i| (i as i64, 1)))
                .count()
        }
    });
    assert_eq!(got, 1);
    close_and_check(Arc::try_unwrap(pool).ok().unwrap());
}

#[test]
fn imap_encoded_of_an_unknown_name_ends_with_the_error() {
    let pool = Arc::new(pool(1));
    for ordered in [true, false] {
        let p = pool.clone();
        let got = within_patience(move || {
            let inputs = endless(100_000).map(|i| i.to_le_bytes().to_vec());
            p.imap_encoded("no_such_job", procpool::Codec::Bincode, inputs, ordered)
                .collect::<Vec<_>>()
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            matches!(&got[0], Err(JobError::UnknownJob { name, .. }) if name == "no_such_job"),
            "{got:?}"
        );
    }
    close_and_check(Arc::try_unwrap(pool).ok().unwrap());
}

#[test]
fn imap_ends_with_the_error_when_another_thread_closes_the_pool() {
    for ordered in [true, false] {
        let pool = Arc::new(pool(2));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        let stream = std::thread::spawn(move || {
            within_patience(move || {
                let inputs = endless(1_000_000).map(|_| 1);
                let mut results = Vec::new();
                let stream = if ordered {
                    p.imap(sleep_ms, inputs)
                } else {
                    p.imap_unordered(sleep_ms, inputs)
                };
                for r in stream.max_in_flight(4) {
                    if results.is_empty() {
                        let _ = started_tx.send(());
                    }
                    results.push(r);
                }
                results
            })
        });
        started_rx
            .recv_timeout(PATIENCE)
            .expect("the stream started");
        pool.close();
        let results = stream.join().expect("the stream's thread");
        // Values for what was submitted before the close, then why the rest was not.
        let values = results.iter().take_while(|r| r.is_ok()).count();
        assert!(values >= 1, "{results:?}");
        assert_eq!(
            &results[values..],
            &[Err(JobError::PoolClosed)],
            "ordered {ordered}: {} values, then {:?}",
            values,
            &results[values..]
        );
        pool.join().unwrap();
        close_and_check(Arc::try_unwrap(pool).ok().unwrap());
    }
}

#[test]
fn a_panicking_callback_does_not_stop_other_results() {
    let pool = pool(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let results: Vec<_> = (0..20u64)
        .map(|i| {
            let r = pool.apply_async(square, i).unwrap();
            let seen = seen.clone();
            r.on_complete(move |v| {
                if i % 5 == 0 {
                    panic!("callback {i} panics");
                }
                seen.lock().unwrap().push(*v.as_ref().unwrap());
            });
            r
        })
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), (i * i) as u64);
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    let want: Vec<u64> = (0..20u64).filter(|i| i % 5 != 0).map(|i| i * i).collect();
    assert_eq!(seen, want);
    // A callback added after completion runs at once, here.
    let r = pool.apply_async(square, 3).unwrap();
    r.wait();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    r.on_complete(move |v| *g.lock().unwrap() = Some(v.clone()));
    assert_eq!(*got.lock().unwrap(), Some(Ok(9)));
    close_and_check(pool);
}

/// The smallest executor: poll on the current thread, park until woken.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn an_async_result_can_be_awaited_from_any_executor() {
    let pool = pool(2);
    let a = pool.apply_async(sleep_ms, 200).unwrap();
    let b = pool.map_async(square, 0..10).unwrap();
    let (x, v) = block_on(async { (a.await, b.await) });
    assert_eq!(x.unwrap(), 200);
    assert_eq!(v.unwrap()[9], 81);
    close_and_check(pool);
}

#[test]
fn the_initializer_runs_once_in_each_worker_before_its_tasks() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(count_init, 1)
        .build()
        .unwrap();
    let runs = pool.map_chunked(init_runs, vec![(); 40], 1).unwrap();
    assert!(
        runs.iter().all(|&n| n == 1),
        "initializer runs per task: {runs:?}"
    );
    close_and_check(pool);
}

#[test]
fn max_tasks_per_child_recycles_workers_and_keeps_the_size() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(pool.apply(worker_pid, ()).unwrap());
    }
    let mut distinct = pids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "two tasks per worker: {pids:?}");
    assert!(eventually(|| pool.worker_pids().len() == 1));
    let retired: Vec<u32> = distinct[..2].to_vec();
    assert!(eventually(|| retired.iter().all(|&p| !is_running(p))));
    assert_gone(&retired);
    close_and_check(pool);
}

#[test]
fn an_unknown_job_is_refused_at_submit() {
    // The procpool command, as a worker, has `square(u64) -> u64` but not `add`.
    let pool = builtin_worker_pool(1);
    match pool.apply_async(add, (1, 2)) {
        Err(JobError::UnknownJob { name, .. }) => assert_eq!(name, "add"),
        other => panic!("expected UnknownJob, got {other:?}"),
    }
    close_and_check(pool);
}

#[test]
fn a_separate_worker_executable_runs_its_own_jobs() {
    let pool = builtin_worker_pool(2);
    assert!(pool.jobs().iter().any(|j| j.name == "cpu_bound"));
    // The handle is ours; the code that runs is the procpool command's built-in `square`,
    // which reports an overflow as an error where ours would panic.
    assert_eq!(pool.map(square, 0..100).unwrap()[99], 9801);
    match pool.apply(square, u64::MAX) {
        Err(JobError::Failed { message }) => assert!(message.contains("overflows"), "{message}"),
        other => panic!("expected the built-in's error, got {other:?}"),
    }
    close_and_check(pool);
}

#[test]
fn submitting_after_close_is_pool_closed_and_join_needs_close() {
    let pool = pool(1);
    assert!(matches!(pool.join(), Err(procpool::Error::StillRunning)));
    let pending = pool.apply_async(sleep_ms, 300).unwrap();
    pool.close();
    assert_eq!(
        pool.apply_async(square, 2).err(),
        Some(JobError::PoolClosed)
    );
    pool.join().unwrap();
    // Work submitted before close still completed.
    assert_eq!(pending.get(), Ok(300));
}

#[test]
fn chunksize_defaults_like_python() {
    assert_eq!(procpool::default_chunksize(10_000, 4), 625);
    assert_eq!(procpool::default_chunksize(10_001, 4), 626);
    assert_eq!(procpool::default_chunksize(10, 4), 1);
    assert_eq!(procpool::default_chunksize(0, 4), 1);
}
