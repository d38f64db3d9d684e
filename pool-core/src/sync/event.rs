//! [`Event`]: a flag that processes set, clear and wait for.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SyncError;
use super::holders::{self, Party};
use super::region::{self, DATA, Kind};
use crate::sys::shm::{Mapping, futex_wake};
use std::sync::atomic::{AtomicU32, Ordering};

/// A flag shared by processes, like `multiprocessing.Event`: `wait` blocks until some
/// process calls `set`.
///
/// A wait does not hang on a setter that is gone: when the flag is clear and no other
/// handle of the event is alive in any process (every other holder dropped it or
/// died), nobody can set it any more, and the wait ends with
/// [`SyncError::Disconnected`], within about 50 ms of the last holder's death.
///
/// A handle: clones and copies sent to other processes all refer to the same flag.
/// Each handle is one party, so it is `Send` but not `Sync`: give each thread a clone.
///
/// ```
/// let ready = procpool::Event::new()?;
/// let setter = ready.clone();
/// assert_eq!(ready.wait_timeout(std::time::Duration::from_millis(1)), Ok(false));
/// setter.set();
/// ready.wait()?;
/// drop(setter);
/// ready.clear();
/// assert_eq!(ready.wait(), Err(procpool::SyncError::Disconnected));
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Event {
    party: Party,
    _not_sync: PhantomData<Cell<()>>,
}

fn flag(map: &Mapping) -> &AtomicU32 {
    map.u32_at(DATA)
}

/// Wakes the waiters (a party left: they look whether a setter is left).
fn wake(map: &Mapping) {
    futex_wake(flag(map), i32::MAX);
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, SyncError> {
        let map = region::create(Kind::Event, 0, holders::END)?;
        Event::join(map, 0)
    }

    fn join(map: std::sync::Arc<Mapping>, hold: u32) -> Result<Event, SyncError> {
        Ok(Event {
            party: Party::join(map, 0, hold, wake)?,
            _not_sync: PhantomData,
        })
    }

    fn flag(&self) -> &AtomicU32 {
        flag(self.party.map())
    }

    /// Sets the flag and wakes every waiter, in every process.
    pub fn set(&self) {
        self.flag().store(1, Ordering::SeqCst);
        futex_wake(self.flag(), i32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::SeqCst) == 1
    }

    /// Waits until the flag is set; [`SyncError::Disconnected`] if nobody is left to
    /// set it.
    pub fn wait(&self) -> Result<(), SyncError> {
        self.wait_until(None).map(|_| ())
    }

    /// Waits until the flag is set or `timeout` passes; whether it is set, or
    /// [`SyncError::Disconnected`] if nobody is left to set it.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool, SyncError> {
        loop {
            if self.is_set() {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            match self.party.alone(deadline) {
                None => return Ok(self.is_set()),
                Some(true) if !self.is_set() => return Err(SyncError::Disconnected),
                _ => {}
            }
            super::sleep(self.flag(), 0, Some(holders::next_look(deadline)));
        }
    }
}

impl Clone for Event {
    /// Another handle to the same flag.
    ///
    /// # Panics
    /// If more than 128 other processes already hold handles to the event.
    fn clone(&self) -> Self {
        Event {
            party: self.party.clone(),
            _not_sync: PhantomData,
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.party.wire().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (map, hold) = region::deserialize_held(d, Kind::Event, 0)?;
        Event::join(map, hold).map_err(D::Error::custom)
    }
}
