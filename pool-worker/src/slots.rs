//! Start-or-revoke slots: one page of shared memory per pooled worker that settles,
//! for each task sent ahead of time, whether the worker starts it or the supervisor
//! takes it back, with no message and no extra thread.
//!
//! The supervisor marks a task *queued* in its slot before sending it. Before the
//! worker starts a task it swaps *queued* for *started*; to take a task back, the
//! supervisor swaps *queued* for *revoked*. Both are one compare-and-swap on the same
//! word, so exactly one of them wins: a task either starts in this worker or is
//! revoked (and then skipped here, unanswered, while the supervisor runs it
//! elsewhere).
//!
//! Slots are indexed by the task's place among the tasks sent to this worker (both
//! sides count them, in order), modulo the page's word count (twice [`SLOTS`]). A
//! worker has at most [`SLOTS`] tasks in flight, and revoked tasks it has not yet
//! passed are fewer than that, so a slot is never reused before the worker has passed
//! the task that had it. Each word also holds the task id, and only an exact match
//! acts.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::sys::{self, SharedPage};

/// Tasks a worker may have in flight at most.
pub const SLOTS: usize = 64;
/// Words in the page: room for the tasks in flight and for as many revoked ones.
const WORDS: usize = 2 * SLOTS;
/// The page's words: the state words, then the start times, then the arguments
/// running (one of each per slot).
const PAGE_WORDS: usize = 3 * WORDS;
/// The page's size in bytes.
const BYTES: usize = PAGE_WORDS * 8;

const QUEUED: u64 = 1;
const STARTED: u64 = 2;
const REVOKED: u64 = 3;

/// One worker's slots, mapped in the supervisor or in the worker.
pub struct Slots {
    page: SharedPage,
}

impl Slots {
    /// New slots for a worker (in the supervisor), and their memfd, to send to it with
    /// `Request::UseSlots`. The memfd is sealed at its size: the worker cannot cut the
    /// page from under the supervisor's mapping (a SIGBUS there).
    pub fn create() -> io::Result<(Slots, OwnedFd)> {
        let fd = memfd_create(
            "procpool-slots",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&fd, BYTES as i64)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
        let page = sys::map_shared_page(&fd, BYTES)?;
        Ok((Slots { page }, fd))
    }

    /// The slots behind the memfd the supervisor sent (in the worker): a page sealed
    /// against shrinking, of the size both sides expect.
    pub fn adopt(fd: OwnedFd) -> io::Result<Slots> {
        let seals = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS)?);
        if !seals.contains(SealFlag::F_SEAL_SHRINK) {
            return Err(io::Error::other("slots not sealed against shrinking"));
        }
        let size = nix::sys::stat::fstat(&fd)?.st_size;
        if size != BYTES as i64 {
            return Err(io::Error::other(format!("slots of {size} bytes")));
        }
        Ok(Slots {
            page: sys::map_shared_page(&fd, BYTES)?,
        })
    }

    fn slot(&self, seq: u64) -> &AtomicU64 {
        self.page.word((seq % WORDS as u64) as usize)
    }

    fn started_at(&self, seq: u64) -> &AtomicU64 {
        self.page.word(WORDS + (seq % WORDS as u64) as usize)
    }

    fn argument(&self, seq: u64) -> &AtomicU64 {
        self.page.word(2 * WORDS + (seq % WORDS as u64) as usize)
    }

    fn word(task: u64, state: u64) -> u64 {
        (task << 2) | state
    }

    /// Marks `task`, the `seq`th task sent to this worker, as sent and not started
    /// (supervisor, before sending it).
    pub fn queue(&self, seq: u64, task: u64) {
        self.slot(seq)
            .store(Slots::word(task, QUEUED), Ordering::SeqCst);
    }

    /// Takes `task` back if it has not started (supervisor); whether it was taken.
    pub fn revoke(&self, seq: u64, task: u64) -> bool {
        self.slot(seq)
            .compare_exchange(
                Slots::word(task, QUEUED),
                Slots::word(task, REVOKED),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Where `task`, the `seq`th task sent to this worker, is (supervisor): not started,
    /// started (at the worker's word for when, in `CLOCK_MONOTONIC` nanoseconds), or
    /// taken back. Anything else in its slot (a worker writing garbage) reads as
    /// started: a start that cannot be ruled out counts as one.
    pub fn state(&self, seq: u64, task: u64) -> SlotState {
        let word = self.slot(seq).load(Ordering::SeqCst);
        if word == Slots::word(task, QUEUED) {
            SlotState::Queued
        } else if word == Slots::word(task, REVOKED) {
            SlotState::Revoked
        } else {
            SlotState::Started {
                at_ns: self.started_at(seq).load(Ordering::SeqCst),
            }
        }
    }

    /// Which argument of its batch `task` was on, as the worker last said (supervisor;
    /// unchecked: the caller bounds it).
    pub fn argument_running(&self, seq: u64) -> u64 {
        self.argument(seq).load(Ordering::Relaxed)
    }

    /// Says that the task in slot `seq` is now on argument `index` of its batch (worker).
    pub fn set_argument(&self, seq: u64, index: u64) {
        self.argument(seq).store(index, Ordering::Relaxed);
    }

    /// Claims `task` for running (worker); false if the supervisor took it back.
    pub fn start(&self, seq: u64, task: u64) -> bool {
        // Before the swap, so a supervisor that sees the task started sees when.
        self.started_at(seq).store(monotonic_ns(), Ordering::SeqCst);
        self.argument(seq).store(0, Ordering::Relaxed);
        match self.slot(seq).compare_exchange(
            Slots::word(task, QUEUED),
            Slots::word(task, STARTED),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => true,
            Err(now) => now != Slots::word(task, REVOKED),
        }
    }
}

/// Where a task sent ahead is, as its slot says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Sent, not started: the supervisor may still take it back.
    Queued,
    /// The worker started it (at this `CLOCK_MONOTONIC` time, as the worker wrote it).
    Started { at_ns: u64 },
    /// Taken back: the worker skips it.
    Revoked,
}

/// Now on `CLOCK_MONOTONIC` (the clock `std::time::Instant` reads on Linux), in
/// nanoseconds, comparable across the processes of one machine.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_start_and_revoke_wins() {
        let (supervisor, fd) = Slots::create().unwrap();
        let worker = Slots::adopt(fd).unwrap();
        supervisor.queue(0, 70);
        supervisor.queue(1, 80);
        assert!(worker.start(0, 70));
        assert!(!supervisor.revoke(0, 70), "started: too late to revoke");
        assert!(matches!(supervisor.state(0, 70), SlotState::Started { at_ns } if at_ns > 0));
        assert_eq!(supervisor.state(1, 80), SlotState::Queued);
        worker.set_argument(0, 5);
        assert_eq!(supervisor.argument_running(0), 5);
        assert!(supervisor.revoke(1, 80));
        assert_eq!(supervisor.state(1, 80), SlotState::Revoked);
        assert!(!worker.start(1, 80), "revoked: never starts");
        // The slot's next user is another task; only an exact match acts.
        let next = WORDS as u64;
        supervisor.queue(next, 90);
        assert!(!supervisor.revoke(next, 70));
        assert!(supervisor.revoke(next, 90));
        assert!(!worker.start(next, 90));

        let other = memfd_create("procpool-test", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&other, BYTES as i64).unwrap();
        assert!(Slots::adopt(other).is_err(), "not sealed");
        let (_, fd) = Slots::create().unwrap();
        assert!(
            nix::unistd::ftruncate(&fd, 0).is_err(),
            "nobody can shrink it"
        );
    }
}
