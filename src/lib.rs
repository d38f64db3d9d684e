//! procpool runs Rust functions in a pool of worker **processes**: Python's
//! `multiprocessing.Pool`, done the Rust way. A job that segfaults, aborts, leaks or
//! hangs takes down one worker, never the caller; every task you submit resolves
//! exactly once, with its value or a typed [`JobError`]; no worker outlives its pool.
//!
//! ```no_run
//! #[procpool::job]
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init();                                   // a worker serves here and exits
//!     let pool = procpool::Pool::builder().processes(4).build()?;
//!     let v: Vec<u64> = pool.map(square, 0..10_000)?;     // ordered, blocking
//!     let r = pool.apply_async(square, 12)?;              // AsyncResult<u64>
//!     assert_eq!(r.get_timeout(std::time::Duration::from_secs(5))?, 144);
//!     assert_eq!(v[3], 9);
//!     pool.close();
//!     pool.join()?;
//!     Ok(())
//! }
//! ```
//!
//! # Jobs
//!
//! `#[job]` turns a function into a job: the function stays callable in-process
//! (`square(3)`), and its name becomes a typed handle (`pool.map(square, ..)`), so
//! argument and result types are checked at compile time and only the job's name
//! crosses to the worker. A job takes one argument (several become a tuple) and
//! returns `T` or `Result<T, E: Display>`; arguments and results are owned serde types.
//! A job is found by its name (`#[job(name = "...")]` renames it), unique per program;
//! see [`macro@job`].
//!
//! # Workers
//!
//! By default a pool starts workers by executing the current program again; in the
//! worker, [`init`] serves jobs and exits, so call it first thing in `main`. A
//! separate worker program (any `main` that calls [`init`] and links the same jobs)
//! is chosen with [`PoolBuilder::worker_executable`]; the `procpool` command is one,
//! with built-in jobs, and `procpool run JOB --worker PROGRAM` runs any such program's
//! jobs over JSON lines. In a test binary, where the harness owns `main`, invoke
//! [`test_harness!`] once at the crate root instead.
//!
//! # Errors
//!
//! A task's error is a [`JobError`]: `Failed` (the job returned `Err`), `Panicked`
//! (caught; the worker lives on), `WorkerLost { pid, exitcode }` (the worker died:
//! `exitcode` is `-9` for SIGKILL, `-11` for a segfault, `3` for `exit(3)`),
//! `Terminated`, `PoolClosed`, `UnknownJob`, `Codec`, `Protocol`, `StartFailed`, ...
//! `ResultTaken` (a value is handed over once: [`AsyncResult::get`] and
//! [`AsyncResult::get_timeout`] take the handle). A pool operation's error is an
//! [`Error`], which a `JobError` and a [`SyncError`] convert into, so `?` works on all
//! of them in one function.
//!
//! # Async
//!
//! An [`AsyncResult`] is a `Future` for any executor. Call [`init`] in a plain `main`
//! and build the runtime after it (with `#[tokio::main]`, every worker would start a
//! runtime before serving). Dropping an `AsyncResult` leaves its task running;
//! [`AsyncResult::cancel_on_drop`] makes dropping it cancel the task (for timeouts and
//! `select!`). See `examples/async_tokio.rs`.
//!
//! # Robustness
//!
//! Per-task time limits (`.task_timeout(d)`, or per call with [`TaskOptions`]) kill and
//! replace a runaway worker; `.retries(n)` re-runs tasks whose worker was lost;
//! `.max_tasks_per_child(n)`, `.max_memory_per_child(bytes)` and `.memory_limit(bytes)`
//! recycle or cap workers; [`AsyncResult::cancel`] stops a queued or running task;
//! [`wait`] and [`as_completed`] watch many results. Workers start by exec
//! ([`StartMethod::Spawn`], the default), by forking the supervisor
//! ([`StartMethod::Fork`]) or from a fork server ([`StartMethod::ForkServer`]).
//!
//! # Processes and shared primitives
//!
//! [`Process`] runs one job in a process of its own (`pid`, `is_alive`, `join`,
//! `join_timeout`, `terminate`, `kill`, `exitcode`, `result`), like
//! `multiprocessing.Process`. Processes talk through [`Queue`] / [`JoinableQueue`],
//! [`Pipe`], [`Event`], [`Lock`], [`Semaphore`], [`Value`] and [`Array`], each a handle
//! to shared memory that goes to another process as a job argument. None of them
//! hangs on a dead peer: a lock whose holder died is taken over, and a queue, pipe,
//! event or semaphore whose other side is gone says [`SyncError::Disconnected`].
//!
//! # Logging
//!
//! Events go through [`tracing`](https://docs.rs/tracing) (the supervisor's under the
//! `pool_core` target); nothing shows unless the program installs a subscriber.
//!
//! # Platform support
//!
//! Linux only (memfd, `PR_SET_PDEATHSIG`, futexes, `close_range` from Linux 5.9);
//! elsewhere the build stops with a `compile_error!` saying so.
//!
//! # Crates
//!
//! This facade re-exports `pool-core` (the supervisor), `pool-worker` (what runs in a
//! worker) and `pool-macros` (`#[job]`).

pub use pool_core::{
    Array, ArrayGuard, AsCompleted, AsyncResult, CancelOnDrop, Codec, DEFAULT_BUFFER_BYTES, Error,
    Event, Imap, Integer, JobError, JobInfo, JoinableQueue, Lock, LockGuard, LostCause, Pipe,
    Plain, Pool, PoolBuilder, Process, ProcessBuilder, Queue, QueueBuilder, Semaphore,
    SemaphoreGuard, StartMethod, SyncError, TaskOptions, Value, ValueGuard, WaitFor, WithPositions,
    as_completed, default_chunksize, describe_exitcode, wait,
};
pub use pool_macros::job;
pub use pool_worker::protocol::ENV_DESCRIBE_JOBS;
pub use pool_worker::{Job, JobEntry};

/// Serves jobs and exits if this process was started as a worker; returns at once
/// otherwise. Call it first thing in `main`, before anything with side effects.
pub fn init() {
    pool_worker::serve_if_worker();
}

/// Makes a test binary usable as its own worker executable.
///
/// A test harness owns `main`, so [`init`] cannot run first. Invoke this macro once at
/// the root of the test crate: it defines an ignored test that serves as the worker
/// entry, and pools built in this binary start it with the arguments that run only
/// that test. (Its standard output is discarded: the harness prints there.)
///
/// Without it, a pool in a test binary cannot start workers, and its error says to add
/// this macro.
///
/// ```ignore
/// procpool::test_harness!();
///
/// #[procpool::job]
/// fn square(x: u64) -> u64 { x * x }
///
/// #[test]
/// fn squares_in_workers() {
///     let pool = procpool::Pool::builder().processes(2).build().unwrap();
///     assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
/// }
/// ```
#[macro_export]
macro_rules! test_harness {
    () => {
        #[test]
        #[ignore = "procpool worker entry: runs only when a pool starts this binary"]
        fn __procpool_worker_entry() {
            $crate::init();
        }

        $crate::__private::inventory::submit! {
            $crate::__private::TestHarness { module_path: ::core::module_path!() }
        }
    };
}

/// The README's examples, compiled as doc tests (`cargo test --doc`), so that what a
/// newcomer copies from it builds.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// Used by `#[job]` and [`test_harness!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use pool_core::TestHarness;
    pub use pool_worker::__private::inventory;
}
