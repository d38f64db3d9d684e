//! [`Event`]: a flag that processes set, clear and wait for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::SyncError;
use super::region::{self, DATA, Kind};
use crate::sys::shm::{Mapping, futex_wake};

/// A flag shared by processes, like `multiprocessing.Event`: `wait` blocks until some
/// process calls `set`.
///
/// A handle: clones and copies sent to other processes all refer to the same flag.
///
/// ```
/// let ready = procpool::Event::new()?;
/// assert!(!ready.wait_timeout(std::time::Duration::from_millis(1)));
/// ready.set();
/// ready.wait();
/// assert!(ready.is_set());
/// # Ok::<(), procpool::SyncError>(())
/// ```
#[derive(Clone)]
pub struct Event {
    map: Arc<Mapping>,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, SyncError> {
        Ok(Event {
            map: region::create(Kind::Event, 0, DATA + 8)?,
        })
    }

    /// Sets the flag and wakes every waiter, in every process.
    pub fn set(&self) {
        let flag = self.map.u32_at(DATA);
        flag.store(1, Ordering::SeqCst);
        futex_wake(flag, i32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.map.u32_at(DATA).store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.map.u32_at(DATA).load(Ordering::SeqCst) == 1
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        while !self.is_set() {
            super::sleep(self.map.u32_at(DATA), 0, None);
        }
    }

    /// Waits until the flag is set or `timeout` passes; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_set() {
            if !super::sleep(self.map.u32_at(DATA), 0, Some(deadline)) {
                return self.is_set();
            }
        }
        true
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

region::serde_by_region!(Event, Kind::Event);
