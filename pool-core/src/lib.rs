//! The procpool supervisor: it starts worker processes, sends them tasks, collects
//! results, and replaces workers that die; it never runs job code itself.
//!
//! Users reach all of this through the `procpool` facade crate; this crate's map:
//!
//! - [`Pool`] / [`PoolBuilder`]: the pool a caller holds (`map`, `apply_async`,
//!   `imap`, `close`, `join`, `terminate`, ...).
//! - [`AsyncResult`]: one submission's future value (blocking, timed, callback, or
//!   `.await`); [`CancelOnDrop`] cancels its task when dropped unresolved.
//! - [`Imap`]: the lazy, bounded streaming iterator of `imap` / `imap_unordered`.
//! - [`wait`] and [`as_completed`]: `concurrent.futures`' helpers for many results.
//! - [`JobError`] (why a task has no value) and [`Error`] (why a pool operation
//!   failed).
//!
//! - [`StartMethod`]: `Spawn` (exec), `Fork` (fork the supervisor) or `ForkServer`.
//! - [`TaskOptions`]: per-task time limit and retries.
//! - [`Process`]: one job in a process of its own (`multiprocessing.Process`).
//! - [`Queue`], [`JoinableQueue`], [`Pipe`], [`Event`], [`Lock`], [`Semaphore`],
//!   [`Value`], [`Array`] (`sync`): primitives in shared memory that processes receive
//!   as job arguments; [`SyncError`] says why an operation on one did not complete.
//!
//! Inside, one supervisor thread per pool runs an event loop over the workers'
//! streams (`supervisor`), with a small non-blocking framing layer (`conn`), process
//! launching (`launch`), the fork server's client (`zygote`), captured stderr
//! (`stderr`), and this crate's only `unsafe` code in `sys`: what a spawned worker does
//! between fork and exec (the fork-child setup shared with `Fork` and the fork server
//! lives in `pool_worker::os`), and `sys::shm`, the shared memory, futexes and robust
//! lock under the `sync` primitives. The promise it keeps: every submitted task resolves
//! exactly once, with its value or a typed error; a dead worker fails only the task it
//! was running; no worker outlives the pool or its process.

// Unsafe code lives in `sys` alone, where each block says why it holds.
#![deny(unsafe_code)]

mod cancel_on_drop;
mod completion;
mod conn;
mod error;
mod forker;
mod imap;
mod inflight;
mod launch;
mod pool;
mod process;
mod result;
mod resume;
mod stderr;
mod supervisor;
mod sync;
#[allow(unsafe_code)]
mod sys;
mod wait;
mod zygote;

pub use cancel_on_drop::CancelOnDrop;
pub use error::{Error, JobError, LostCause, TaskOptions, describe_exitcode};
pub use imap::{Imap, WithPositions};
pub use launch::StartMethod;
pub use pool::{JobInfo, Pool, PoolBuilder, TEST_ENTRY, TestHarness, default_chunksize};
pub use pool_worker::Codec;
pub use process::{Process, ProcessBuilder};
pub use result::AsyncResult;
pub use sync::{
    Array, ArrayGuard, DEFAULT_BUFFER_BYTES, Event, Integer, JoinableQueue, Lock, LockGuard, Pipe,
    Plain, Queue, QueueBuilder, Semaphore, SemaphoreGuard, SyncError, Value, ValueGuard,
};
pub use wait::{AsCompleted, WaitFor, as_completed, wait};
