//! One worker's ledger: the tasks sent to it and not yet answered, in the order it
//! answers them, over its start-or-revoke slots (`pool_worker::slots`).
//!
//! Whether a task sent to a worker has started is never inferred from its place in
//! the ledger: the slot says (one compare-and-swap settles a start against a take-back),
//! and a start that cannot be ruled out counts as a start. Every way out of the ledger
//! is a transition that says what became of the task, and the supervisor acts on it:
//!
//! ```text
//!            send                 reply read               (the caller resolves it)
//!  queue ----------> Sent --------------------------------> Task delivered
//!                     |  take back / cancel: slot revoked -> Task back to the queue
//!                     |                                      (or resolved Cancelled);
//!                     |                                      the entry stays, Revoked,
//!                     |                                      until the worker passes it
//!                     |  cancel / time limit, started -----> Resolved: the task is
//!                     |                                      resolved now; its reply,
//!                     |                                      if any, is dropped
//!                     |  worker gone: slot revoked --------> never started: requeued
//!                     `  worker gone: started -------------> an attempt: lost
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_worker::journal::{self, OVERFLOW};
use pool_worker::payload::Region;
use pool_worker::protocol::Reply;
use pool_worker::slots::{RING, SlotState, Slots, monotonic_ns};

use crate::pool::Regions;
use crate::resume::Partial;
use crate::supervisor::Task;

/// A worker's tasks in flight.
pub(crate) struct Ledger {
    entries: VecDeque<Entry>,
    slots: Slots,
    /// The worker's journal (see `pool_worker::journal`): read once it is gone.
    journal: Region,
    /// Tasks sent to this worker so far: the next one's place (the worker counts the
    /// same way, and its slot is this modulo the page's size).
    sent: u64,
}

struct Entry {
    /// Its place among the tasks sent to this worker (unused for `Init`).
    seq: u64,
    id: u64,
    arguments: usize,
    sent_at: Instant,
    /// When the supervisor first saw the worker's slot say started: a worker's own word
    /// for when it started is believed only up to then (a worker could write a start
    /// in the future, and push its time limit away forever).
    seen_started: Option<Instant>,
    held: Held,
}

/// What the ledger holds for something sent to the worker.
enum Held {
    /// The pool's initializer: it runs before any task and has no slot.
    Init,
    /// The task, owned here until the worker answers it or is gone.
    Task(Task),
    /// Resolved already (cancelled or timed out after it started): its reply, if one
    /// comes, is dropped. Its shared memory stays until then: the worker may still
    /// read and write it.
    Resolved(Option<Regions>),
    /// Taken back before the worker started it: the worker skips it without a reply.
    /// Kept until the worker has passed it (it answers a later one), so that its slot
    /// is not given to another task while the worker may still read this one.
    Revoked,
}

/// What a reply at the head of the ledger answered.
pub(crate) enum Answered {
    Init,
    Task(Task),
    /// A task resolved before its reply; its shared memory, which the worker is done
    /// with now.
    Resolved(Option<Regions>),
}

/// What a cancel found.
#[must_use]
pub(crate) enum Cancelled {
    /// Not in this ledger, or finished already (its reply, and its value, are on the
    /// way: the cancel lost the race).
    NotHere,
    /// Taken back before the worker started it: resolve it; the worker skips it.
    TakenBack(Task),
    /// Stopped while it ran (the worker starts nothing after it): resolve it, and end
    /// the worker, the only way to stop a running job.
    Stopped(Task),
}

/// The task the worker is running, as far as the supervisor can tell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Running {
    pub started: Instant,
    /// When it passes its time limit, if it has one.
    pub deadline: Option<Instant>,
}

/// What became of the ledger of a worker that is gone.
#[must_use]
pub(crate) struct Lost {
    /// Tasks taken back: they never started, so they run elsewhere as if new.
    pub never_started: Vec<Task>,
    /// Tasks that started (or whose start cannot be ruled out) and were not answered:
    /// each counts as an attempt.
    pub started: Vec<Task>,
    /// The initializer was still unanswered.
    pub in_init: bool,
    /// What the worker's journal says of the last task it started, when that one is
    /// among `started`: the outcomes of its arguments that finished.
    pub partial: Option<(u64, Partial)>,
}

impl Ledger {
    pub fn new(slots: Slots, journal: Region) -> Ledger {
        Ledger {
            entries: VecDeque::new(),
            slots,
            journal,
            sent: 0,
        }
    }

    /// Whether nothing sent is unresolved or unanswered (taken-back tasks the worker
    /// has yet to pass do not count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the worker has yet to answer (taken-back tasks do not count).
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !matches!(e.held, Held::Revoked))
            .count()
    }

    /// Whether another task may be sent: its slot's last task has been passed.
    pub fn can_send(&self) -> bool {
        self.entries
            .iter()
            .find(|e| !matches!(e.held, Held::Init))
            .is_none_or(|oldest| self.sent - oldest.seq < RING)
    }

    /// Where the head is: the first entry the worker will answer.
    fn head_at(&self) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| !matches!(e.held, Held::Revoked))
    }

    fn head(&self) -> Option<&Entry> {
        self.entries.get(self.head_at()?)
    }

    /// Notes when the head was first seen started (call it each time the loop looks).
    pub fn observe(&mut self, now: Instant) {
        let Some(at) = self.head_at() else { return };
        let head = &self.entries[at];
        if head.seen_started.is_none()
            && matches!(head.held, Held::Task(_) | Held::Resolved(_))
            && matches!(
                self.slots.state(head.seq, head.id),
                SlotState::Started { .. }
            )
        {
            self.entries[at].seen_started = Some(now);
        }
    }

    /// Records the initializer as sent.
    pub fn send_init(&mut self, now: Instant) {
        self.entries.push_back(Entry {
            seq: 0,
            id: 0,
            arguments: 0,
            sent_at: now,
            seen_started: None,
            held: Held::Init,
        });
    }

    /// Records `task` as sent (its slot says queued before the worker can see it) and
    /// gives back its frame to write.
    pub fn send(&mut self, task: Task, now: Instant) -> Arc<[u8]> {
        let seq = self.sent;
        self.sent += 1;
        self.slots.queue(seq, task.id);
        let frame = task.frame.clone();
        self.entries.push_back(Entry {
            seq,
            id: task.id,
            arguments: task.arguments,
            sent_at: now,
            seen_started: None,
            held: Held::Task(task),
        });
        frame
    }

    /// Whether `reply` answers the head of the ledger: the same task and, for a reply
    /// with one outcome per argument, as many outcomes as it has arguments.
    pub fn head_answered_by(&self, reply: &Reply) -> bool {
        let Some(head) = self.head() else {
            return false;
        };
        match (reply, &head.held) {
            (Reply::InitDone | Reply::InitFailed { .. }, Held::Init) => true,
            (_, Held::Init) => false,
            (Reply::Done { task, outcomes }, _) => {
                *task == head.id && outcomes.len() == head.arguments
            }
            (
                Reply::DoneBatch { task, .. }
                | Reply::DoneBatchShared { task, .. }
                | Reply::DoneBatchInScratch { task, .. },
                _,
            ) => *task == head.id,
            _ => false,
        }
    }

    /// The shared memory of the head's task, taken out (its outcomes may be in its
    /// scratch).
    pub fn take_head_regions(&mut self) -> Option<Regions> {
        let at = self.head_at()?;
        match &mut self.entries[at].held {
            Held::Task(t) => t.regions.take(),
            Held::Resolved(regions) => regions.take(),
            Held::Init | Held::Revoked => None,
        }
    }

    /// Takes the head out: the worker answered it, so it has passed every task taken
    /// back before it too.
    pub fn answered(&mut self) -> Option<Answered> {
        let at = self.head_at()?;
        self.entries.drain(..at);
        Some(match self.entries.pop_front()?.held {
            Held::Init => Answered::Init,
            Held::Task(t) => Answered::Task(t),
            Held::Resolved(regions) => Answered::Resolved(regions),
            Held::Revoked => return None,
        })
    }

    /// What the head is, for a message about an unexpected reply.
    pub fn describe_head(&self) -> String {
        match self.head() {
            None => "nothing".into(),
            Some(Entry {
                held: Held::Init, ..
            }) => "the initializer's reply".into(),
            Some(e) => format!("the reply to task {} ({} outcomes)", e.id, e.arguments),
        }
    }

    /// The head, if the worker has started it: the initializer since it was sent, a
    /// task since the worker's own word for when (never before it was sent, nor after
    /// now), so a time limit is the job's run time however late the supervisor looks.
    pub fn running(&self, now: Instant) -> Option<Running> {
        let head = self.head()?;
        let (task, at_ns) = match &head.held {
            Held::Init => {
                return Some(Running {
                    started: head.sent_at,
                    deadline: None,
                });
            }
            // Started and not done: running.
            Held::Task(t) => match self.slots.state(head.seq, head.id) {
                SlotState::Started { at_ns } => (Some(t), at_ns),
                _ => return None,
            },
            Held::Resolved(_) => match self.slots.state(head.seq, head.id) {
                SlotState::Started { at_ns } => (None, at_ns),
                _ => return None,
            },
            Held::Revoked => return None,
        };
        let age = Duration::from_nanos(monotonic_ns().saturating_sub(at_ns));
        let started = now
            .checked_sub(age)
            .unwrap_or(head.sent_at)
            .max(head.sent_at)
            .min(head.seen_started.unwrap_or(now));
        let deadline = task.and_then(|t| t.options.timeout.map(|limit| started + limit));
        Some(Running { started, deadline })
    }

    /// Whether tasks sent ahead wait behind the head, not yet started.
    pub fn waiting_ahead(&self) -> bool {
        let Some(head) = self.head_at() else {
            return false;
        };
        self.entries.iter().skip(head + 1).any(|e| {
            matches!(e.held, Held::Task(_)) && self.slots.state(e.seq, e.id) == SlotState::Queued
        })
    }

    /// Takes back every task the worker has not started (all but the head with
    /// `behind_head`), in order, to run elsewhere; started ones stay.
    pub fn take_back(&mut self, behind_head: bool) -> Vec<Task> {
        let skip = match (behind_head, self.head_at()) {
            (true, Some(head)) => head + 1,
            _ => 0,
        };
        let mut back = Vec::new();
        for at in skip..self.entries.len() {
            if let Some(task) = self.revoke_at(at) {
                back.push(task);
            }
        }
        back
    }

    /// Takes back the task at `at` if the worker has not started it.
    fn revoke_at(&mut self, at: usize) -> Option<Task> {
        let entry = self.entries.get_mut(at)?;
        if !matches!(entry.held, Held::Task(_)) || !self.slots.revoke(entry.seq, entry.id) {
            return None;
        }
        match std::mem::replace(&mut entry.held, Held::Revoked) {
            Held::Task(task) => Some(task),
            _ => None,
        }
    }

    /// Cancels task `id` if this ledger has it.
    pub fn cancel(&mut self, id: u64) -> Cancelled {
        let Some(at) = self
            .entries
            .iter()
            .position(|e| e.id == id && matches!(e.held, Held::Task(_)))
        else {
            return Cancelled::NotHere;
        };
        if let Some(task) = self.revoke_at(at) {
            return Cancelled::TakenBack(task);
        }
        match self.stop_at(at) {
            Some(task) => Cancelled::Stopped(task),
            None => Cancelled::NotHere,
        }
    }

    /// The head's task, stopped and resolved now (it ran past its time limit): its
    /// reply, if one comes, is dropped. `None` if it finished meanwhile.
    pub fn expire_head(&mut self) -> Option<Task> {
        self.stop_at(self.head_at()?)
    }

    /// Stops the task at `at` if it runs (not if it finished: its reply is coming),
    /// and resolves it here.
    fn stop_at(&mut self, at: usize) -> Option<Task> {
        let entry = self.entries.get_mut(at)?;
        let Held::Task(task) = &mut entry.held else {
            return None;
        };
        if !self.slots.stop(entry.seq, entry.id) {
            return None;
        }
        let regions = task.regions.take();
        match std::mem::replace(&mut entry.held, Held::Resolved(regions)) {
            Held::Task(task) => Some(task),
            _ => None,
        }
    }

    /// Settles the ledger of a worker that is gone (its stream read to the end first):
    /// each task still here either never started (its slot is taken back now, so it
    /// never will) or counts as started. Resolved tasks' shared memory is freed, never
    /// reused: the worker may have written it. For a worker that `broke` the protocol,
    /// the head task counts as started whatever its slot says: what broke was the
    /// reply to it.
    pub fn lost(self, broke: bool) -> Lost {
        let mut lost = Lost {
            never_started: Vec::new(),
            started: Vec::new(),
            in_init: false,
            partial: self.journaled(),
        };
        let head = self.head_at();
        for (i, entry) in self.entries.into_iter().enumerate() {
            match entry.held {
                Held::Init => lost.in_init = true,
                Held::Task(task) if broke && Some(i) == head => lost.started.push(task),
                Held::Task(task) if self.slots.revoke(entry.seq, entry.id) => {
                    lost.never_started.push(task)
                }
                Held::Task(task) => lost.started.push(task),
                Held::Resolved(_) | Held::Revoked => {}
            }
        }
        lost
    }

    /// The outcomes the worker's journal holds of the last task it started (the only
    /// one it can hold: the worker runs tasks in order and answers each before the
    /// next), bounded: counts within the task, sizes within the journal.
    fn journaled(&self) -> Option<(u64, Partial)> {
        let last = self.entries.iter().rev().find(|e| {
            matches!(e.held, Held::Task(_) | Held::Resolved(_))
                && !matches!(
                    self.slots.state(e.seq, e.id),
                    SlotState::Queued | SlotState::Revoked
                )
        })?;
        let Held::Task(task) = &last.held else {
            return None;
        };
        let p = self.slots.progress(last.seq);
        let (items, values) = (p.items as usize, p.values as usize);
        let (value_bytes, failure_bytes) = (p.value_bytes as usize, p.failure_bytes as usize);
        if p.value_bytes == OVERFLOW
            || p.failure_bytes == OVERFLOW
            || values > items
            || items > task.arguments
            || value_bytes > journal::VALUES
            || failure_bytes > journal::FAILURES
        {
            return None;
        }
        let bytes = self
            .journal
            .copy_out(journal::VALUES + failure_bytes)
            .ok()?;
        Some((
            last.id,
            Partial {
                items,
                values,
                value_bytes: bytes[..value_bytes].to_vec(),
                failure_bytes: bytes[journal::VALUES..].to_vec(),
            },
        ))
    }

    /// Every task still here, for a pool that is terminating.
    pub fn drain_tasks(&mut self) -> Vec<Task> {
        self.entries
            .drain(..)
            .filter_map(|e| match e.held {
                Held::Task(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Whether task `id` is here, unresolved (for a cancel that looks for it).
    pub fn holds(&self, id: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.id == id && matches!(e.held, Held::Task(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskOptions;
    use crate::result::{Delivery, Sink};

    struct NoSink;

    impl Sink for NoSink {
        fn deliver(&self, _: usize, _: Delivery) {}
    }

    fn task(id: u64, timeout: Option<Duration>) -> Task {
        Task {
            id,
            frame: Arc::from(&b"frame"[..]),
            arguments: 1,
            sink: Arc::new(NoSink),
            part: 0,
            span: tracing::Span::none(),
            options: TaskOptions {
                timeout,
                ..TaskOptions::default()
            },
            lost_runs: 0,
            prefix: Vec::new(),
            _holds: Vec::new(),
            regions: None,
        }
    }

    /// A ledger and the worker's view of the same slots.
    fn ledger() -> (Ledger, Slots) {
        let (slots, fd) = Slots::create().unwrap();
        let journal = Region::new(journal::BYTES).unwrap();
        (Ledger::new(slots, journal), Slots::adopt(fd).unwrap())
    }

    fn ids(tasks: &[Task]) -> Vec<u64> {
        tasks.iter().map(|t| t.id).collect()
    }

    #[test]
    fn a_task_the_worker_never_claimed_is_taken_back_and_a_claimed_one_stays() {
        let (mut ledger, worker) = ledger();
        let now = Instant::now();
        for id in [10, 11, 12] {
            let _ = ledger.send(task(id, None), now);
        }
        assert!(ledger.running(now).is_none(), "nothing claimed yet");
        assert!(worker.start(0, 10));
        assert!(worker.start(1, 11), "the worker ran ahead of what was read");
        assert!(ledger.running(Instant::now()).is_some());
        assert!(ledger.waiting_ahead(), "12 waits");
        let back = ledger.take_back(true);
        assert_eq!(ids(&back), vec![12], "11 started: only 12 comes back");
        assert!(!worker.start(2, 12), "a task taken back never starts");
        assert!(!ledger.waiting_ahead());
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn a_lost_worker_s_tasks_are_settled_by_their_slots_not_their_places() {
        let (mut ledger, worker) = ledger();
        let now = Instant::now();
        for id in [1, 2, 3, 4] {
            let _ = ledger.send(task(id, None), now);
        }
        // The worker ran 1 and 2 (1 answered), and died in 3's start: the supervisor
        // had read nothing of it but 1's reply.
        assert!(worker.start(0, 1));
        assert!(worker.start(1, 2));
        assert!(worker.start(2, 3));
        assert!(ledger.head_answered_by(&Reply::DoneBatch {
            task: 1,
            outcomes: Vec::new().into(),
        }));
        assert!(matches!(ledger.answered(), Some(Answered::Task(t)) if t.id == 1));
        let lost = ledger.lost(false);
        assert_eq!(ids(&lost.started), vec![2, 3], "started, never answered");
        assert_eq!(ids(&lost.never_started), vec![4]);
        assert!(
            !worker.start(3, 4),
            "settled as never started: it never will"
        );
        assert!(!lost.in_init);
    }

    #[test]
    fn cancel_takes_back_a_waiting_task_and_resolves_a_started_one_in_place() {
        let (mut ledger, worker) = ledger();
        let now = Instant::now();
        for id in [1, 2, 3] {
            let _ = ledger.send(task(id, None), now);
        }
        assert!(worker.start(0, 1));
        assert!(matches!(ledger.cancel(3), Cancelled::TakenBack(t) if t.id == 3));
        assert!(matches!(ledger.cancel(1), Cancelled::Stopped(t) if t.id == 1));
        assert!(
            matches!(ledger.cancel(1), Cancelled::NotHere),
            "resolved once"
        );
        assert!(matches!(ledger.cancel(99), Cancelled::NotHere));
        // 1's reply, if it comes, is dropped; 2 is still the worker's.
        assert!(ledger.head_answered_by(&Reply::DoneBatch {
            task: 1,
            outcomes: Vec::new().into(),
        }));
        assert!(matches!(ledger.answered(), Some(Answered::Resolved(None))));
        assert!(ledger.holds(2));
        assert!(!ledger.holds(3));
    }

    #[test]
    fn a_time_limit_runs_from_the_worker_s_start_and_expires_once() {
        let (mut ledger, worker) = ledger();
        let sent = Instant::now();
        let _ = ledger.send(task(1, Some(Duration::from_millis(20))), sent);
        let _ = ledger.send(task(2, None), sent);
        assert!(
            ledger.running(sent).is_none(),
            "no deadline before it starts"
        );
        std::thread::sleep(Duration::from_millis(30));
        // The worker starts it only now: the 30 ms it waited do not count.
        assert!(worker.start(0, 1));
        let now = Instant::now();
        let running = ledger.running(now).unwrap();
        assert!(running.started >= sent + Duration::from_millis(25));
        assert!(running.deadline.unwrap() > now, "not past its limit yet");
        assert!(matches!(ledger.expire_head(), Some(t) if t.id == 1));
        assert!(ledger.expire_head().is_none(), "resolved once");
        let lost = ledger.lost(false);
        assert!(lost.started.is_empty(), "1 was resolved already");
        assert_eq!(ids(&lost.never_started), vec![2]);
    }

    #[test]
    fn a_reply_must_match_the_head() {
        let (mut ledger, _worker) = ledger();
        ledger.send_init(Instant::now());
        let _ = ledger.send(task(5, None), Instant::now());
        assert!(ledger.head_answered_by(&Reply::InitDone));
        assert!(!ledger.head_answered_by(&Reply::DoneBatch {
            task: 5,
            outcomes: Vec::new().into(),
        }));
        assert!(matches!(ledger.answered(), Some(Answered::Init)));
        assert!(
            !ledger.head_answered_by(&Reply::Done {
                task: 5,
                outcomes: Vec::new(),
            }),
            "one outcome per argument"
        );
        assert!(!ledger.head_answered_by(&Reply::InitDone));
        assert!(ledger.head_answered_by(&Reply::DoneBatchInScratch { task: 5, len: 0 }));
    }
}
