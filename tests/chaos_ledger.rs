//! The chaos ledger: every fast path at once with every fault. Tasks are sent ahead
//! (the default), some arguments are large (shared memory), some tasks have time limits
//! they pass, some are cancelled, workers are SIGKILLed at random, completion callbacks
//! keep the result thread busy; with retries 0 and > 0, and every start method. Each job
//! appends a line to an `O_APPEND` ledger as it starts. Afterwards:
//!
//! - every task resolved exactly once (`get` consumes the result; none is left pending);
//! - no input started more than retries + 1 times (with retries 0: never twice);
//! - a value came from a run that is in the ledger, and is the right value;
//! - failures are only the kinds the faults explain.
//!
//! `PROCPOOL_CHAOS_SECS` (default 2) sets how long each configuration runs.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use procpool::{AsyncResult, JobError, Pool, StartMethod, TaskOptions, job};
use serde_bytes::ByteBuf;

procpool::test_harness!();

/// Appends `<input> <pid>` to the ledger, sleeps `ms`, returns `input` plus the size of
/// `payload` (large ones travel in shared memory).
#[job]
fn chaos_job(path: String, input: u64, ms: u64, payload: ByteBuf) -> Result<u64, String> {
    record_start(&path, input)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(input + payload.len() as u64)
}

fn seconds() -> f64 {
    std::env::var("PROCPOOL_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

struct Submitted {
    input: u64,
    expected: u64,
    result: AsyncResult<u64>,
    cancelled: bool,
    timed: bool,
}

fn run_chaos(method: StartMethod, retries: u32, seed: u64) {
    let name = format!("chaos-ledger-{method:?}-{retries}");
    let path = scratch_dir(&name).join("ledger");
    let text = path.to_string_lossy().into_owned();
    let pool = Pool::builder()
        .processes(3)
        .start_method(method)
        .retries(retries)
        .max_start_failures(u32::MAX)
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    let done = AtomicBool::new(false);
    let until = Instant::now() + Duration::from_secs_f64(seconds());
    let mut submitted: Vec<Submitted> = Vec::new();
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| kill_workers_until(&pool, Duration::from_millis(40), &done, seed));
        // Beside the single tasks, a stream of chunks: a worker killed in the middle of
        // one loses only the argument it was running.
        let chunks = s.spawn(|| chunked(&pool, &text, retries, until));
        let mut input = 0u64;
        while Instant::now() < until {
            input += 1;
            let large = rng.below(8) == 0;
            let payload = ByteBuf::from(vec![7u8; if large { 300 * 1024 } else { 16 }]);
            let ms = match rng.below(10) {
                0 => 30,
                1..=4 => 1,
                _ => 0,
            };
            let timed = rng.below(6) == 0;
            let mut options = TaskOptions::default().retries(retries);
            if timed {
                options = options.timeout(Duration::from_millis(10 + rng.below(30)));
            }
            let expected = input + payload.len() as u64;
            let result = pool
                .apply_async_with(chaos_job, (text.clone(), input, ms, payload), options)
                .unwrap();
            if rng.below(8) == 0 {
                let pause = Duration::from_millis(rng.below(8));
                result.on_complete(move |_| std::thread::sleep(pause));
            }
            submitted.push(Submitted {
                input,
                expected,
                result,
                cancelled: false,
                timed,
            });
            if rng.below(7) == 0 {
                let back = rng.below(12) as usize;
                let at = submitted.len().saturating_sub(1 + back);
                submitted[at].result.cancel();
                submitted[at].cancelled = true;
            }
            if rng.below(3) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(2000)));
            }
        }
        let mut outcomes = chunks.join().unwrap();
        for s in submitted.drain(..) {
            let got = s.result.get_timeout(Duration::from_secs(120));
            outcomes.push((s.input, s.expected, s.cancelled, s.timed, got));
        }
        done.store(true, Ordering::SeqCst);
        let kills = killer.join().unwrap();
        check(&path, retries, &outcomes);
        eprintln!(
            "{name}: {} tasks, {kills} kills, {} ok",
            outcomes.len(),
            outcomes.iter().filter(|o| o.4.is_ok()).count()
        );
        kills
    });
    assert!(kills > 0, "no worker was killed");
    let pids = pool.worker_pids();
    pool.terminate();
    assert_gone(&pids);
}

type Outcome = (u64, u64, bool, bool, Result<u64, JobError>);

/// Inputs from 10^9 up in chunks of 6 with a time limit (none cancelled), some large,
/// until `until`.
fn chunked(pool: &Pool, path: &str, retries: u32, until: Instant) -> Vec<Outcome> {
    let first = 1_000_000_000u64;
    let inputs = (first..)
        .take_while(|_| Instant::now() < until)
        .map(|input| {
            (
                path.to_owned(),
                input,
                input % 3,
                // Now and then a chunk's arguments go in shared memory (and a chunk
                // resumed after a kill is resumed there).
                ByteBuf::from(vec![1u8; if input % 40 == 0 { 300 * 1024 } else { 8 }]),
            )
        });
    // A chunk runs up to 12 ms; now and then one passes its limit on a busy machine,
    // which the checks allow (a time limit is the whole chunk's).
    let options = TaskOptions::default()
        .retries(retries)
        .timeout(Duration::from_millis(15));
    pool.imap_unordered(chaos_job, inputs)
        .chunksize(6)
        .options(options)
        .with_positions()
        .map(|(at, got)| {
            let input = first + at as u64;
            let size = if input % 40 == 0 { 300 * 1024 } else { 8 };
            (input, input + size, false, true, got)
        })
        .collect()
}

fn check(path: &std::path::Path, retries: u32, outcomes: &[Outcome]) {
    let starts = ledger_starts(path);
    for (input, expected, cancelled, timed, got) in outcomes {
        let n = starts.get(input).copied().unwrap_or(0);
        assert!(
            n <= retries as usize + 1,
            "input {input} started {n} times with retries {retries} ({got:?})"
        );
        match got {
            Ok(v) => {
                assert_eq!(v, expected, "input {input}: wrong value");
                assert!(n >= 1, "input {input} has a value but never started");
            }
            Err(JobError::WaitTimeout { .. }) => panic!("input {input} never resolved"),
            Err(JobError::Cancelled) => assert!(*cancelled, "input {input}: Cancelled"),
            Err(JobError::Timeout) => assert!(*timed, "input {input}: Timeout"),
            Err(JobError::WorkerLost { attempts, .. }) => {
                // A worker can die between claiming a task and its first line: a
                // start that cannot be ruled out counts, so no ledger line is needed.
                assert_eq!(*attempts, retries + 1, "input {input}: attempts");
            }
            Err(other) => panic!("input {input}: unexpected {other:?}"),
        }
    }
}

#[test]
fn chaos_spawn_without_retries() {
    run_chaos(StartMethod::Spawn, 0, 0x1234_5678_9abc_def1);
}

#[test]
fn chaos_spawn_with_retries() {
    run_chaos(StartMethod::Spawn, 2, 0x0fed_cba9_8765_4321);
}

#[test]
fn chaos_fork_without_retries() {
    run_chaos(StartMethod::Fork, 0, 0x5555_aaaa_3333_cccc);
}

#[test]
fn chaos_fork_server_with_retries() {
    run_chaos(StartMethod::ForkServer, 1, 0x7777_1111_eeee_2222);
}
