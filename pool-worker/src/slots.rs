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
//! A started task ends in one more compare-and-swap: the worker swaps *started* for
//! *done* when the job returns, before it replies; to stop a task that runs (a cancel,
//! a time limit), the supervisor swaps *started* for *stopped* and then kills the
//! worker. Exactly one wins again: a task that finished keeps its value (its reply is
//! on its way), and a worker that finds its task stopped starts nothing more, so the
//! kill can only ever end the task it was meant for.
//!
//! Slots are indexed by the task's place among the tasks sent to this worker (both
//! sides count them, in order), modulo [`RING`]. The supervisor sends a task only once
//! the worker has passed (answered, or skipped as revoked) the task [`RING`] places
//! before it, so a slot is never reused while its last task may still be read. Each
//! word also holds the task id, and only an exact match acts.
//!
//! Beside each state word the worker writes, just before its compare-and-swap, when it
//! started the task (`CLOCK_MONOTONIC`, in nanoseconds, the clock `Instant` reads). The
//! supervisor measures a time limit from that start, not from when it last looked (it
//! may have been busy). The worker can write anything here: the supervisor bounds what
//! it reads (a start never before the task was sent, nor after the supervisor first
//! saw it started).

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
/// Tasks sent to a worker whose slots may be in use at once: the supervisor sends the
/// `n`th task only once the worker has passed task `n - RING` (answered it, or a task
/// after it), so no slot is reused while its task may still be read.
pub const RING: u64 = WORDS as u64;
/// The page's words: the state words, the start times, and two words of progress
/// through a batch (one of each per slot).
const PAGE_WORDS: usize = 4 * WORDS;
/// The page's size in bytes.
const BYTES: usize = PAGE_WORDS * 8;

const QUEUED: u64 = 1;
const STARTED: u64 = 2;
const REVOKED: u64 = 3;
const DONE: u64 = 4;
const STOPPED: u64 = 5;
/// Bits of a word that hold the state; the task id is above them.
const STATE_BITS: u32 = 3;

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

    fn progress_words(&self, seq: u64) -> (&AtomicU64, &AtomicU64) {
        let at = (seq % WORDS as u64) as usize;
        (
            self.page.word(2 * WORDS + at),
            self.page.word(3 * WORDS + at),
        )
    }

    fn word(task: u64, state: u64) -> u64 {
        (task << STATE_BITS) | state
    }

    fn swap(&self, seq: u64, task: u64, from: u64, to: u64) -> Result<u64, u64> {
        self.slot(seq).compare_exchange(
            Slots::word(task, from),
            Slots::word(task, to),
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
    }

    /// Marks `task`, the `seq`th task sent to this worker, as sent and not started
    /// (supervisor, before sending it).
    pub fn queue(&self, seq: u64, task: u64) {
        self.slot(seq)
            .store(Slots::word(task, QUEUED), Ordering::SeqCst);
    }

    /// Takes `task` back if it has not started (supervisor); whether it was taken.
    pub fn revoke(&self, seq: u64, task: u64) -> bool {
        self.swap(seq, task, QUEUED, REVOKED).is_ok()
    }

    /// Stops `task` if it is running (supervisor, before it kills the worker); false
    /// if it has finished (its reply is on its way) or never started.
    pub fn stop(&self, seq: u64, task: u64) -> bool {
        self.swap(seq, task, STARTED, STOPPED).is_ok()
    }

    /// Where `task`, the `seq`th task sent to this worker, is (supervisor). Anything
    /// unexpected in its slot (a worker writing garbage) reads as started: a start that
    /// cannot be ruled out counts as one.
    pub fn state(&self, seq: u64, task: u64) -> SlotState {
        let word = self.slot(seq).load(Ordering::SeqCst);
        match word {
            w if w == Slots::word(task, QUEUED) => SlotState::Queued,
            w if w == Slots::word(task, REVOKED) => SlotState::Revoked,
            w if w == Slots::word(task, DONE) => SlotState::Done,
            w if w == Slots::word(task, STOPPED) => SlotState::Stopped,
            _ => SlotState::Started {
                at_ns: self.started_at(seq).load(Ordering::SeqCst),
            },
        }
    }

    /// Records how far the task in slot `seq` is through its arguments (worker, after
    /// each one): what its journal holds of their outcomes. Read only once this
    /// process is gone, so plain (release) stores do; one store for an argument with a
    /// value, the common case, since this is on the path of every argument of every
    /// batch.
    pub fn commit(&self, seq: u64, progress: Progress, failed: bool) {
        let (done, failures) = self.progress_words(seq);
        if failed {
            // Before the count that says it is whole.
            let failed = progress.items - progress.values;
            failures.store(
                u64::from(failed) | u64::from(progress.failure_bytes) << 32,
                Ordering::Release,
            );
        }
        done.store(
            u64::from(progress.items) | u64::from(progress.value_bytes) << 32,
            Ordering::Release,
        );
    }

    /// How far the task in slot `seq` got, as its worker last said (supervisor, once
    /// the worker is gone; the caller bounds the sizes).
    pub fn progress(&self, seq: u64) -> Progress {
        let (done, failures) = self.progress_words(seq);
        let (done, failures) = (done.load(Ordering::SeqCst), failures.load(Ordering::SeqCst));
        let items = done as u32;
        Progress {
            items,
            values: items.saturating_sub(failures as u32),
            value_bytes: (done >> 32) as u32,
            failure_bytes: (failures >> 32) as u32,
        }
    }

    /// Claims `task` for running (worker); false if the supervisor took it back.
    pub fn start(&self, seq: u64, task: u64) -> bool {
        // Before the swap, so a supervisor that sees the task started sees when, and
        // no progress of the slot's last task.
        self.commit(seq, Progress::default(), true);
        self.started_at(seq).store(monotonic_ns(), Ordering::SeqCst);
        match self.swap(seq, task, QUEUED, STARTED) {
            Ok(_) => true,
            Err(now) => now != Slots::word(task, REVOKED),
        }
    }

    /// Says `task`'s job has returned (worker, before it replies); false if the
    /// supervisor stopped it meanwhile: it is killing this worker, which must start
    /// nothing more.
    pub fn finish(&self, seq: u64, task: u64) -> bool {
        match self.swap(seq, task, STARTED, DONE) {
            Ok(_) => true,
            Err(now) => now != Slots::word(task, STOPPED),
        }
    }
}

/// How far a task is through its arguments: `items` have an outcome (`values` of them
/// a value, the others a failure), and the worker's journal holds `value_bytes` of
/// encoded values and `failure_bytes` of encoded failures for them (sizes of
/// [`u32::MAX`]: the journal could not hold them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub items: u32,
    pub values: u32,
    pub value_bytes: u32,
    pub failure_bytes: u32,
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
    /// Its job returned; its reply is on its way.
    Done,
    /// Stopped by the supervisor while it ran; the worker is being killed.
    Stopped,
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
        assert!(supervisor.revoke(1, 80));
        assert_eq!(supervisor.state(1, 80), SlotState::Revoked);
        assert!(!worker.start(1, 80), "revoked: never starts");
        // A started task ends once: done by the worker, or stopped by the supervisor.
        assert!(worker.finish(0, 70));
        assert_eq!(supervisor.state(0, 70), SlotState::Done);
        assert!(!supervisor.stop(0, 70), "done: too late to stop");
        supervisor.queue(2, 81);
        assert!(!supervisor.stop(2, 81), "not started: nothing to stop");
        assert!(worker.start(2, 81));
        assert!(supervisor.stop(2, 81));
        assert_eq!(supervisor.state(2, 81), SlotState::Stopped);
        assert!(
            !worker.finish(2, 81),
            "stopped: the worker starts nothing more"
        );
        // Progress through a batch, reset when the slot's next task starts.
        let progress = Progress {
            items: 3,
            values: 2,
            value_bytes: 16,
            failure_bytes: 9,
        };
        worker.commit(2, progress, true);
        assert_eq!(supervisor.progress(2), progress);
        supervisor.queue(2 + WORDS as u64, 82);
        assert!(worker.start(2 + WORDS as u64, 82));
        assert_eq!(supervisor.progress(2), Progress::default());
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
