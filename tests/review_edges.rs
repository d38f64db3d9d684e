//! Edges found by a third hostile review: a lost worker's last words after a burst of
//! stderr, an awaited result with callbacks awaited from a callback, a fork server that
//! answers a fork after its time ran out, Fork pools built and dropped again and again.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::*;
use procpool::{JobError, Pool, job};

procpool::test_harness!();

/// Writes `blank` empty lines to stderr, then `message`, then aborts.
#[job]
pub fn flood_then_abort(blank: u64, message: String) {
    use std::io::Write;
    let mut e = std::io::stderr().lock();
    let junk = vec![b'\n'; blank as usize];
    let _ = e.write_all(&junk);
    let _ = writeln!(e, "{message}");
    let _ = e.flush();
    std::process::abort();
}

#[test]
fn a_lost_worker_after_a_stderr_burst_reports_its_last_words() {
    let pool = Pool::builder()
        .processes(1)
        .capture_stderr(5)
        .build()
        .unwrap();
    // 60,000 empty lines fit in the pipe (64 KiB) without blocking the worker, but take
    // ~60 budgeted drains (1024 lines each).
    match pool.apply(flood_then_abort, (60_000, "the database is on fire".into())) {
        Err(JobError::WorkerLost { cause, .. }) => {
            let last = cause.stderr_tail.last().cloned().unwrap_or_default();
            assert_eq!(
                last, "the database is on fire",
                "tail: {:?}",
                cause.stderr_tail
            );
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    pool.close();
    pool.join().unwrap();
}

struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `f` on this thread until ready or `limit`.
fn block_on_for<F: Future>(f: F, limit: Duration) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let end = std::time::Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = std::time::Instant::now();
        if now >= end {
            return None;
        }
        std::thread::park_timeout(end - now);
        if std::time::Instant::now() >= end {
            return None;
        }
    }
}

#[test]
fn a_callback_that_awaits_another_result_with_callbacks_is_woken() {
    // `b.get()` inside a callback works (a waiter runs b's deferred callbacks itself);
    // awaiting `b` from the same callback should too.
    let pool = pool(2);
    let a = pool.apply_async(square, 3).unwrap();
    let b = pool.apply_async(sleep_ms, 300).unwrap();
    b.on_complete(|_| {});
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_complete(move |_| {
        let _ = tx.send(block_on_for(b, Duration::from_secs(15)));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("callback ran");
    assert!(
        matches!(got, Some(Ok(300))),
        "awaiting b from a's callback: {got:?} (None = never woken in 15 s)"
    );
    assert_eq!(a.get().unwrap(), 9);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn control_a_callback_that_gets_another_result_with_callbacks() {
    let pool = pool(2);
    let a = pool.apply_async(square, 3).unwrap();
    let b = pool.apply_async(sleep_ms, 300).unwrap();
    b.on_complete(|_| {});
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_complete(move |_| {
        let _ = tx.send(b.get_timeout(Duration::from_secs(15)));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("callback ran");
    assert!(matches!(got, Ok(300)), "{got:?}");
    pool.close();
    pool.join().unwrap();
}

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_fork_server_that_answers_late_does_not_mix_up_its_workers() {
    use nix::sys::signal::Signal;
    let pool = Pool::builder()
        .processes(1)
        .start_method(procpool::StartMethod::ForkServer)
        .start_timeout(Duration::from_secs(1))
        .max_start_failures(1000)
        .build()
        .unwrap();
    let w0 = pool.apply(worker_pid, ()).unwrap();
    let zygote = ppid(w0);
    eprintln!("worker {w0}, fork server {zygote}");
    // The fork server stalls (swapped out, stopped, overloaded) for longer than the
    // start timeout while the pool needs a new worker.
    signal(zygote, Signal::SIGSTOP);
    let crashed = pool.apply_async(crash, Crash::Exit(3)).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    // The pool may have given the silent server up (ended with its children) already.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote as i32), Signal::SIGCONT);
    eprintln!("crash: {:?}", crashed.get_timeout(Duration::from_secs(30)));
    let mut failures = Vec::new();
    let listed = pool.worker_pids();
    match pool.apply(sleep_ms, 1500) {
        Ok(_) => {}
        Err(e) => failures.push(format!(
            "sleep_ms(1500) after SIGCONT (pool listed {listed:?}): {e:?}"
        )),
    }
    for i in 0..40u64 {
        match pool.apply(worker_pid, ()) {
            Ok(pid) => {
                let listed = pool.worker_pids();
                if !listed.contains(&pid) {
                    failures.push(format!("task {i} ran on {pid}, pool lists {listed:?}"));
                }
            }
            Err(e) => failures.push(format!("task {i}: {e:?}")),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pool.close();
    pool.join().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

fn children() -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

#[test]
fn fork_pools_dropped_and_rebuilt_leave_nothing() {
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let warm = Pool::builder()
        .processes(2)
        .start_method(procpool::StartMethod::Fork)
        .build()
        .unwrap();
    drop(warm);
    let before = fds();
    for i in 0..60u64 {
        let pool = Pool::builder()
            .processes(2)
            .start_method(procpool::StartMethod::Fork)
            .build()
            .unwrap();
        assert_eq!(pool.apply(square, i).unwrap(), i * i);
        drop(pool);
    }
    assert!(
        eventually(|| children().is_empty()),
        "children left: {:?}",
        children()
    );
    let after = fds();
    assert!(after <= before + 2, "fds {before} -> {after}");
}
