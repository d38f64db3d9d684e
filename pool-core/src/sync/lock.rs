//! [`Lock`]: a mutual-exclusion lock shared by processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SyncError;
use super::region::{self, DATA, Kind};
use crate::sys::shm::{Held, Mapping};

/// A lock shared by processes, like `multiprocessing.Lock`, but guard-based: it is
/// released when the [`LockGuard`] drops, also while a panic unwinds.
///
/// **If the process holding it dies** (killed, aborted, exited without releasing), the
/// lock does not stay held: the next process waiting for it takes it over within
/// about 50 ms, and that guard's [`LockGuard::previous_owner_died`] names the dead
/// holder, because whatever the lock protected may have been left half-updated.
/// (Python's lock stays held forever in that case.)
///
/// Ownership belongs to a process, not a thread: the lock is not reentrant, and
/// locking it twice from one process without releasing waits forever (or until the
/// timeout of [`Lock::lock_timeout`]).
///
/// A `Lock` is a handle: clones, and copies sent to other processes as job arguments,
/// all refer to the same lock.
///
/// ```
/// let lock = procpool::Lock::new()?;
/// {
///     let _guard = lock.lock();
///     assert!(lock.try_lock().is_none());
/// }
/// assert!(lock.try_lock().is_some());
/// # Ok::<(), procpool::SyncError>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    map: Arc<Mapping>,
}

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Lock, SyncError> {
        Ok(Lock {
            map: region::create(Kind::Lock, 0, DATA)?,
        })
    }

    /// Waits for the lock and takes it.
    pub fn lock(&self) -> LockGuard<'_> {
        LockGuard {
            held: self.map.lock(),
        }
    }

    /// Takes the lock if it is free within `timeout`; [`SyncError::Timeout`] otherwise.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, SyncError> {
        self.map
            .lock_until(Instant::now() + timeout)
            .map(|held| LockGuard { held })
            .ok_or(SyncError::Timeout)
    }

    /// Takes the lock if it is free now.
    pub fn try_lock(&self) -> Option<LockGuard<'_>> {
        self.map
            .lock_until(Instant::now())
            .map(|held| LockGuard { held })
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

/// A held [`Lock`]; dropping it releases the lock.
pub struct LockGuard<'a> {
    held: Held<'a>,
}

impl LockGuard<'_> {
    /// The pid of the process that died holding the lock, when this acquisition took
    /// it over; `None` after an ordinary release. The data the lock protects may be
    /// half-updated when this is `Some`.
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.held.previous_owner_died()
    }
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("previous_owner_died", &self.previous_owner_died())
            .finish()
    }
}

impl serde::Serialize for Lock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        region::serialize(&self.map, s)
    }
}

impl<'de> serde::Deserialize<'de> for Lock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lock {
            map: region::deserialize(d, Kind::Lock, 0)?,
        })
    }
}
