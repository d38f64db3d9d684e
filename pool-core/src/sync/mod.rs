//! Primitives shared by processes, after `multiprocessing`'s: [`Queue`] and
//! [`JoinableQueue`], [`Pipe`], [`Event`], [`Lock`], [`Semaphore`], [`Value`] and
//! [`Array`].
//!
//! Each is a handle to a region of shared memory (a memfd). A handle is `Serialize`,
//! so it goes to another process as (part of) a job's argument; the receiver opens the
//! same region, through `/proc/<sender>/fd`, which is why the sender must still hold
//! its handle when the receiver decodes it (a task's or a `Process`'s argument is held
//! for you until the task resolves or the process is reaped). The memory lives while
//! any process holds it and goes away with the last one, however processes end.
//!
//! Waits never hang on a dead peer: a lock whose holder died is taken over, and a
//! queue, pipe, event or semaphore whose other side is gone reports
//! [`SyncError::Disconnected`] (the holder table in `holders`).
//!
//! Linux only (memfd, futex, `/proc`).

mod channel;
mod event;
mod holders;
mod lock;
mod pipe;
mod queue;
mod region;
mod semaphore;
mod value;

use std::sync::atomic::AtomicU32;
use std::time::Instant;

pub use event::Event;
pub(crate) use holders::{Hold, collect_holds};
pub use lock::{Lock, LockGuard};
pub use pipe::Pipe;
pub use queue::{DEFAULT_BUFFER_BYTES, JoinableQueue, Queue, QueueBuilder};
pub use semaphore::{Semaphore, SemaphoreGuard};
pub use value::{Array, ArrayGuard, Integer, Plain, Value, ValueGuard};

use crate::sys::shm::{Wake, futex_wait};

/// Why an operation on a shared primitive did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The timeout passed first.
    #[error("timed out")]
    Timeout,
    /// `try_get` / `try_recv` found nothing waiting.
    #[error("nothing is waiting")]
    Empty,
    /// `try_put` found the queue full.
    #[error("the queue is full")]
    Full,
    /// The other side is gone: no live handle is left that could send what this end
    /// waits for, or take what it sends.
    #[error("the other side is gone (no live process holds it)")]
    Disconnected,
    /// An encoded item does not fit the buffer.
    #[error("an item of {size} bytes does not fit a buffer that takes {max}")]
    TooLarge { size: usize, max: usize },
    /// An item did not encode or decode.
    #[error("codec error: {0}")]
    Codec(String),
    /// A bounded semaphore was released above its bound.
    #[error("released above the semaphore's bound")]
    Overflow,
    /// `task_done` was called more often than items were taken.
    #[error("task_done called more often than items were taken")]
    TaskDone,
    /// More processes than the holder table has room for hold the queue or pipe.
    #[error("more than {max} processes hold this queue or pipe")]
    TooManyHolders { max: usize },
    /// The shared memory holds something no procpool process wrote.
    #[error("shared memory is corrupt: {0}")]
    Corrupt(String),
    /// Creating the shared memory failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl PartialEq for SyncError {
    /// Same variant and fields; `Io` errors compare by kind.
    fn eq(&self, other: &SyncError) -> bool {
        use SyncError::*;
        match (self, other) {
            (TooLarge { size: a, max: b }, TooLarge { size: c, max: d }) => a == c && b == d,
            (Codec(a), Codec(b)) | (Corrupt(a), Corrupt(b)) => a == b,
            (TooManyHolders { max: a }, TooManyHolders { max: b }) => a == b,
            (Io(a), Io(b)) => a.kind() == b.kind(),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// Sleeps while `word` holds `expected`, until woken or `deadline`. Returns false if
/// the deadline passed; true otherwise (woken, changed, or spurious: re-check).
pub(crate) fn sleep(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            Some(left)
        }
    };
    futex_wait(word, expected, timeout) == Wake::Woken || deadline.is_none()
}
