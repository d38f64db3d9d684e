//! Who holds a region: the table that lets a wait tell "nothing yet" from "nothing
//! ever" (queues, pipes, events, semaphores).
//!
//! Each live handle ([`Party`]) is counted in a slot per (process, end). A process that
//! dies keeps its slot, but its pid no longer names a live process, so it counts for
//! nothing; its slot is reused. A handle in flight to another process (a task's or a
//! `Process`'s argument) is counted by a [`Hold`] from the moment it is serialized
//! until the receiver opens its copy (which ends the hold) or, if it never does, until
//! the task resolves or the process is reaped (when the `Hold` drops).
//!
//! Layout from [`AT`]: the last hold token (u32, then padding to 16 bytes), then
//! [`MAX_HOLDERS`] slots of (pid, end, count, unused), then `MAX_HOLDS` holds of
//! (token, sender pid, end, unused). A region's own data after [`END`] or before
//! [`AT`]. Every change happens under the region's lock.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::SyncError;
use super::region::Wire;
use crate::sys::shm::{Held, Mapping, process_alive};

/// Where the table starts in a region.
pub(crate) const AT: usize = 96;
const LAST_TOKEN: usize = AT;
const SLOTS_AT: usize = AT + 16;
const SLOT_BYTES: usize = 16;
/// Processes (per end) that can hold handles at once; slots of dead processes are
/// reused.
pub(crate) const MAX_HOLDERS: usize = 128;
const HOLDS_AT: usize = SLOTS_AT + MAX_HOLDERS * SLOT_BYTES;
/// Handles in flight at once; beyond that a sent handle is simply not held.
const MAX_HOLDS: usize = 64;
/// Where the table ends.
pub(crate) const END: usize = HOLDS_AT + MAX_HOLDS * SLOT_BYTES;
/// How often a blocked waiter looks whether its peers are still alive.
pub(crate) const PEER_TICK: Duration = Duration::from_millis(50);
/// How long releasing an in-flight hold waits for the region's lock.
const HOLD_RELEASE_WAIT: Duration = Duration::from_millis(100);

/// Who is on the other side of a wait.
#[derive(Clone, Copy)]
pub(crate) enum Peer {
    /// Any handle of end 0 other than the caller's own (queues, events, semaphores).
    AnyOther,
    /// Any handle of this end (the far end of a pipe).
    End(u32),
}

fn words(map: &Mapping, at: usize) -> (&AtomicU32, &AtomicU32, &AtomicU32) {
    (map.u32_at(at), map.u32_at(at + 4), map.u32_at(at + 8))
}

fn slot(map: &Mapping, i: usize) -> (&AtomicU32, &AtomicU32, &AtomicU32) {
    words(map, SLOTS_AT + i * SLOT_BYTES)
}

fn hold_slot(map: &Mapping, i: usize) -> (&AtomicU32, &AtomicU32, &AtomicU32) {
    words(map, HOLDS_AT + i * SLOT_BYTES)
}

/// Counts one more handle of `end` in this process; with a `hold` token, that handle
/// is the copy the hold stood for, and the hold ends.
fn register(map: &Mapping, end: u32, hold: u32) -> Result<(), SyncError> {
    let _held = map.lock();
    if hold != 0 {
        release_hold(map, hold);
    }
    let me = std::process::id();
    let mut free = None;
    for i in 0..MAX_HOLDERS {
        let (pid, e, count) = slot(map, i);
        let (p, c) = (pid.load(Ordering::SeqCst), count.load(Ordering::SeqCst));
        if p == me && e.load(Ordering::SeqCst) == end {
            // Shared memory: another process may have left any count here.
            count.store(c.saturating_add(1), Ordering::SeqCst);
            return Ok(());
        }
        if free.is_none() && (p == 0 || c == 0) {
            free = Some(i);
        }
    }
    let i = match free {
        Some(i) => i,
        None => (0..MAX_HOLDERS)
            .find(|&i| !process_alive(slot(map, i).0.load(Ordering::SeqCst)))
            .ok_or(SyncError::TooManyHolders { max: MAX_HOLDERS })?,
    };
    let (pid, e, count) = slot(map, i);
    pid.store(me, Ordering::SeqCst);
    e.store(end, Ordering::SeqCst);
    count.store(1, Ordering::SeqCst);
    Ok(())
}

/// Counts one handle of `end` in this process less.
fn deregister(map: &Mapping, end: u32) {
    let _held = map.lock();
    let me = std::process::id();
    for i in 0..MAX_HOLDERS {
        let (pid, e, count) = slot(map, i);
        if pid.load(Ordering::SeqCst) == me && e.load(Ordering::SeqCst) == end {
            let c = count.load(Ordering::SeqCst);
            count.store(c.saturating_sub(1), Ordering::SeqCst);
            return;
        }
    }
}

/// Records a handle of `end` in flight from this process; its token, or 0 when the
/// table is full (then the copy is not held).
fn add_hold(map: &Mapping, end: u32) -> u32 {
    let _held = map.lock();
    let free = (0..MAX_HOLDS).find(|&i| {
        let (token, pid, _) = hold_slot(map, i);
        token.load(Ordering::SeqCst) == 0 || !process_alive(pid.load(Ordering::SeqCst))
    });
    let Some(i) = free else {
        return 0;
    };
    let last = map.u32_at(LAST_TOKEN);
    let next = match last.load(Ordering::SeqCst).wrapping_add(1) {
        0 => 1,
        n => n,
    };
    last.store(next, Ordering::SeqCst);
    let (token, pid, e) = hold_slot(map, i);
    pid.store(std::process::id(), Ordering::SeqCst);
    e.store(end, Ordering::SeqCst);
    token.store(next, Ordering::SeqCst);
    next
}

/// Ends the hold `token` if it is still there; with the lock held.
fn release_hold(map: &Mapping, token: u32) {
    for i in 0..MAX_HOLDS {
        let (t, _, _) = hold_slot(map, i);
        if t.load(Ordering::SeqCst) == token {
            t.store(0, Ordering::SeqCst);
        }
    }
}

/// Whether some handle other than the caller's could still act on the region: a live
/// process's handle of the end, or a copy in flight from a live process. Without
/// `check_processes`, every counted handle is taken as alive (no system call: a
/// dropped handle is seen, a killed process is not).
pub(crate) fn peer_alive(
    map: &Mapping,
    _held: &Held<'_>,
    peer: Peer,
    check_processes: bool,
) -> bool {
    let me = std::process::id();
    let (end, mine_excluded) = match peer {
        Peer::AnyOther => (0, 1),
        Peer::End(end) => (end, 0),
    };
    let alive = |pid: u32| pid == me || !check_processes || process_alive(pid);
    let mut live = 0u64;
    for i in 0..MAX_HOLDERS {
        let (pid, e, count) = slot(map, i);
        let c = count.load(Ordering::SeqCst);
        if c > 0 && e.load(Ordering::SeqCst) == end && alive(pid.load(Ordering::SeqCst)) {
            live += u64::from(c);
            if live > mine_excluded {
                return true;
            }
        }
    }
    (0..MAX_HOLDS).any(|i| {
        let (token, pid, e) = hold_slot(map, i);
        token.load(Ordering::SeqCst) != 0
            && e.load(Ordering::SeqCst) == end
            && alive(pid.load(Ordering::SeqCst))
    })
}

/// When a waiter with `deadline` next wakes to look at its peers.
pub(crate) fn next_look(deadline: Option<Instant>) -> Instant {
    let tick = Instant::now() + PEER_TICK;
    deadline.map_or(tick, |d| d.min(tick))
}

/// One handle of a region with holders: counted in the table while it lives. `wake`
/// rouses the region's sleepers when a party leaves, so they see whether their peer
/// is gone at once.
pub(crate) struct Party {
    map: Arc<Mapping>,
    end: u32,
    wake: fn(&Mapping),
}

impl Party {
    /// Joins `map` as a handle of `end`; `hold` is the token of the in-flight copy this
    /// handle was opened from (0 for none).
    pub fn join(
        map: Arc<Mapping>,
        end: u32,
        hold: u32,
        wake: fn(&Mapping),
    ) -> Result<Party, SyncError> {
        register(&map, end, hold)?;
        Ok(Party { map, end, wake })
    }

    pub fn map(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// Whether no other handle is left alive (any end 0 handle but this one), taking
    /// the region's lock before `deadline`: `None` if it did not come in time (a
    /// stopped process holds it).
    pub fn alone(&self, deadline: Option<Instant>) -> Option<bool> {
        let held = match deadline {
            None => self.map.lock(),
            Some(d) => self.map.lock_until(d)?,
        };
        Some(!peer_alive(&self.map, &held, Peer::AnyOther, true))
    }

    /// This handle as it travels: held in flight if a [`collect_holds`] runs.
    pub fn wire(&self) -> Wire {
        let token = HOLDS.with(|h| {
            let mut holds = h.borrow_mut();
            let holds = holds.as_mut()?;
            let token = add_hold(&self.map, self.end);
            (token != 0).then(|| {
                holds.push(Hold {
                    map: self.map.clone(),
                    token,
                    wake: self.wake,
                });
                token
            })
        });
        Wire::of(&self.map, token.unwrap_or(0))
    }
}

impl Clone for Party {
    /// Another handle of the same end.
    ///
    /// # Panics
    /// If [`MAX_HOLDERS`] other processes already hold the region.
    fn clone(&self) -> Self {
        match Party::join(self.map.clone(), self.end, 0, self.wake) {
            Ok(party) => party,
            Err(e) => panic!("cannot clone a handle: {e}"),
        }
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        deregister(&self.map, self.end);
        (self.wake)(&self.map);
    }
}

thread_local! {
    /// Holds taken for handles serialized while [`collect_holds`] runs on this thread.
    static HOLDS: RefCell<Option<Vec<Hold>>> = const { RefCell::new(None) };
}

/// A handle in flight to another process, counted as live until the receiver opens
/// its copy or this guard drops (see the module doc).
pub(crate) struct Hold {
    map: Arc<Mapping>,
    token: u32,
    wake: fn(&Mapping),
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Holds are dropped on the pool's supervisor thread (with their task), which
        // must not wait long on a lock that a stopped (not dead) process holds. If the
        // lock does not come in time the hold stays: it ends with this process.
        let Some(held) = self.map.lock_until(Instant::now() + HOLD_RELEASE_WAIT) else {
            tracing::warn!(
                token = self.token,
                "a region's lock stayed held; its hold stays"
            );
            return;
        };
        release_hold(&self.map, self.token);
        drop(held);
        (self.wake)(&self.map);
    }
}

/// Runs `f` (which serializes arguments) and returns, with its result, a hold on every
/// handle with holders that it serialized.
pub(crate) fn collect_holds<R>(f: impl FnOnce() -> R) -> (R, Vec<Hold>) {
    let previous = HOLDS.with(|h| h.replace(Some(Vec::new())));
    let r = f();
    let holds = HOLDS.with(|h| h.replace(previous)).unwrap_or_default();
    (r, holds)
}
