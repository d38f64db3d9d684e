//! Lazy, streaming `imap` / `imap_unordered` / `imap_encoded`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::TaskOptions;
use crate::error::JobError;
use crate::pool::Arguments;
use crate::pool::{Pool, TaskSpec};
use crate::result::{Delivery, Outcomes, StreamSink};

/// Turns one chunk of inputs into wire arguments.
pub(crate) type Encode<I> = fn(Vec<I>) -> Result<Arguments, JobError>;
/// Turns a task's delivery into the caller's values.
pub(crate) type Decode<O> = fn(Delivery) -> Outcomes<O>;

/// The iterator of [`Pool::imap`], [`Pool::imap_unordered`] and
/// [`Pool::imap_encoded`].
///
/// Inputs are read on this thread, only as results are taken, with at most
/// [`max_in_flight`](Imap::max_in_flight) tasks submitted and not yet yielded: memory
/// stays constant however long the input is (CPython's `imap` reads its whole input
/// ahead: python/cpython#84291).
///
/// If a submission fails for a reason that holds for the rest of the stream (the
/// workers lack the job, the name given to `imap_encoded` is unknown, the pool was
/// closed or terminated meanwhile), the stream ends: after the results of what was
/// submitted before, each input of the chunk that failed yields the error, and nothing
/// more is read. An input that fails alone (it does not encode, or is too large)
/// yields its error in its place and the stream goes on.
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
pub struct Imap<'a, I, O> {
    pool: &'a Pool,
    spec: Result<TaskSpec, JobError>,
    encode: Encode<I>,
    /// Where every task of this stream delivers (the part number says which).
    sink: Arc<StreamSink<O>>,
    inputs: Box<dyn Iterator<Item = I> + 'a>,
    ordered: bool,
    chunksize: usize,
    max_in_flight: usize,
    rx: Receiver<(usize, Outcomes<O>)>,
    /// Parts submitted so far (the next part's number).
    submitted: usize,
    /// Parts submitted and not yet received.
    in_flight: usize,
    exhausted: bool,
    /// Ordered mode: parts received ahead of their turn.
    early: BTreeMap<usize, Outcomes<O>>,
    next_part: usize,
    /// Results ready to yield, with their input positions.
    ready: VecDeque<(usize, Result<O, JobError>)>,
    /// Why the stream ended early (a submission failed), as the results of the part
    /// that failed: yielded last, once everything submitted before it is in.
    ended: Option<(usize, Outcomes<O>)>,
}

impl<'a, I: 'a, O: Send + 'static> Imap<'a, I, O> {
    pub(crate) fn new(
        pool: &'a Pool,
        spec: Result<TaskSpec, JobError>,
        inputs: Box<dyn Iterator<Item = I> + 'a>,
        ordered: bool,
        encode: Encode<I>,
        decode: Decode<O>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Imap {
            pool,
            spec,
            encode,
            sink: Arc::new(StreamSink { tx, decode }),
            inputs,
            ordered,
            chunksize: 1,
            max_in_flight: pool.processes() * 4,
            rx,
            submitted: 0,
            in_flight: 0,
            exhausted: false,
            early: BTreeMap::new(),
            next_part: 0,
            ready: VecDeque::new(),
            ended: None,
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

    /// This stream's time limit and retries, instead of the pool's defaults.
    pub fn options(mut self, options: TaskOptions) -> Self {
        if let Ok(spec) = &mut self.spec {
            spec.options = options;
        }
        self
    }

    /// Yields each result with the position of its input (0-based).
    pub fn with_positions(self) -> WithPositions<'a, I, O> {
        WithPositions(self)
    }

    fn top_up(&mut self) {
        // Parts that came back ahead of their turn are not yielded yet either: they
        // count against the bound too, or fast workers would let reading run ahead.
        while !self.exhausted && self.in_flight + self.early.len() < self.max_in_flight {
            let chunk: Vec<I> = self.inputs.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.exhausted = true;
                return;
            }
            let part = self.submitted;
            self.submitted += 1;
            let count = chunk.len();
            let failed = |e: JobError| (0..count).map(|_| Err(e.clone())).collect();
            let spec = match &self.spec {
                Ok(spec) => spec,
                // Nothing of this stream can run (a job the workers lack, an unknown
                // name): it ends with the reason, in place of this chunk.
                Err(e) => {
                    let results = failed(e.clone());
                    return self.end_with(part, results);
                }
            };
            let task = (self.encode)(chunk)
                .and_then(|arguments| self.pool.task(spec, arguments, self.sink.clone(), part));
            match task.map(|task| self.pool.submit(vec![task])) {
                Ok(Ok(())) => self.in_flight += 1,
                // The pool takes no more tasks (closed, terminated, broken): the
                // stream ends with the reason, after what was submitted before.
                Ok(Err(e)) => return self.end_with(part, failed(e)),
                // Only these inputs cannot run (they do not encode, or are too large):
                // each yields the reason, in its place. Nothing more is read until they
                // are taken, so an input that fails throughout is not read ahead
                // without bound.
                Err(e) => return self.accept(part, failed(e)),
            }
        }
    }

    /// Ends the stream with part `part`, whose results are `results`: no more input is
    /// read or submitted, and these come after every result submitted before.
    fn end_with(&mut self, part: usize, results: Outcomes<O>) {
        self.exhausted = true;
        self.ended = Some((part, results));
    }

    /// Takes part `part`'s results: ready at once when unordered, else once every
    /// earlier part is in.
    fn accept(&mut self, part: usize, results: Outcomes<O>) {
        if !self.ordered {
            return self.release(part, results);
        }
        self.early.insert(part, results);
        while let Some(results) = self.early.remove(&self.next_part) {
            self.release(self.next_part, results);
            self.next_part += 1;
        }
    }

    /// Queues part `part`'s results with their input positions (chunks are consecutive
    /// and all `chunksize` long but the last).
    fn release(&mut self, part: usize, results: Outcomes<O>) {
        let first = part * self.chunksize;
        self.ready
            .extend(results.into_iter().enumerate().map(|(i, r)| (first + i, r)));
    }

    fn next_positioned(&mut self) -> Option<(usize, Result<O, JobError>)> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.top_up();
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if self.in_flight == 0 {
                let (part, results) = self.ended.take()?;
                self.accept(part, results);
                continue;
            }
            // Every submitted task resolves (the pool guarantees it, terminate
            // included), and `tx` lives in `self`, so this wait ends.
            let (part, results) = self.rx.recv().ok()?;
            self.in_flight -= 1;
            self.accept(part, results);
        }
    }
}

impl<'a, I: 'a, O: Send + 'static> Iterator for Imap<'a, I, O> {
    type Item = Result<O, JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_positioned().map(|(_, r)| r)
    }
}

/// [`Imap`] yielding `(input position, result)`; see [`Imap::with_positions`].
pub struct WithPositions<'a, I, O>(Imap<'a, I, O>);

impl<'a, I: 'a, O: Send + 'static> Iterator for WithPositions<'a, I, O> {
    type Item = (usize, Result<O, JobError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_positioned()
    }
}
