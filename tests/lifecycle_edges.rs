//! Edges of the task lifecycle found by a hostile review, each kept as a test: workers
//! the pool itself ends are no failures to start, a worker's word for when it started
//! is bounded, taken-back tasks keep their slots until the worker passes them,
//! callbacks that wait on other results, retirement with tasks sent ahead.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::*;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use procpool::{JobError, Pool, StartMethod, TaskOptions, job};

procpool::test_harness!();

/// Slots page geometry (pool_worker::slots): 128 state words, 128 start times, 128
/// argument words, 8 bytes each.
const WORDS: u64 = 128;

/// The worker's slots page: (address in this process, a read-write file of the memfd
/// behind it through /proc/self/map_files). The worker closed the descriptor after
/// mapping it; the mapping is enough to find the memfd again.
fn slots_mapping() -> Result<(u64, String), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let line = maps
        .lines()
        .find(|l| l.contains("procpool-slots"))
        .ok_or("no slots mapping in this worker")?;
    let range = line.split_whitespace().next().ok_or("bad maps line")?;
    let start = u64::from_str_radix(range.split('-').next().unwrap_or(""), 16)
        .map_err(|e| e.to_string())?;
    Ok((start, format!("/proc/self/map_files/{range}")))
}

/// The slots page as a file: writes at `offset` land in the page (through
/// /proc/self/mem, which any process may write for itself).
fn own_slots() -> Result<SlotsFile, String> {
    let (start, _) = slots_mapping()?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .map_err(|e| e.to_string())?;
    Ok(SlotsFile { mem, start })
}

struct SlotsFile {
    mem: std::fs::File,
    start: u64,
}

impl SlotsFile {
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.mem.write_all_at(bytes, self.start + offset)
    }
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A job that says, in its slots page, that it started an hour from now, then runs
/// `ms` (a job whose memory was scribbled on).
#[job]
fn lie_start_time(ms: u64) -> Result<u64, String> {
    let slots = own_slots()?;
    let future = (monotonic_ns() + 3600 * 1_000_000_000).to_le_bytes();
    for i in 0..WORDS {
        slots
            .write_all_at(&future, (WORDS + i) * 8)
            .map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}

/// A job that truncates its slots memfd (the supervisor maps it too).
#[job]
fn truncate_slots() -> Result<u64, String> {
    let (_, file) = slots_mapping()?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(0))
        .map_err(|e| e.to_string())?;
    Ok(1)
}

fn timeout(ms: u64) -> TaskOptions {
    TaskOptions::default().timeout(Duration::from_millis(ms))
}

#[test]
fn workers_the_pool_ends_itself_are_no_failures_to_start() {
    // Six time limits in a row, each on a fresh worker.
    let pool = Pool::builder().processes(1).build().unwrap();
    for _ in 0..6 {
        let r = pool
            .apply_async_with(sleep_ms, 30_000, timeout(200))
            .unwrap()
            .get_timeout(PATIENCE);
        assert_eq!(r, Err(JobError::Timeout));
    }
    assert_eq!(
        pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE),
        Ok(9)
    );

    // Six cancels of running tasks in a row.
    let dir = scratch_dir("edges-cancel-running");
    for i in 0..6 {
        let d = dir.join(format!("{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let r = pool
            .apply_async(mark_and_sleep, (d.to_string_lossy().into_owned(), 30_000))
            .unwrap();
        assert!(eventually(|| std::fs::read_dir(&d).unwrap().count() > 0));
        assert!(r.cancel());
        assert_eq!(r.get_timeout(PATIENCE), Err(JobError::Cancelled));
    }
    assert_eq!(
        pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE),
        Ok(9)
    );
    close_and_check(pool);
}

#[test]
fn idle_workers_killed_from_outside_are_replaced_not_counted_as_start_failures() {
    let pool = Pool::builder().processes(5).build().unwrap();
    let pids = pool.worker_pids();
    for &pid in &pids {
        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    assert_gone(&pids);
    assert_eq!(
        pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE),
        Ok(9)
    );
    close_and_check(pool);
}

#[test]
fn losing_the_fork_server_once_is_no_failure_to_start() {
    let pool = Pool::builder()
        .processes(5)
        .start_method(StartMethod::ForkServer)
        .build()
        .unwrap();
    let worker = pool.worker_pids()[0];
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let old = pool.worker_pids();
    signal::kill(Pid::from_raw(ppid), Signal::SIGKILL).unwrap();
    // Its workers die with it (parent-death signal). A task sent to one of them before
    // the pool noticed may be lost with it; what matters is that the pool starts new
    // ones and is not broken.
    assert_gone(&old);
    let retry = TaskOptions::default().retries(1);
    assert_eq!(
        pool.apply_async_with(square, 3, retry)
            .unwrap()
            .get_timeout(PATIENCE),
        Ok(9)
    );
    close_and_check(pool);
}

#[test]
fn a_start_time_in_the_future_does_not_push_the_time_limit_away() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let r = pool
        .apply_async_with(lie_start_time, 60_000, timeout(500))
        .unwrap();
    assert_eq!(r.get_timeout(PATIENCE), Err(JobError::Timeout));
    close_and_check(pool);
}

#[test]
fn a_worker_cannot_shrink_its_slots() {
    let pool = Pool::builder().processes(1).build().unwrap();
    assert_eq!(pool.apply(square, 2), Ok(4));
    let r = pool.apply_async(truncate_slots, ()).unwrap();
    assert!(matches!(
        r.get_timeout(PATIENCE),
        Err(JobError::Failed { .. })
    ));
    assert_eq!(
        pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE),
        Ok(9)
    );
    close_and_check(pool);
}

#[test]
fn a_callback_may_wait_for_a_result_that_has_callbacks_of_its_own() {
    let pool = Pool::builder().processes(2).build().unwrap();
    let a = pool.apply_async(sleep_ms, 100).unwrap();
    let b = pool.apply_async(sleep_ms, 400).unwrap();
    b.on_complete(|_| {});
    let (tx, rx) = mpsc::channel();
    a.on_complete(move |_| {
        let _ = tx.send(b.get_timeout(PATIENCE));
    });
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Ok(400));
    assert_eq!(a.get_timeout(PATIENCE), Ok(100));
    close_and_check(pool);
}

#[test]
fn a_slow_callback_holds_up_neither_other_results_nor_terminate() {
    let pool = Pool::builder().processes(2).build().unwrap();
    // Long enough that the callback is in before the task ends, so it runs on the
    // pool's callbacks thread, not here.
    let x = pool.apply_async(sleep_ms, 300).unwrap();
    let (tx, rx) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    x.on_complete(move |_| {
        let _ = tx.send(std::thread::current().name().map(str::to_owned));
        std::thread::sleep(Duration::from_secs(30));
        flag.store(true, Ordering::SeqCst);
    });
    let on = rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(on.as_deref(), Some("procpool-callbacks"));
    // Results without callbacks, and results whose callbacks wait behind the slow one
    // (the waiter runs those itself).
    assert_eq!(
        pool.apply_async(square, 2).unwrap().get_timeout(PATIENCE),
        Ok(4)
    );
    let y = pool.apply_async(square, 3).unwrap();
    y.on_complete(|_| {});
    assert_eq!(y.get_timeout(PATIENCE), Ok(9));
    let pids = pool.worker_pids();
    drop(pool);
    assert!(
        !finished.load(Ordering::SeqCst),
        "terminate waited for a callback"
    );
    assert_gone(&pids);
}

// ---------------------------------------------------------------------------------
// 6. Slot reuse: more than 128 tasks sent to one worker that it has not yet read
//    (revoked ones stay in its socket until it reads past them).

fn slot_reuse(per_worker: usize, rounds: u64, pause_us: u64) {
    let pool = Pool::builder()
        .processes(1)
        .tasks_per_worker(per_worker)
        .build()
        .unwrap();
    for i in 0..20 {
        assert_eq!(pool.apply(square, i), Ok(i * i));
    }
    let (path, text) = {
        let p = scratch_dir(&format!("edges-slot-reuse-{per_worker}")).join("ledger");
        let t = p.to_string_lossy().into_owned();
        (p, t)
    };
    let mut protocol = 0;
    let mut cancelled_inputs = Vec::new();
    let mut next = 1_000_000u64;
    for round in 0..40u64 {
        let head = pool
            .apply_async(ledger_sleep, (text.clone(), round, 4))
            .unwrap();
        let mut cancelled = Vec::new();
        for _ in 0..rounds {
            let inputs: Vec<(String, u64, u64)> = (0..per_worker as u64 - 1)
                .map(|k| (text.clone(), next + k, 0))
                .collect();
            let ids: Vec<u64> = (next..next + per_worker as u64 - 1).collect();
            next += per_worker as u64 - 1;
            let r = pool.map_async_chunked(ledger_sleep, inputs, 1).unwrap();
            std::thread::sleep(Duration::from_micros(pause_us));
            if r.cancel() {
                cancelled.push((r, ids));
            }
        }
        if let Err(JobError::Protocol { message }) = head.get_timeout(PATIENCE) {
            protocol += 1;
            eprintln!("round {round}: head failed with Protocol: {message}");
        }
        for (r, ids) in cancelled {
            match r.get_timeout(PATIENCE) {
                Err(JobError::Cancelled) => cancelled_inputs.extend(ids),
                Err(JobError::Protocol { message }) => {
                    protocol += 1;
                    eprintln!("round {round}: a map failed with Protocol: {message}");
                }
                _ => {}
            }
        }
    }
    pool.close();
    pool.join().unwrap();
    let starts = ledger_starts(&path);
    let ran_cancelled: Vec<u64> = cancelled_inputs
        .iter()
        .copied()
        .filter(|i| starts.contains_key(i))
        .collect();
    eprintln!(
        "{protocol} Protocol errors; {} inputs of maps that resolved Cancelled; {} of them started \
         anyway; inputs started twice: {:?}",
        cancelled_inputs.len(),
        ran_cancelled.len(),
        starts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(protocol, 0);
}

#[test]
fn cancels_of_sent_ahead_tasks_never_run_them_and_never_break_the_protocol() {
    slot_reuse(64, 3, 300);
}

// ---------------------------------------------------------------------------------
// 8. Retirement with tasks sent ahead, close() while sent ahead, every start method.

fn retire_round(method: StartMethod, memory: bool) {
    let mut b = Pool::builder().processes(2).retries(0).start_method(method);
    b = if memory {
        b.max_memory_per_child(1)
    } else {
        b.max_tasks_per_child(3)
    };
    let pool = b.build().unwrap();
    let p = scratch_dir(&format!("edges-retire-{method:?}-{memory}")).join("ledger");
    let text = p.to_string_lossy().into_owned();
    let results: Vec<_> = (0..300u64)
        .map(|i| {
            pool.apply_async(ledger_sleep, (text.clone(), i, i % 2))
                .unwrap()
        })
        .collect();
    pool.close();
    let mut bad = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r.get_timeout(PATIENCE) {
            Ok(v) if v == i as u64 => {}
            other => bad.push((i, other)),
        }
    }
    assert!(pool.join_timeout(PATIENCE).unwrap());
    let starts = ledger_starts(&p);
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{method:?} memory={memory}: bad {:?}; started twice {twice:?}",
        &bad[..bad.len().min(5)]
    );
    assert!(bad.is_empty() && twice.is_empty());
}

#[test]
fn retirement_with_sent_ahead_tasks_runs_each_once() {
    for method in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ] {
        for memory in [false, true] {
            retire_round(method, memory);
        }
    }
}
