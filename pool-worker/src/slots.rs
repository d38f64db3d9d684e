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

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::protocol::SharedRegion;
use crate::sys::{self, SharedPage};

/// Tasks a worker may have in flight at most.
pub const SLOTS: usize = 64;
/// Words in the page: room for the tasks in flight and for as many revoked ones.
const WORDS: usize = 2 * SLOTS;

const QUEUED: u64 = 1;
const STARTED: u64 = 2;
const REVOKED: u64 = 3;

/// One worker's slots, mapped in the supervisor or in the worker.
pub struct Slots {
    page: SharedPage,
    /// The supervisor's descriptor, which the worker opens through `/proc`.
    fd: Option<OwnedFd>,
}

impl Slots {
    /// New slots for a worker (in the supervisor).
    pub fn create() -> io::Result<Slots> {
        let fd = memfd_create("procpool-slots", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, WORDS as i64 * 8)?;
        let page = sys::map_shared_page(&fd, WORDS * 8)?;
        Ok(Slots { page, fd: Some(fd) })
    }

    /// Where the worker finds them.
    pub fn region(&self) -> Option<SharedRegion> {
        self.fd.as_ref().map(|fd| SharedRegion {
            pid: std::process::id(),
            fd: fd.as_raw_fd(),
            len: (WORDS * 8) as u64,
        })
    }

    /// The slots the supervisor created (in the worker).
    pub fn open(region: &SharedRegion) -> io::Result<Slots> {
        if region.len != (WORDS * 8) as u64 {
            return Err(io::Error::other(format!("slots of {} bytes", region.len)));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/fd/{}", region.pid, region.fd))?;
        if file.metadata()?.len() != region.len {
            return Err(io::Error::other("the slots region has the wrong size"));
        }
        let fd = OwnedFd::from(file);
        Ok(Slots {
            page: sys::map_shared_page(&fd, WORDS * 8)?,
            fd: None,
        })
    }

    fn slot(&self, seq: u64) -> &AtomicU64 {
        self.page.word((seq % WORDS as u64) as usize)
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

    /// Claims `task` for running (worker); false if the supervisor took it back.
    pub fn start(&self, seq: u64, task: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_start_and_revoke_wins() {
        let supervisor = Slots::create().unwrap();
        let worker = Slots::open(&supervisor.region().unwrap()).unwrap();
        supervisor.queue(0, 70);
        supervisor.queue(1, 80);
        assert!(worker.start(0, 70));
        assert!(!supervisor.revoke(0, 70), "started: too late to revoke");
        assert!(supervisor.revoke(1, 80));
        assert!(!worker.start(1, 80), "revoked: never starts");
        // The slot's next user is another task; only an exact match acts.
        let next = WORDS as u64;
        supervisor.queue(next, 90);
        assert!(!supervisor.revoke(next, 70));
        assert!(supervisor.revoke(next, 90));
        assert!(!worker.start(next, 90));
    }
}
