//! Jobs shared by the integration tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use procpool::job;
use serde::{Deserialize, Serialize};

#[job]
pub fn square(x: u64) -> u64 {
    x * x
}

/// Sleeps, then returns its argument.
#[job]
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The pid of the worker that ran it.
#[job]
pub fn worker_pid() -> u32 {
    std::process::id()
}

/// Fails for multiples of 3 with a message naming the input.
#[job]
pub fn fail_on_threes(x: u64) -> Result<u64, String> {
    if x % 3 == 0 {
        Err(format!("{x} is a multiple of three"))
    } else {
        Ok(x)
    }
}

/// Several arguments: the macro makes them one tuple.
#[job]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Ways for a job to end its worker, each with a known `multiprocessing` exitcode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Crash {
    Abort,
    Segfault,
    Exit(i32),
    Panic,
    None,
}

/// Crashes the way it is told to; `Crash::None` returns 7.
#[job]
pub fn crash(how: Crash) -> u64 {
    match how {
        Crash::Abort => std::process::abort(),
        Crash::Segfault => {
            // A real invalid memory access, as a buggy C library would make: the dangling
            // pointer is address 8, in the never-mapped first page, so this faults.
            // SAFETY: deliberately unsound; the worker is meant to die of it.
            let v = unsafe { std::ptr::read_volatile(std::ptr::dangling::<u64>()) };
            std::hint::black_box(v)
        }
        Crash::Exit(code) => std::process::exit(code),
        Crash::Panic => panic!("deliberate panic in a job"),
        Crash::None => 7,
    }
}

static INITIALIZED: AtomicU32 = AtomicU32::new(0);

/// An initializer: counts its runs in this worker and remembers the argument.
#[job]
pub fn count_init(tag: u32) {
    INITIALIZED.fetch_add(tag, Ordering::SeqCst);
}

/// How many times `count_init` ran in this worker (with tag 1).
#[job]
pub fn init_runs() -> u32 {
    INITIALIZED.load(Ordering::SeqCst)
}

/// An initializer that always fails.
#[job]
pub fn failing_init() -> Result<(), String> {
    Err("no database here".into())
}

/// Writes `<dir>/<pid>` so a test knows the task has started in that worker, then
/// sleeps; returns the pid.
#[job]
pub fn mark_and_sleep(dir: String, ms: u64) -> Result<u32, String> {
    let pid = std::process::id();
    std::fs::write(format!("{dir}/{pid}"), b"started").map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(pid)
}

/// Records one attempt as a new file in `dir`; aborts the worker while fewer than
/// `crashes` attempts are recorded, then returns the number of attempts.
#[job]
pub fn crash_until(dir: String, crashes: usize) -> Result<usize, String> {
    let attempts = std::fs::read_dir(&dir).map_err(|e| e.to_string())?.count() + 1;
    std::fs::write(format!("{dir}/attempt-{attempts}"), b"").map_err(|e| e.to_string())?;
    if attempts <= crashes {
        std::process::abort();
    }
    Ok(attempts)
}

/// Records one attempt as a new file in `dir`, then fails or panics.
#[job]
pub fn fail_and_count(dir: String, panic: bool) -> Result<(), String> {
    let attempts = std::fs::read_dir(&dir).map_err(|e| e.to_string())?.count() + 1;
    std::fs::write(format!("{dir}/attempt-{attempts}"), b"").map_err(|e| e.to_string())?;
    if panic {
        panic!("attempt {attempts} panics");
    }
    Err(format!("attempt {attempts} fails"))
}

/// Its argument reversed (for payload tests: every byte must arrive, in place).
#[job]
pub fn reverse(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.reverse();
    bytes
}

/// The length of its argument (for payload-size tests).
#[job]
pub fn byte_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// `len` bytes of a pattern (a large result to a small argument).
#[job]
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Records one attempt as a new file in `dir`; aborts the worker while fewer than
/// `crashes` attempts are recorded, then returns `bytes` reversed (a retried task must
/// get its arguments intact).
#[job]
pub fn reverse_after_crashes(
    dir: String,
    crashes: usize,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    crash_until(dir, crashes)?;
    bytes.reverse();
    Ok(bytes)
}

/// A value whose serialization always fails.
#[derive(Debug, Deserialize)]
pub struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

/// An argument whose `Refuses` variant cannot be encoded.
#[derive(Debug, Deserialize)]
pub enum Encodes {
    Fine(u64),
    Refuses,
}

impl Serialize for Encodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Encodes::Fine(n) => s.serialize_newtype_variant("Encodes", 0, "Fine", n),
            Encodes::Refuses => Err(serde::ser::Error::custom(
                "this value refuses to be serialized",
            )),
        }
    }
}

/// The number inside a `Fine`.
#[job]
pub fn fine_value(e: Encodes) -> u64 {
    match e {
        Encodes::Fine(n) => n,
        Encodes::Refuses => u64::MAX,
    }
}

/// Returns a result that cannot be encoded.
#[job]
pub fn unencodable() -> Unserializable {
    Unserializable
}

/// Allocates `mib` MiB, touches every page, and leaks it; returns the worker's pid.
#[job]
pub fn leak_mib(mib: usize) -> u32 {
    let block = vec![1u8; mib << 20];
    std::mem::forget(std::hint::black_box(block));
    std::process::id()
}

/// Reserves `gib` GiB without touching it (cheap, unless the address space is capped).
#[job]
pub fn reserve_gib(gib: usize) -> usize {
    let block: Vec<u8> = Vec::with_capacity(gib << 30);
    std::hint::black_box(block).capacity() >> 30
}

/// Writes `message` to stderr (descriptor 2 itself, as a C library would: under the
/// test harness `eprintln!` in a forked worker goes to the harness's capture), then
/// aborts.
#[job]
pub fn shout_and_abort(message: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
    std::process::abort();
}

/// An initializer that fails the first time, after 300 ms (it leaves a marker in
/// `dir`), then works.
#[job]
pub fn init_fails_once(dir: String) -> Result<(), String> {
    let marker = format!("{dir}/failed-once");
    if std::fs::metadata(&marker).is_ok() {
        return Ok(());
    }
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    // Slowly, so that the caller's close() arrives while this start is failing.
    std::thread::sleep(Duration::from_millis(300));
    Err("first start fails".into())
}

/// Appends `<input> <pid>\n` to the ledger file `path` (`O_APPEND`: one write, never
/// interleaved): a job calls it as it starts, so the ledger counts starts.
pub fn record_start(path: &str, input: u64) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{input} {}\n", std::process::id()).as_bytes()))
        .map_err(|e| e.to_string())
}

/// Records its start in the ledger at `path`, sleeps `ms`, then returns `input`.
#[job]
pub fn ledger_sleep(path: String, input: u64, ms: u64) -> Result<u64, String> {
    record_start(&path, input)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(input)
}

/// How many times each input started, read from a ledger that `ledger_sleep` wrote.
pub fn ledger_starts(path: &std::path::Path) -> std::collections::HashMap<u64, usize> {
    let mut starts = std::collections::HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let input: u64 = line
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a torn ledger line: {line:?}"));
        *starts.entry(input).or_default() += 1;
    }
    starts
}

/// A value whose `Deserialize` panics (user code on the caller's side).
#[derive(Debug, Serialize)]
pub struct Bomb(pub u64);

impl<'de> Deserialize<'de> for Bomb {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("a Deserialize that panics")
    }
}

#[job]
pub fn bomb(x: u64) -> Bomb {
    Bomb(x)
}

/// Floods stderr with very short lines (the most work per byte for whoever reads
/// them) from several threads, so that the pipe is never empty, without end (until its
/// worker is killed).
#[job]
pub fn flood_stderr() {
    fn flood() {
        use std::io::Write;
        use std::os::fd::AsFd;
        // Descriptor 2 itself, unlocked: the threads must not take turns.
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return;
        };
        let mut err = std::fs::File::from(fd);
        let burst = b"x\n".repeat(2048);
        loop {
            let _ = err.write_all(&burst);
        }
    }
    for _ in 0..7 {
        std::thread::spawn(flood);
    }
    flood()
}

/// Writes a line to stderr and one to stdout with `eprintln!` and `println!` (std's
/// locks, as most jobs print), then returns its argument.
#[job]
pub fn chatty(x: u64) -> u64 {
    eprintln!("chatty job says {x}");
    println!("chatty job says {x}");
    x
}

/// Records its start in the ledger at `path`; aborts its worker on input `bad` (the
/// first `crashes` times it starts there, counted in the ledger), else returns `input`.
#[job]
pub fn ledger_abort(path: String, input: u64, bad: u64, crashes: usize) -> Result<u64, String> {
    record_start(&path, input)?;
    let starts = ledger_starts(std::path::Path::new(&path));
    if input == bad && starts.get(&input).copied().unwrap_or(0) <= crashes {
        std::process::abort();
    }
    Ok(input)
}
