//! [`Semaphore`]: a counter of permits shared by processes.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SyncError;
use super::holders::{self, Party};
use super::region::{self, DATA, Kind};
use crate::sys::shm::{Mapping, futex_wake};

const COUNT: usize = DATA;
/// The most permits a bounded semaphore holds; 0 when unbounded.
const BOUND: usize = DATA + 4;
const SLEEPERS: usize = DATA + 8;

/// A semaphore shared by processes, like `multiprocessing.Semaphore` and
/// `BoundedSemaphore`: [`acquire`](Semaphore::acquire) takes a permit and returns a
/// guard that gives it back when dropped (also while a panic unwinds).
///
/// A permit held by a process that dies is lost, as in Python: a semaphore cannot know
/// whether a permit was taken to be given back or to be kept
/// ([`SemaphoreGuard::forget`]). Use [`Lock`](crate::Lock) for mutual exclusion that
/// survives its holder's death. A wait does not hang on holders that are gone: with no
/// permit free and no other handle alive in any process, nobody can release one, and
/// `acquire` ends with [`SyncError::Disconnected`].
///
/// A handle: clones and copies sent to other processes all refer to the same
/// semaphore. Each handle is one party, so it is `Send` but not `Sync`: give each
/// thread a clone.
///
/// ```
/// let slots = procpool::Semaphore::bounded(2)?;
/// let a = slots.acquire()?;
/// let _b = slots.acquire()?;
/// assert!(slots.try_acquire().is_none());
/// drop(a);
/// assert_eq!(slots.value(), 1);
/// assert!(slots.release().is_ok());
/// assert!(slots.release().is_err()); // above its bound of 2
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Semaphore {
    party: Party,
    _not_sync: PhantomData<Cell<()>>,
}

/// Wakes the waiters (a party left: they look whether anyone could release).
fn wake(map: &Mapping) {
    futex_wake(map.u32_at(COUNT), i32::MAX);
}

impl Semaphore {
    /// A semaphore with `permits` permits; `release` may raise it without limit.
    pub fn new(permits: u32) -> Result<Semaphore, SyncError> {
        Semaphore::with_bound(permits, 0)
    }

    /// A semaphore with `permits` permits that `release` may never raise above
    /// `permits` ([`SyncError::Overflow`]), like Python's `BoundedSemaphore`.
    pub fn bounded(permits: u32) -> Result<Semaphore, SyncError> {
        Semaphore::with_bound(permits, permits.max(1))
    }

    fn with_bound(permits: u32, bound: u32) -> Result<Semaphore, SyncError> {
        let map = region::create(Kind::Semaphore, 0, holders::END)?;
        map.u32_at(COUNT).store(permits, Ordering::SeqCst);
        map.u32_at(BOUND).store(bound, Ordering::SeqCst);
        Semaphore::join(map, 0)
    }

    fn join(map: Arc<Mapping>, hold: u32) -> Result<Semaphore, SyncError> {
        Ok(Semaphore {
            party: Party::join(map, 0, hold, wake)?,
            _not_sync: PhantomData,
        })
    }

    fn map(&self) -> &Mapping {
        self.party.map()
    }

    fn count(&self) -> &AtomicU32 {
        self.map().u32_at(COUNT)
    }

    /// Waits for a permit and takes it; [`SyncError::Disconnected`] if none is free
    /// and nobody is left to release one.
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>, SyncError> {
        self.take(None)?;
        Ok(SemaphoreGuard { semaphore: self })
    }

    /// Takes a permit if one is free within `timeout`: [`SyncError::Timeout`]
    /// otherwise, or [`SyncError::Disconnected`] if nobody is left to release one.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>, SyncError> {
        self.take(Some(Instant::now() + timeout))?;
        Ok(SemaphoreGuard { semaphore: self })
    }

    /// Takes a permit if one is free now.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.take(Some(Instant::now()))
            .ok()
            .map(|()| SemaphoreGuard { semaphore: self })
    }

    /// Takes a permit, waiting until `deadline` at most.
    fn take(&self, deadline: Option<Instant>) -> Result<(), SyncError> {
        let count = self.count();
        loop {
            let c = count.load(Ordering::SeqCst);
            if c > 0 {
                if count
                    .compare_exchange(c, c - 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SyncError::Timeout);
            }
            match self.party.alone(deadline) {
                None => return Err(SyncError::Timeout),
                Some(true) if count.load(Ordering::SeqCst) == 0 => {
                    return Err(SyncError::Disconnected);
                }
                _ => {}
            }
            let sleepers = self.map().u32_at(SLEEPERS);
            sleepers.fetch_add(1, Ordering::SeqCst);
            super::sleep(count, 0, Some(holders::next_look(deadline)));
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Adds a permit (given back, or signalled to a waiter that never held one).
    /// [`SyncError::Overflow`] if a bounded semaphore is already at its bound.
    pub fn release(&self) -> Result<(), SyncError> {
        let bound = self.map().u32_at(BOUND).load(Ordering::SeqCst);
        let count = self.count();
        loop {
            let c = count.load(Ordering::SeqCst);
            if (bound != 0 && c >= bound) || c == u32::MAX {
                return Err(SyncError::Overflow);
            }
            if count
                .compare_exchange(c, c + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break;
            }
        }
        if self.map().u32_at(SLEEPERS).load(Ordering::SeqCst) > 0 {
            futex_wake(count, 1);
        }
        Ok(())
    }

    /// Permits free now.
    pub fn value(&self) -> u32 {
        self.count().load(Ordering::SeqCst)
    }
}

/// A permit of a [`Semaphore`], given back when dropped.
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    semaphore: &'a Semaphore,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit taken: it is not given back.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // Giving back a permit that was taken stays within any bound unless someone
        // released more than they took; then there is nothing better to do.
        let _ = self.semaphore.release();
    }
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

impl Clone for Semaphore {
    /// Another handle to the same semaphore.
    ///
    /// # Panics
    /// If more than 128 other processes already hold handles to the semaphore.
    fn clone(&self) -> Self {
        Semaphore {
            party: self.party.clone(),
            _not_sync: PhantomData,
        }
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.party.wire().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (map, hold) = region::deserialize_held(d, Kind::Semaphore, 0)?;
        Semaphore::join(map, hold).map_err(D::Error::custom)
    }
}
