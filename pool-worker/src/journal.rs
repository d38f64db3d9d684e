//! A worker's journal: the outcomes of the batch it runs, written as each argument
//! finishes into shared memory that outlives the worker, so that when a worker dies in
//! the middle of a batch its supervisor still has the outcomes of the arguments that
//! finished (and, from the slots, which argument was running).
//!
//! One journal per worker, reused from task to task: the supervisor creates it (a
//! memfd sealed against shrinking) and sends it with `UseSlots`. It holds two areas:
//! the encoded values, one after another as a batch writes them (or, for a task whose
//! arguments are encoded one by one, each argument's encoded `Outcome`), and the
//! encoded failures. How much of each is whole is committed in the task's slot
//! (`slots::Progress`) after each argument; the supervisor reads the journal only after
//! the worker is gone, and decodes it as hostile input.

use std::io;
use std::os::fd::OwnedFd;

use crate::codec::Codec;
use crate::payload::{Region, SHARED_ABOVE};
use crate::protocol::{ItemFailure, Outcome};
use crate::slots::{Progress, Slots};

/// Room for values: a batch whose values grow past it spills them to shared memory of
/// its own (`payload`), and its journal stops.
pub const VALUES: usize = SHARED_ABOVE;
/// Room for failures.
pub const FAILURES: usize = 64 * 1024;
/// The journal's size.
pub const BYTES: usize = VALUES + FAILURES;
/// A size past what the journal holds: its outcomes are not all there.
pub const OVERFLOW: u32 = u32::MAX;

/// The worker's end of its journal.
pub(crate) struct Journal {
    region: Region,
    /// Where an outcome or a failure is encoded before it goes in, reused.
    buf: Vec<u8>,
}

impl Journal {
    /// The journal behind the memfd the supervisor sent.
    pub fn adopt(fd: OwnedFd) -> io::Result<Journal> {
        let region = Region::adopt(fd)?;
        if region.capacity() < BYTES {
            return Err(io::Error::other(format!(
                "a journal of {} bytes",
                region.capacity()
            )));
        }
        Ok(Journal {
            region,
            buf: Vec::new(),
        })
    }

    /// The log of the task in slot `seq`, from its first argument.
    pub fn task<'a>(&'a mut self, slots: &'a Slots, seq: u64) -> TaskLog<'a> {
        TaskLog {
            journal: self,
            slots,
            seq,
            progress: Progress::default(),
        }
    }
}

/// One task's log: its journal and its slot's progress.
pub(crate) struct TaskLog<'a> {
    journal: &'a mut Journal,
    slots: &'a Slots,
    seq: u64,
    progress: Progress,
}

impl TaskLog<'_> {
    /// An argument of a task whose arguments are encoded one by one finished.
    pub fn outcome(&mut self, outcome: &Outcome) {
        let mut buf = std::mem::take(&mut self.journal.buf);
        buf.clear();
        let encoded = self.progress.value_bytes != OVERFLOW
            && Codec::encode_bincode_into(outcome, &mut buf).is_ok();
        self.value(encoded.then_some(&buf[..]));
        self.journal.buf = buf;
    }

    /// Appends `bytes` at `len` in the area at `base` of room `room`; false if they do
    /// not fit (or the journal had overflowed already).
    fn append(&mut self, base: usize, room: usize, len: u32, bytes: &[u8]) -> bool {
        if len == OVERFLOW {
            return false;
        }
        let at = len as usize;
        if at + bytes.len() > room {
            return false;
        }
        self.journal.region.write_at(base + at, bytes).is_ok()
    }

    /// The argument finished with a value, encoded as `bytes` (`None`: its bytes went
    /// where the journal cannot follow).
    #[inline]
    pub fn value(&mut self, bytes: Option<&[u8]>) {
        let len = self.progress.value_bytes;
        let kept = bytes.is_some_and(|b| self.append(0, VALUES, len, b));
        let p = &mut self.progress;
        p.value_bytes = match bytes {
            Some(b) if kept => len + b.len() as u32,
            _ => OVERFLOW,
        };
        p.items += 1;
        p.values += 1;
        self.slots.commit(self.seq, self.progress, false);
    }

    /// The argument finished without a value.
    pub fn failure(&mut self, failure: &ItemFailure) {
        let mut buf = std::mem::take(&mut self.journal.buf);
        buf.clear();
        let len = self.progress.failure_bytes;
        let kept = len != OVERFLOW
            && Codec::encode_bincode_into(failure, &mut buf).is_ok()
            && self.append(VALUES, FAILURES, len, &buf);
        let p = &mut self.progress;
        p.failure_bytes = if kept {
            len + buf.len() as u32
        } else {
            OVERFLOW
        };
        p.items += 1;
        self.slots.commit(self.seq, self.progress, true);
        self.journal.buf = buf;
    }
}
