//! The shared-memory message channel behind [`Queue`](super::Queue) and
//! [`Pipe`](super::Pipe): one or two lanes, each a ring of length-prefixed messages,
//! and a table of which processes hold handles to which end.
//!
//! Layout after the region header:
//!
//! ```text
//! 16 ring size (bytes, a power of two)   20 lanes (1 or 2)   24 capacity (items, 0: none)
//! 32 lane 0, 64 lane 1: seq u32, sleepers u32, put u64, get u64, done u32
//! 96 the holder table (`holders`)
//! 4096 ring of lane 0, then ring of lane 1
//! ```
//!
//! Every change happens under the region's lock (`sys::shm`), and each operation
//! commits with one 64-bit store (`put` = tail position and items put; `get` = head
//! position and items taken), so a process killed inside `put` or `get` leaves the
//! channel as it was before or after, never between; the next locker takes the lock
//! over from the dead holder. Waiters sleep on the lane's `seq`, which every change
//! bumps, and wake at least every 50 ms to see whether a peer died.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::SyncError;
use super::holders::{self, PEER_TICK, Peer, peer_alive};
use super::region::{self, FIELDS, Kind};
use crate::sys::shm::{Held, Mapping, futex_wake};

const RING_SIZE: usize = FIELDS;
const LANES: usize = FIELDS + 4;
const CAPACITY: usize = FIELDS + 8;
const LANE0: usize = 32;
const LANE_BYTES: usize = 32;
const RINGS_AT: usize = 4096;
const _: () = assert!(super::holders::END <= RINGS_AT);
const LEN_PREFIX: usize = 4;
/// How long a waiter looks for a change before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// A view of a channel region (the handles that count in its holder table are
/// `holders::Party` values beside it).
pub(crate) struct Channel {
    map: Arc<Mapping>,
    ring: u32,
    /// When this handle last looked whether its peers' processes are alive.
    checked: Cell<Option<Instant>>,
    /// The far end of this pipe was found gone; it cannot come back (only a holder of
    /// that end could make another).
    far_end_gone: Cell<bool>,
}

impl Channel {
    /// A new channel with `lanes` rings of at least `ring_bytes` each, holding at most
    /// `capacity` items per lane (0: no limit but the ring).
    pub fn create(
        kind: Kind,
        tag: u32,
        lanes: u32,
        ring_bytes: usize,
        capacity: u32,
    ) -> Result<Channel, SyncError> {
        let ring = ring_bytes.clamp(64, 1 << 31).next_power_of_two();
        let map = region::create(kind, tag, RINGS_AT + lanes as usize * ring)?;
        map.u32_at(RING_SIZE).store(ring as u32, Ordering::SeqCst);
        map.u32_at(LANES).store(lanes, Ordering::SeqCst);
        map.u32_at(CAPACITY).store(capacity, Ordering::SeqCst);
        Ok(Channel::view(map, ring as u32))
    }

    fn view(map: Arc<Mapping>, ring: u32) -> Channel {
        Channel {
            map,
            ring,
            checked: Cell::new(None),
            far_end_gone: Cell::new(false),
        }
    }

    /// A channel view of a region another process sent, its layout checked against
    /// the region's size (the header is shared memory: never trusted blindly).
    pub fn open(map: Arc<Mapping>, lanes: u32) -> Result<Channel, String> {
        let ring = map.u32_at(RING_SIZE).load(Ordering::SeqCst);
        let stored_lanes = map.u32_at(LANES).load(Ordering::SeqCst);
        if stored_lanes != lanes
            || !ring.is_power_of_two()
            || RINGS_AT + lanes as usize * ring as usize != map.len()
        {
            return Err(format!(
                "channel header (ring {ring}, lanes {stored_lanes}) does not match its region of {} bytes",
                map.len()
            ));
        }
        Ok(Channel::view(map, ring))
    }

    fn seq(&self, lane: u32) -> &AtomicU32 {
        self.map.u32_at(lane_at(lane))
    }

    fn sleepers(&self, lane: u32) -> &AtomicU32 {
        self.map.u32_at(lane_at(lane) + 4)
    }

    fn put_word(&self, lane: u32) -> &AtomicU64 {
        self.map.u64_at(lane_at(lane) + 8)
    }

    fn get_word(&self, lane: u32) -> &AtomicU64 {
        self.map.u64_at(lane_at(lane) + 16)
    }

    fn done(&self, lane: u32) -> &AtomicU32 {
        self.map.u32_at(lane_at(lane) + 24)
    }

    fn notify(&self, lane: u32) {
        notify(&self.map, lane);
    }

    /// Whether the other side is gone. Dropped handles are seen at once; whether the
    /// processes holding the rest are alive (a system call or two each) is looked at
    /// no more than once per tick, which is also how often a waiter wakes.
    fn peer_gone(&self, held: &Held<'_>, peer: Peer) -> bool {
        if self.far_end_gone.get() {
            return true;
        }
        let now = Instant::now();
        let check = self
            .checked
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= PEER_TICK);
        if check {
            self.checked.set(Some(now));
        }
        let gone = !peer_alive(&self.map, held, peer, check);
        if gone && matches!(peer, Peer::End(_)) {
            self.far_end_gone.set(true);
        }
        gone
    }

    /// Sleeps until the lane changes, `deadline`, or the next peer check.
    fn sleep(&self, lane: u32, seq: u32, deadline: Option<Instant>) -> Result<(), SyncError> {
        // A message often comes within microseconds: look for a change, letting other
        // threads run, before going to sleep.
        let spin_until = Instant::now() + SPIN;
        while self.seq(lane).load(Ordering::SeqCst) == seq
            && Instant::now() < spin_until.min(deadline.unwrap_or(spin_until))
        {
            std::thread::yield_now();
        }
        let until = holders::next_look(deadline);
        let sleepers = self.sleepers(lane);
        sleepers.fetch_add(1, Ordering::SeqCst);
        super::sleep(self.seq(lane), seq, Some(until));
        sleepers.fetch_sub(1, Ordering::SeqCst);
        match deadline {
            Some(d) if Instant::now() >= d => Err(SyncError::Timeout),
            _ => Ok(()),
        }
    }

    fn lock_until(&self, deadline: Option<Instant>) -> Result<Held<'_>, SyncError> {
        match deadline {
            None => Ok(self.map.lock()),
            Some(d) => self.map.lock_until(d).ok_or(SyncError::Timeout),
        }
    }

    /// Positions and counts of a lane, validated: `(tail, puts, head, gets)`.
    fn state(&self, lane: u32) -> Result<(u32, u32, u32, u32), SyncError> {
        let put = self.put_word(lane).load(Ordering::SeqCst);
        let get = self.get_word(lane).load(Ordering::SeqCst);
        let (tail, puts, head, gets) = (
            put as u32,
            (put >> 32) as u32,
            get as u32,
            (get >> 32) as u32,
        );
        if tail.wrapping_sub(head) > self.ring {
            return Err(SyncError::Corrupt(format!(
                "ring holds {} bytes in {}",
                tail.wrapping_sub(head),
                self.ring
            )));
        }
        Ok((tail, puts, head, gets))
    }

    fn ring_at(&self, lane: u32, pos: u32) -> (usize, usize) {
        let base = RINGS_AT + lane as usize * self.ring as usize;
        let off = (pos % self.ring) as usize;
        (base, off)
    }

    fn copy_in(&self, held: &Held<'_>, lane: u32, pos: u32, bytes: &[u8]) {
        let (base, off) = self.ring_at(lane, pos);
        let first = bytes.len().min(self.ring as usize - off);
        self.map.write(held, base + off, &bytes[..first]);
        self.map.write(held, base, &bytes[first..]);
    }

    fn copy_out(&self, held: &Held<'_>, lane: u32, pos: u32, bytes: &mut [u8]) {
        let (base, off) = self.ring_at(lane, pos);
        let first = bytes.len().min(self.ring as usize - off);
        self.map.read(held, base + off, &mut bytes[..first]);
        self.map.read(held, base, &mut bytes[first..]);
    }

    /// The largest message a lane takes.
    pub fn max_message(&self) -> usize {
        self.ring as usize - LEN_PREFIX
    }

    /// Appends `message` to `lane`, waiting for room until `deadline`.
    pub fn send(
        &self,
        lane: u32,
        message: &[u8],
        deadline: Option<Instant>,
        peer: Peer,
    ) -> Result<(), SyncError> {
        let need = LEN_PREFIX + message.len();
        if message.len() > self.max_message() {
            return Err(SyncError::TooLarge {
                size: message.len(),
                max: self.max_message(),
            });
        }
        let capacity = self.map.u32_at(CAPACITY).load(Ordering::SeqCst);
        let waits = waits(deadline, peer);
        loop {
            let held = self.lock_until(deadline)?;
            // A pipe end does not send into the void: Python raises BrokenPipeError.
            if matches!(peer, Peer::End(_)) && self.peer_gone(&held, peer) {
                return Err(SyncError::Disconnected);
            }
            let (tail, puts, head, gets) = self.state(lane)?;
            let free = self.ring - tail.wrapping_sub(head);
            let items = puts.wrapping_sub(gets);
            if free as usize >= need && (capacity == 0 || items < capacity) {
                self.copy_in(&held, lane, tail, &(message.len() as u32).to_le_bytes());
                self.copy_in(&held, lane, tail.wrapping_add(LEN_PREFIX as u32), message);
                let tail = tail.wrapping_add(need as u32);
                let puts = puts.wrapping_add(1);
                self.put_word(lane)
                    .store(u64::from(tail) | (u64::from(puts) << 32), Ordering::SeqCst);
                drop(held);
                self.notify(lane);
                return Ok(());
            }
            if waits && self.peer_gone(&held, peer) {
                return Err(SyncError::Disconnected);
            }
            let seq = self.seq(lane).load(Ordering::SeqCst);
            drop(held);
            self.sleep(lane, seq, deadline)?;
        }
    }

    /// Takes the oldest message of `lane`, waiting for one until `deadline`.
    pub fn recv(
        &self,
        lane: u32,
        deadline: Option<Instant>,
        peer: Peer,
    ) -> Result<Vec<u8>, SyncError> {
        let waits = waits(deadline, peer);
        loop {
            let held = self.lock_until(deadline)?;
            let (tail, puts, head, gets) = self.state(lane)?;
            if puts != gets {
                let used = tail.wrapping_sub(head) as usize;
                let mut prefix = [0u8; LEN_PREFIX];
                self.copy_out(&held, lane, head, &mut prefix);
                let len = u32::from_le_bytes(prefix) as usize;
                if LEN_PREFIX + len > used {
                    return Err(SyncError::Corrupt(format!(
                        "a message of {len} bytes in {used} bytes of ring"
                    )));
                }
                let mut message = vec![0u8; len];
                self.copy_out(
                    &held,
                    lane,
                    head.wrapping_add(LEN_PREFIX as u32),
                    &mut message,
                );
                let head = head.wrapping_add((LEN_PREFIX + len) as u32);
                let gets = gets.wrapping_add(1);
                self.get_word(lane)
                    .store(u64::from(head) | (u64::from(gets) << 32), Ordering::SeqCst);
                drop(held);
                self.notify(lane);
                return Ok(message);
            }
            if waits && self.peer_gone(&held, peer) {
                return Err(SyncError::Disconnected);
            }
            let seq = self.seq(lane).load(Ordering::SeqCst);
            drop(held);
            self.sleep(lane, seq, deadline)?;
        }
    }

    /// Messages waiting in `lane`.
    pub fn len(&self, lane: u32) -> usize {
        let put = self.put_word(lane).load(Ordering::SeqCst);
        let get = self.get_word(lane).load(Ordering::SeqCst);
        ((put >> 32) as u32).wrapping_sub((get >> 32) as u32) as usize
    }

    /// Marks one taken item of `lane` as processed.
    pub fn task_done(&self, lane: u32) -> Result<(), SyncError> {
        {
            let _held = self.map.lock();
            let (_, _, _, gets) = self.state(lane)?;
            let done = self.done(lane).load(Ordering::SeqCst);
            if done == gets {
                return Err(SyncError::TaskDone);
            }
            self.done(lane)
                .store(done.wrapping_add(1), Ordering::SeqCst);
        }
        self.notify(lane);
        Ok(())
    }

    /// Waits until every item put in `lane` was marked done, until `deadline`.
    pub fn join(&self, lane: u32, deadline: Option<Instant>, peer: Peer) -> Result<(), SyncError> {
        loop {
            let held = self.lock_until(deadline)?;
            let (_, puts, _, _) = self.state(lane)?;
            if self.done(lane).load(Ordering::SeqCst) == puts {
                return Ok(());
            }
            if self.peer_gone(&held, peer) {
                return Err(SyncError::Disconnected);
            }
            let seq = self.seq(lane).load(Ordering::SeqCst);
            drop(held);
            self.sleep(lane, seq, deadline)?;
        }
    }
}

/// Whether an operation checks for a gone peer before it waits: always on a pipe
/// (its peer is another party), and on a queue unless it would not wait at all (a
/// queue's own handle can still take or add: `try_*` says `Empty` or `Full`).
fn waits(deadline: Option<Instant>, peer: Peer) -> bool {
    matches!(peer, Peer::End(_)) || deadline.is_none_or(|d| d > Instant::now())
}

/// Where lane `lane`'s words start.
fn lane_at(lane: u32) -> usize {
    LANE0 + lane as usize * LANE_BYTES
}

/// Bumps `lane`'s change count and wakes its sleepers, in any process.
fn notify(map: &Mapping, lane: u32) {
    let at = lane_at(lane);
    let seq = map.u32_at(at);
    seq.fetch_add(1, Ordering::SeqCst);
    if map.u32_at(at + 4).load(Ordering::SeqCst) > 0 {
        futex_wake(seq, i32::MAX);
    }
}

/// Wakes every sleeper of a channel region (a party left: waiters look whether their
/// peer is gone).
pub(crate) fn wake_all(map: &Mapping) {
    for lane in 0..map.u32_at(LANES).load(Ordering::SeqCst).min(2) {
        notify(map, lane);
    }
}

impl Channel {
    /// Another view of the same channel.
    pub fn share(&self) -> Channel {
        Channel::view(self.map.clone(), self.ring)
    }

    pub fn map(&self) -> &Arc<Mapping> {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::super::holders::Party;
    use super::*;

    fn channel(ring: usize, capacity: u32) -> Channel {
        let c = Channel::create(Kind::Queue, 0, 1, ring, capacity).expect("region");
        // Two handles, so waits are not disconnected.
        for _ in 0..2 {
            let party = Party::join(c.map().clone(), 0, 0, wake_all).expect("register");
            std::mem::forget(party);
        }
        c
    }

    #[test]
    fn messages_wrap_around_the_ring_intact() {
        let c = channel(256, 0);
        let now = || Some(Instant::now());
        for round in 0..500usize {
            let message: Vec<u8> = (0..round % 97).map(|i| (i + round) as u8).collect();
            c.send(0, &message, now(), Peer::AnyOther).expect("room");
            if round % 3 == 0 {
                c.send(0, b"x", now(), Peer::AnyOther).expect("room");
                assert_eq!(c.recv(0, now(), Peer::AnyOther).expect("one"), message);
                assert_eq!(c.recv(0, now(), Peer::AnyOther).expect("one"), b"x");
            } else {
                assert_eq!(c.recv(0, now(), Peer::AnyOther).expect("one"), message);
            }
        }
        assert_eq!(c.len(0), 0);
    }

    #[test]
    fn a_full_ring_or_capacity_times_out_and_a_huge_message_is_refused() {
        let c = channel(64, 2);
        let soon = || Some(Instant::now() + Duration::from_millis(5));
        c.send(0, b"a", soon(), Peer::AnyOther).expect("room");
        c.send(0, b"b", soon(), Peer::AnyOther).expect("room");
        assert_eq!(
            c.send(0, b"c", soon(), Peer::AnyOther),
            Err(SyncError::Timeout)
        );
        assert_eq!(
            c.send(0, &[0; 61], soon(), Peer::AnyOther),
            Err(SyncError::TooLarge { size: 61, max: 60 })
        );
        let d = channel(64, 0);
        d.send(0, &[1; 40], soon(), Peer::AnyOther).expect("room");
        assert_eq!(
            d.send(0, &[2; 40], soon(), Peer::AnyOther),
            Err(SyncError::Timeout)
        );
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_a_wild_read() {
        let c = channel(64, 0);
        // A message claiming more bytes than the ring holds.
        c.send(0, b"abc", None, Peer::AnyOther).expect("room");
        let (base, off) = c.ring_at(0, 0);
        let held = c.map.lock();
        c.map.write(&held, base + off, &1000u32.to_le_bytes());
        drop(held);
        assert!(matches!(
            c.recv(0, None, Peer::AnyOther),
            Err(SyncError::Corrupt(_))
        ));
        // Positions further apart than the ring.
        c.put_word(0).store(1 << 20, Ordering::SeqCst);
        assert!(matches!(
            c.recv(0, None, Peer::AnyOther),
            Err(SyncError::Corrupt(_))
        ));
    }
}
