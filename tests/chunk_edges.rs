//! Exactly once inside a chunk, at its edges (from a hostile review): failures before
//! a crash, a chunk resumed twice, every start method, imap of every kind, a journal
//! that overflows, shared arguments, a crash in a value's drop, retries counted per
//! input, cancel of a resumed chunk, no leaks, Fork workers that cannot see their
//! siblings' slots and journals.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use procpool::{JobError, Pool, StartMethod, job};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

procpool::test_harness!();

const LONG: Duration = Duration::from_secs(120);

fn starts(path: &Path) -> HashMap<u64, usize> {
    ledger_starts(path)
}

/// Records its start; aborts the worker on any input of `crash_on` the first
/// `crashes` times it starts there; inputs `% 7 == 5` return an error, `% 7 == 6`
/// panic; else returns the input.
#[job]
fn r2_job(path: String, input: u64, crash_on: Vec<u64>, crashes: usize) -> Result<u64, String> {
    record_start(&path, input)?;
    if crash_on.contains(&input) {
        let n = ledger_starts(Path::new(&path))
            .get(&input)
            .copied()
            .unwrap_or(0);
        if n <= crashes {
            std::process::abort();
        }
    }
    match input % 7 {
        5 => Err(format!("err {input}")),
        6 => panic!("panic {input}"),
        _ => Ok(input),
    }
}

fn args(
    path: &Path,
    n: u64,
    crash_on: &[u64],
    crashes: usize,
) -> Vec<(String, u64, Vec<u64>, usize)> {
    let text = path.to_string_lossy().into_owned();
    (0..n)
        .map(|i| (text.clone(), i, crash_on.to_vec(), crashes))
        .collect()
}

fn expected(i: u64) -> Result<u64, &'static str> {
    match i % 7 {
        5 => Err("failed"),
        6 => Err("panicked"),
        _ => Ok(i),
    }
}

fn check_outcome(i: u64, got: &Result<u64, JobError>, lost: &[u64]) {
    if lost.contains(&i) {
        assert!(
            matches!(got, Err(JobError::WorkerLost { .. })),
            "input {i}: {got:?}"
        );
        return;
    }
    match (expected(i), got) {
        (Ok(v), Ok(g)) => assert_eq!(v, *g, "input {i}"),
        (Err("failed"), Err(JobError::Failed { message })) => {
            assert_eq!(message, &format!("err {i}"), "input {i}")
        }
        (Err("panicked"), Err(JobError::Panicked { message })) => {
            assert!(
                message.contains(&format!("panic {i}")),
                "input {i}: {message}"
            )
        }
        (want, got) => panic!("input {i}: wanted {want:?}, got {got:?}"),
    }
}

// ---------------------------------------------------------------- sanity of the design

/// Failures (Err, panic) in the journal before a crash; one chunk resumed twice
/// (crashes at 3 and 9 of a chunk of 14), with every start method; retries 0.
#[test]
fn failures_before_crashes_and_a_chunk_resumed_twice_every_start_method() {
    for method in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ] {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .unwrap();
        let path = scratch_dir(&format!("r2-twice-{method:?}")).join("ledger");
        let lost = [3u64, 9, 16, 27];
        let outcomes = pool
            .map_results_chunked(r2_job, args(&path, 28, &lost, usize::MAX), 14)
            .unwrap();
        assert_eq!(outcomes.len(), 28);
        let s = starts(&path);
        for (i, got) in outcomes.iter().enumerate() {
            check_outcome(i as u64, got, &lost);
            assert_eq!(s.get(&(i as u64)), Some(&1), "{method:?}: input {i} starts");
        }
        close_and_check(pool);
    }
}

/// imap / imap_unordered with chunks and positions; imap_encoded (Run requests) with
/// failures in its journal.
#[test]
fn imap_kinds_with_chunks_keep_positions() {
    let pool = Pool::builder().processes(2).build().unwrap();
    for ordered in [true, false] {
        let path = scratch_dir(&format!("r2-imap-{ordered}")).join("ledger");
        let lost = [2u64, 8, 12, 19];
        let a = args(&path, 24, &lost, usize::MAX);
        let it = if ordered {
            pool.imap(r2_job, a)
        } else {
            pool.imap_unordered(r2_job, a)
        };
        let got: Vec<_> = it.chunksize(5).with_positions().collect();
        assert_eq!(got.len(), 24);
        let s = starts(&path);
        for (at, outcome) in &got {
            check_outcome(*at as u64, outcome, &lost);
        }
        for i in 0..24u64 {
            assert_eq!(s.get(&i), Some(&1), "ordered {ordered}: input {i} starts");
        }
    }
    let path = scratch_dir("r2-imap-encoded").join("ledger");
    let lost = [4u64, 11];
    let encoded: Vec<Vec<u8>> = args(&path, 14, &lost, usize::MAX)
        .iter()
        .map(|a| procpool::Codec::Bincode.encode(a).unwrap())
        .collect();
    let got: Vec<_> = pool
        .imap_encoded("r2_job", procpool::Codec::Bincode, encoded, true)
        .chunksize(7)
        .collect();
    assert_eq!(got.len(), 14);
    let s = starts(&path);
    for (i, outcome) in got.into_iter().enumerate() {
        let i = i as u64;
        let decoded = outcome.map(|b| procpool::Codec::Bincode.decode::<u64>(&b).unwrap());
        check_outcome(i, &decoded, &lost);
        assert_eq!(s.get(&i), Some(&1), "encoded input {i} starts");
    }
    close_and_check(pool);
}

/// Large results: the journal overflows (256 KiB), so the whole chunk fails, and never
/// runs twice with retries 0.
#[job]
fn r2_big_out(path: String, input: u64, bad: u64, len: usize) -> ByteBuf {
    record_start(&path, input).unwrap();
    if input == bad {
        std::process::abort();
    }
    ByteBuf::from(vec![input as u8; len])
}

#[test]
fn overflowing_journal_fails_the_whole_chunk_and_runs_nothing_twice() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let path = scratch_dir("r2-overflow").join("ledger");
    let text = path.to_string_lossy().into_owned();
    let a: Vec<_> = (0..8u64)
        .map(|i| (text.clone(), i, 5u64, 100_000usize))
        .collect();
    let outcomes = pool.map_results_chunked(r2_big_out, a, 8).unwrap();
    assert_eq!(outcomes.len(), 8);
    let s = starts(&path);
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            matches!(o, Err(JobError::WorkerLost { .. })),
            "input {i}: {:?}",
            o.as_ref().map(|b| b.len())
        );
        let expect = if i <= 5 { Some(&1) } else { None };
        assert_eq!(s.get(&(i as u64)), expect, "input {i} starts");
    }
    close_and_check(pool);
}

/// Large arguments (RunBatchShared) with a crash in the middle of a chunk.
#[job]
fn r2_big_in(path: String, input: u64, bad: u64, payload: ByteBuf) -> u64 {
    record_start(&path, input).unwrap();
    if input == bad {
        std::process::abort();
    }
    input + payload.len() as u64
}

#[test]
fn shared_arguments_resume_after_a_crash() {
    for method in [StartMethod::Spawn, StartMethod::Fork] {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .unwrap();
        let path = scratch_dir(&format!("r2-big-in-{method:?}")).join("ledger");
        let text = path.to_string_lossy().into_owned();
        let a: Vec<_> = (0..8u64)
            .map(|i| (text.clone(), i, 3u64, ByteBuf::from(vec![7u8; 100_000])))
            .collect();
        let outcomes = pool.map_results_chunked(r2_big_in, a, 8).unwrap();
        let s = starts(&path);
        for (i, o) in outcomes.iter().enumerate() {
            if i == 3 {
                assert!(matches!(o, Err(JobError::WorkerLost { .. })), "{o:?}");
            } else {
                assert_eq!(o, &Ok(i as u64 + 100_000), "input {i}");
            }
            assert_eq!(s.get(&(i as u64)), Some(&1), "input {i} starts");
        }
        close_and_check(pool);
    }
}

// ------------------------------------------------------------------- claimed defects

/// A value whose `Drop` aborts its process when armed (armed only where it was made:
/// the flag does not travel).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Armed {
    pub v: u64,
    #[serde(skip)]
    pub armed: bool,
}

impl Drop for Armed {
    fn drop(&mut self) {
        if self.armed {
            std::process::abort();
        }
    }
}

/// Returns `input`; on input `bad` the returned value's drop kills the worker (after
/// the value was encoded and journaled): the crash is input `bad`'s own, after it ran.
#[job]
fn r2_drop_abort(path: String, input: u64, bad: u64) -> Armed {
    record_start(&path, input).unwrap();
    Armed {
        v: input,
        armed: input == bad,
    }
}

/// The design says "the one that was running is the one lost". A crash between two
/// arguments (here in input 4's own code, after its value was journaled) is blamed on
/// input 5, which never started: 5 ends `WorkerLost` and never runs.
#[test]
fn a_crash_in_a_value_s_drop_is_that_input_s_not_the_next_one_s() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let path = scratch_dir("r2-between").join("ledger");
    let text = path.to_string_lossy().into_owned();
    let a: Vec<_> = (0..10u64).map(|i| (text.clone(), i, 4u64)).collect();
    let outcomes = pool.map_results_chunked(r2_drop_abort, a, 10).unwrap();
    let s = starts(&path);
    let report: Vec<String> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let o = match o {
                Ok(v) => format!("Ok({})", v.v),
                Err(e) => format!("{e:?}").chars().take(40).collect(),
            };
            format!(
                "{i}: {o} starts={}",
                s.get(&(i as u64)).copied().unwrap_or(0)
            )
        })
        .collect();
    for (i, o) in outcomes.iter().enumerate() {
        let started = s.get(&(i as u64)).copied().unwrap_or(0);
        assert!(
            !(o.is_err() && started == 0),
            "input {i} never started yet was reported {o:?}\n{}",
            report.join("\n")
        );
    }
    close_and_check(pool);
}

/// With retries(2), every input that crashes its worker only on its first start must
/// end with its value (each was attempted once, and may be retried twice). In one
/// chunk, the chunk's budget is spent by *other* inputs: input 3 ends `WorkerLost`
/// with `attempts: 3` though it ran once.
#[test]
fn retries_are_counted_for_each_input_of_a_chunk() {
    let pool = Pool::builder().processes(1).retries(2).build().unwrap();
    let path = scratch_dir("r2-budget").join("ledger");
    // Inputs 1, 2, 3 abort on their first start only (inputs 0..4: no % 7 failures).
    let outcomes = pool
        .map_results_chunked(r2_job, args(&path, 5, &[1, 2, 3], 1), 5)
        .unwrap();
    let s = starts(&path);
    let mut bad = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        if o != &Ok(i as u64) {
            bad.push(format!(
                "input {i}: {o:?} (started {:?} times)",
                s.get(&(i as u64))
            ));
        }
    }
    // The same inputs in chunks of 1 all succeed.
    let path1 = scratch_dir("r2-budget-1").join("ledger");
    let single = pool
        .map_results_chunked(r2_job, args(&path1, 5, &[1, 2, 3], 1), 1)
        .unwrap();
    assert!(
        single.iter().enumerate().all(|(i, o)| o == &Ok(i as u64)),
        "{single:?}"
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    close_and_check(pool);
}

/// A resumed chunk that then passes its time limit: the inputs that finished before
/// the limit (as the journal says, the same as after a crash) get `Timeout`.
#[job]
fn r2_sleep(path: String, input: u64, bad: u64, slow: u64) -> u64 {
    record_start(&path, input).unwrap();
    if input == bad {
        std::process::abort();
    }
    if input == slow {
        std::thread::sleep(Duration::from_secs(30));
    }
    input
}

/// Cancel of a resumed task: resolves once, Cancelled (or the earlier WorkerLost).
#[test]
fn cancel_of_a_resumed_chunk_resolves_once() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let path = scratch_dir("r2-cancel").join("ledger");
    let text = path.to_string_lossy().into_owned();
    let a: Vec<_> = (0..6u64).map(|i| (text.clone(), i, 1u64, 3u64)).collect();
    let r = pool.map_async_chunked(r2_sleep, a, 6).unwrap();
    assert!(eventually(|| starts(&path).contains_key(&3)));
    assert!(r.cancel());
    let got = r.get_timeout(LONG);
    assert!(
        matches!(
            got,
            Err(JobError::WorkerLost { .. }) | Err(JobError::Cancelled)
        ),
        "{got:?}"
    );
    let s = starts(&path);
    assert!(s.values().all(|&n| n == 1), "{s:?}");
    close_and_check(pool);
}

// --------------------------------------------------------------------- hostile worker

/// Finds the slots page and the journal in this worker's mappings.
fn mapping(name: &str, len: usize) -> Option<*mut u8> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        if !line.contains(name) || !line.contains("rw-s") {
            continue;
        }
        let range = line.split(' ').next()?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        if b - a == len {
            return Some(a as *mut u8);
        }
    }
    None
}

/// On input `bad`: forges the journal and the progress words of the started task as
/// `mode` says, then aborts. Else returns `input`.
#[job]
fn r2_forge(input: u64, bad: u64, mode: u8) -> u64 {
    if input != bad {
        return input;
    }
    let slots = mapping("procpool-slots", 4096).expect("slots mapped") as *mut u64;
    let journal = mapping("procpool-payload", 320 * 1024).expect("journal mapped");
    // SAFETY: test code writing this process's own shared mappings, of the sizes found.
    unsafe {
        let started = (0..128)
            .find(|&i| slots.add(i).read_volatile() & 7 == 2)
            .expect("a started slot");
        let done = slots.add(256 + started);
        let failures = slots.add(384 + started);
        match mode {
            // Values claimed for 3 arguments: 24 garbage bytes.
            0 => {
                for k in 0..24 {
                    journal.add(k).write_volatile(0xAB);
                }
                done.write_volatile(3 | (24 << 32));
                failures.write_volatile(0);
            }
            // 3 failures claimed, garbage bytes.
            1 => {
                for k in 0..40 {
                    journal.add(256 * 1024 + k).write_volatile(0xFF);
                }
                failures.write_volatile(3 | (40 << 32));
                done.write_volatile(3);
            }
            // Counts beyond the task.
            2 => done.write_volatile(u32::MAX as u64 | (8 << 32)),
            // Values: a huge Vec length inside a ByteBuf... (u64 job: 3 values whose
            // failures list claims a huge length).
            _ => {
                failures.write_volatile(1 | (8 << 32));
                for k in 0..8 {
                    journal.add(256 * 1024 + k).write_volatile(0xFF);
                }
                done.write_volatile(3 | (16 << 32));
            }
        }
    }
    std::process::abort();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:procpool"))
        .count()
}

#[test]
fn two_hundred_pools_leak_no_descriptor_or_mapping() {
    let warm = Pool::builder().processes(2).build().unwrap();
    assert_eq!(warm.map(square, 0..10u64).unwrap().len(), 10);
    close_and_check(warm);
    let (fds, maps) = (open_fds(), memfd_maps());
    for method in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ] {
        for _ in 0..(if method == StartMethod::Spawn {
            100
        } else {
            50
        }) {
            let pool = Pool::builder()
                .processes(2)
                .start_method(method)
                .build()
                .unwrap();
            assert_eq!(pool.map_chunked(square, 0..10u64, 5).unwrap().len(), 10);
            drop(pool);
        }
    }
    assert!(
        eventually(|| open_fds() <= fds && memfd_maps() <= maps),
        "fds {} (was {fds}), memfd maps {} (was {maps})",
        open_fds(),
        memfd_maps()
    );
}

/// How many slots pages and journals (320 KiB payload memfds) this worker maps.
#[job]
fn r2_count_maps(_x: u64) -> (usize, usize, u32) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let slots = maps
        .lines()
        .filter(|l| l.contains("procpool-slots"))
        .count();
    let journals = maps
        .lines()
        .filter(|l| {
            l.contains("procpool-payload") && {
                let r = l.split(' ').next().unwrap();
                let (a, b) = r.split_once('-').unwrap();
                usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap()
                    == 320 * 1024
            }
        })
        .count();
    std::thread::sleep(Duration::from_millis(200));
    (slots, journals, std::process::id())
}

/// A Fork worker maps only its own slots page and journal (it could otherwise forge a
/// sibling's progress words and journal, the "worker's word" of another worker).
#[test]
fn fork_workers_map_only_their_own_slots_and_journal() {
    let pool = Pool::builder()
        .processes(4)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap();
    let got = pool.map_chunked(r2_count_maps, 0..8u64, 1).unwrap();
    close_and_check(pool);
    assert!(
        got.iter().all(|&(s, j, _)| s == 1 && j == 1),
        "(slots pages, journals, pid) per task: {got:?}"
    );
}

/// Inputs below 20 fail with a 5,000-byte message (small, well under any reply limit);
/// input `bad` aborts its worker.
#[job]
fn r2_long_errors(path: String, input: u64, bad: u64) -> Result<u64, String> {
    record_start(&path, input)?;
    if input == bad {
        std::process::abort();
    }
    if input < 20 {
        return Err("e".repeat(5000));
    }
    Ok(input)
}

/// ARCHITECTURE says the whole chunk is lost only when its *values* outgrew 256 KiB and
/// spilled. 100 KB of failure messages (the reply is 100 KB, inline) also lose it all.
/// A crash right after the last argument of a chunk (in its value's drop): nothing is
/// lost, nothing runs twice.
#[test]
fn a_crash_in_the_last_value_s_drop_loses_only_that_input() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let path = scratch_dir("r2-after-last").join("ledger");
    let text = path.to_string_lossy().into_owned();
    let a: Vec<_> = (0..10u64).map(|i| (text.clone(), i, 9u64)).collect();
    let got = pool.map_results_chunked(r2_drop_abort, a, 10).unwrap();
    let s = starts(&path);
    for (i, o) in got.iter().enumerate() {
        if i == 9 {
            // Its value's drop aborted: that crash is its own.
            assert!(matches!(o, Err(JobError::WorkerLost { .. })), "{o:?}");
        } else {
            assert_eq!(o.as_ref().map(|a| a.v), Ok(i as u64));
        }
        assert_eq!(s.get(&(i as u64)), Some(&1));
    }
    close_and_check(pool);
}
