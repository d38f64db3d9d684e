//! Lazy, streaming `imap` / `imap_unordered`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use pool_worker::Job;

use crate::error::JobError;
use crate::pool::Pool;
use crate::result::StreamSink;

type Part<T> = (usize, Vec<Result<T, JobError>>);

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// Inputs are read on this thread, only as results are taken, with at most
/// [`max_in_flight`](Imap::max_in_flight) tasks submitted and not yet yielded: memory
/// stays constant however long the input is (CPython's `imap` reads its whole input
/// ahead: python/cpython#84291).
///
/// ```no_run
/// # #[procpool::job] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().build()?;
/// for r in pool.imap(square, 0..).chunksize(16).take(1_000_000) {
///     let _v: u64 = r?;
/// }
/// # Ok(()) }
/// ```
pub struct Imap<'a, J: Job> {
    pool: &'a Pool,
    inputs: Box<dyn Iterator<Item = J::Input> + 'a>,
    ordered: bool,
    chunksize: usize,
    max_in_flight: usize,
    tx: Sender<Part<J::Output>>,
    rx: Receiver<Part<J::Output>>,
    /// Parts submitted so far (the next part's number).
    submitted: usize,
    /// Parts submitted and not yet received.
    in_flight: usize,
    exhausted: bool,
    /// Ordered mode: parts received ahead of their turn.
    early: BTreeMap<usize, Vec<Result<J::Output, JobError>>>,
    next_part: usize,
    ready: VecDeque<Result<J::Output, JobError>>,
}

impl<'a, J: Job> Imap<'a, J> {
    pub(crate) fn new(
        pool: &'a Pool,
        _job: J,
        inputs: Box<dyn Iterator<Item = J::Input> + 'a>,
        ordered: bool,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Imap {
            pool,
            inputs,
            ordered,
            chunksize: 1,
            max_in_flight: pool.processes() * 4,
            tx,
            rx,
            submitted: 0,
            in_flight: 0,
            exhausted: false,
            early: BTreeMap::new(),
            next_part: 0,
            ready: VecDeque::new(),
        }
    }

    /// Arguments per task. Default: 1 (as Python's `imap`).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    /// Most tasks submitted ahead of the caller. Default: 4 per worker.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    fn top_up(&mut self) {
        while !self.exhausted && self.in_flight < self.max_in_flight {
            let chunk: Vec<J::Input> = self.inputs.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.exhausted = true;
                return;
            }
            let part = self.submitted;
            self.submitted += 1;
            let sink = Arc::new(StreamSink(self.tx.clone()));
            let sent = self
                .pool
                .resolve::<J>()
                .and_then(|index| self.pool.task(index, J::NAME, &chunk, sink, part))
                .and_then(|task| self.pool.submit(vec![task]));
            match sent {
                Ok(()) => self.in_flight += 1,
                // These inputs will not run: each yields the reason, in its place.
                Err(e) => self.accept((part, chunk.iter().map(|_| Err(e.clone())).collect())),
            }
        }
    }

    fn accept(&mut self, (part, results): Part<J::Output>) {
        if !self.ordered {
            self.ready.extend(results);
            return;
        }
        self.early.insert(part, results);
        while let Some(results) = self.early.remove(&self.next_part) {
            self.ready.extend(results);
            self.next_part += 1;
        }
    }
}

impl<J: Job> Iterator for Imap<'_, J> {
    type Item = Result<J::Output, JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.top_up();
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.in_flight == 0 {
                return None;
            }
            // Every submitted task resolves (the pool guarantees it, terminate
            // included), and `tx` lives in `self`, so this wait ends.
            let part = self.rx.recv().ok()?;
            self.in_flight -= 1;
            self.accept(part);
        }
    }
}
