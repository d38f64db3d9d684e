//! Where a task's outcome goes: [`AsyncResult`] and the sinks behind it.
//!
//! The supervisor thread delivers raw outcomes (encoded bytes or a [`JobError`]) to a
//! [`Sink`]; the sink decodes them into the caller's type and completes a slot that
//! waiters, callbacks and futures watch. Each task is delivered exactly once because
//! the supervisor owns the task and gives it up in the act of delivering it.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pool_worker::Codec;
use pool_worker::payload::{self, Region, SealedMap};
use pool_worker::protocol::{BatchOutcomes, ItemFailure, Outcome, Reply};
use serde::de::DeserializeOwned;

use crate::cancel_on_drop::CancelOnDrop;
use crate::error::JobError;
use crate::pool::{Regions, Shared};

/// How long a waiter looks for a result before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// One argument's raw outcome: the encoded result, or why there is none.
pub(crate) type RawOutcome = Result<Vec<u8>, JobError>;
/// Decoded outcomes, one per argument, in input order.
pub(crate) type Outcomes<T> = Vec<Result<T, JobError>>;

/// What a task's worker (or its fate) sent back for it.
pub(crate) enum Delivery {
    /// One raw outcome per argument.
    Items(Vec<RawOutcome>),
    /// A bincode `BatchOutcomes<T>` of `count` outcomes (`Reply::DoneBatch` or
    /// `Reply::DoneBatchShared`).
    Batch { count: usize, bytes: Payload },
    /// A task's outcomes in pieces, in order: those of the arguments that finished on
    /// a worker that died, then the one lost with it, then the rest (see `resume`).
    Pieces(Vec<Delivery>),
}

/// The delivery in a reply to a task of `count` arguments; `shared` holds the bytes of
/// a `DoneBatchShared` (the memfd that came with it, mapped) or a `DoneBatchInScratch`.
/// A reply that answers no task, or comes without its bytes, is given back.
pub(crate) fn reply_delivery(
    reply: Reply,
    count: usize,
    shared: Option<Payload>,
) -> Result<Delivery, Reply> {
    let bytes = match (reply, shared) {
        (Reply::Done { outcomes, .. }, _) => {
            return Ok(Delivery::Items(
                outcomes.into_iter().map(raw_outcome).collect(),
            ));
        }
        (Reply::DoneBatch { outcomes, .. }, _) => Payload::Owned(outcomes.into_vec()),
        (Reply::DoneBatchShared { .. } | Reply::DoneBatchInScratch { .. }, Some(shared)) => shared,
        (other, _) => return Err(other),
    };
    Ok(Delivery::Batch { count, bytes })
}

/// Where a shared reply's outcomes are: the sealed memfd that came with a
/// `DoneBatchShared` (`fd`, taken only for one), or the scratch of the task a
/// `DoneBatchInScratch` answers (from `regions`, whose arguments go back on the spare
/// list). `None` for a reply with its outcomes inline.
pub(crate) fn shared_outcomes(
    reply: &Reply,
    fd: impl FnOnce() -> Option<OwnedFd>,
    regions: impl FnOnce() -> Option<Regions>,
) -> Result<Option<Payload>, String> {
    match reply {
        Reply::DoneBatchShared { len, .. } => {
            let fd = fd().ok_or("no descriptor came with the reply")?;
            let mapped = payload::map(&fd, *len).map_err(|e| e.to_string())?;
            Ok(Some(Payload::Mapped(mapped)))
        }
        Reply::DoneBatchInScratch { len, .. } => {
            let regions = regions().ok_or("no scratch for the task it answers")?;
            regions
                .into_outcomes(*len)
                .map(|s| Some(Payload::Scratch(s)))
        }
        _ => Ok(None),
    }
}

pub(crate) fn raw_outcome(outcome: Outcome) -> RawOutcome {
    match outcome {
        Outcome::Ok(bytes) => Ok(bytes.into_vec()),
        Outcome::Failed(message) => Err(JobError::Failed { message }),
        Outcome::Panicked(message) => Err(JobError::Panicked { message }),
        Outcome::Codec(message) => Err(JobError::Codec { message }),
        Outcome::Protocol(message) => Err(JobError::Protocol { message }),
    }
}

/// Encoded bytes from a worker: read from its stream, or (large results) mapped from
/// the sealed memfd it sent (bytes that cannot change), or in the task's scratch
/// (which the worker can still write: copied out before they are decoded).
pub(crate) enum Payload {
    Owned(Vec<u8>),
    Mapped(SealedMap),
    Scratch(Scratch),
}

impl Payload {
    /// Decodes the bincode value it holds, every length in it bounded by its bytes: in
    /// place, or, from a scratch, copied out as decoding goes.
    fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        match self {
            Payload::Owned(v) => Codec::Bincode.decode(v),
            Payload::Mapped(m) => Codec::Bincode.decode(m.bytes()),
            Payload::Scratch(s) => s.decode(),
        }
    }
}

/// A task's scratch with the worker's outcomes in its first `len` bytes; back on the
/// spare list once they are decoded (dropped).
pub(crate) struct Scratch {
    region: Option<Region>,
    len: usize,
}

impl Scratch {
    /// The first `len` bytes of `region`, if it has that many now (mapped here that
    /// far); read only when decoded, on the thread that decodes.
    pub fn new(mut region: Region, len: u64) -> std::io::Result<Scratch> {
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("result too large"))?;
        region.map_to(len)?;
        Ok(Scratch {
            region: Some(region),
            len,
        })
    }

    /// Decodes the outcomes, reading them out of the scratch (which the worker can
    /// write still) as decoding goes.
    fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        let region = self.region.as_ref().ok_or("the scratch is gone")?;
        region.decode(self.len)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(region) = self.region.take() {
            payload::recycle(region);
        }
    }
}

/// Receives the outcomes of the tasks of one submission (one `part` per task).
pub(crate) trait Sink: Send + Sync {
    /// Called exactly once per part.
    fn deliver(&self, part: usize, delivery: Delivery);
}

/// Decodes a delivery into the caller's type: one decode per argument, or one for the
/// whole batch. A batch that does not decode, or does not account for each argument
/// once, fails every argument rather than guessing which is which.
pub(crate) fn decode_delivery<T: DeserializeOwned>(delivery: Delivery) -> Outcomes<T> {
    let (count, bytes) = match delivery {
        Delivery::Items(raw) => return raw.into_iter().map(decode).collect(),
        Delivery::Batch { count, bytes } => (count, bytes),
        Delivery::Pieces(pieces) => return pieces.into_iter().flat_map(decode_delivery).collect(),
    };
    let outcomes = match decode_batch::<T>(&bytes, count) {
        Ok(outcomes) => outcomes,
        Err(e) => return (0..count).map(|_| Err(e.clone())).collect(),
    };
    // Checked: the failures' places are in order and within the batch, and the values
    // fill the other places exactly.
    let mut values = outcomes.values.into_iter();
    let mut failures = outcomes.failures.into_iter().peekable();
    (0..count)
        .map(|at| match failures.next_if(|f| f.index as usize == at) {
            Some(failure) => Err(failure_error(failure)),
            None => values.next().ok_or_else(|| JobError::Codec {
                message: format!("no result for argument {at}"),
            }),
        })
        .collect()
}

/// Decodes a delivery for a caller that wants values or the first error (`map`):
/// straight into a `Vec<T>`, with no per-item `Result` in between. The first failed
/// item, in order, is the part's error.
pub(crate) fn decode_values<T: DeserializeOwned>(delivery: Delivery) -> Result<Vec<T>, JobError> {
    let (count, bytes) = match delivery {
        Delivery::Items(raw) => return raw.into_iter().map(decode).collect(),
        Delivery::Batch { count, bytes } => (count, bytes),
        Delivery::Pieces(pieces) => {
            let mut values = Vec::new();
            for piece in pieces {
                values.extend(decode_values(piece)?);
            }
            return Ok(values);
        }
    };
    let outcomes = decode_batch::<T>(&bytes, count)?;
    match outcomes.failures.into_iter().next() {
        Some(failure) => Err(failure_error(failure)),
        None => Ok(outcomes.values),
    }
}

/// A batch's outcomes, checked to account for each of `count` arguments once.
fn decode_batch<T: DeserializeOwned>(
    bytes: &Payload,
    count: usize,
) -> Result<BatchOutcomes<T>, JobError> {
    let outcomes: BatchOutcomes<T> = decode_user(|| bytes.decode(), "results do")?;
    let (values, failures) = (outcomes.values.len(), outcomes.failures.len());
    let in_order = outcomes
        .failures
        .windows(2)
        .all(|pair| pair[0].index < pair[1].index);
    let within = outcomes
        .failures
        .last()
        .is_none_or(|f| (f.index as usize) < count);
    if values + failures != count || !in_order || !within {
        return Err(JobError::Codec {
            message: format!(
                "{values} results and {failures} failures do not account for {count} arguments"
            ),
        });
    }
    Ok(outcomes)
}

fn failure_error(failure: ItemFailure) -> JobError {
    let message = failure.message;
    if failure.panicked {
        JobError::Panicked { message }
    } else {
        JobError::Failed { message }
    }
}

/// The untyped counterpart of [`decode_delivery`]: encoded results as they are.
pub(crate) fn raw_delivery(delivery: Delivery) -> Outcomes<Vec<u8>> {
    match delivery {
        Delivery::Items(raw) => raw,
        Delivery::Pieces(pieces) => pieces.into_iter().flat_map(raw_delivery).collect(),
        Delivery::Batch { count, .. } => (0..count)
            .map(|_| {
                Err(JobError::Protocol {
                    message: "a batch reply to an unbatched task".into(),
                })
            })
            .collect(),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(raw: RawOutcome) -> Result<T, JobError> {
    let bytes = raw?;
    decode_user(|| Codec::Bincode.decode(&bytes), "result does")
}

/// Runs `decode`, a decode of a worker's bytes into a caller's type `M`. Its
/// `Deserialize` is user code: a panic in it fails this result with `Codec`, and
/// nothing else.
fn decode_user<M>(decode: impl FnOnce() -> Result<M, String>, what: &str) -> Result<M, JobError> {
    let name = std::any::type_name::<M>();
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(JobError::Codec {
            message: format!("{what} not decode as {name}: {e}"),
        }),
        Err(panic) => Err(JobError::Codec {
            message: format!(
                "{what} not decode as {name}: its Deserialize panicked: {}",
                pool_worker::panic_message(panic.as_ref())
            ),
        }),
    }
}

type Callback<T> = Box<dyn FnOnce(&Result<T, JobError>) + Send>;

/// A result's life: `Pending` until its task resolves; then, if callbacks are
/// registered, `Deferred` (the value is in, its callbacks wait for the callbacks
/// thread) and `Completing` (they run, outside the lock); then `Ready`, and `Taken` once
/// handed over. A waiter that finds it `Deferred` runs the callbacks itself rather than
/// wait for a thread that may be busy (a callback waiting on another result would
/// otherwise wait for itself).
enum State<T> {
    Pending {
        callbacks: Vec<Callback<T>>,
        waker: Option<Waker>,
    },
    Deferred {
        result: Result<T, JobError>,
        callbacks: Vec<Callback<T>>,
        waker: Option<Waker>,
    },
    /// Callbacks are running with the value outside the lock; late ones queue here.
    Completing {
        late: Vec<Callback<T>>,
        waker: Option<Waker>,
        ok: bool,
    },
    Ready(Result<T, JobError>),
    Taken {
        ok: bool,
    },
}

/// The completion point of one result.
pub(crate) struct Slot<T> {
    state: Mutex<State<T>>,
    done: Condvar,
    /// Set with the result, for waiters that look before they sleep.
    ready: AtomicBool,
    /// Set once its task has resolved (its callbacks may still be to run).
    resolved: AtomicBool,
    /// Waiters on several results at once (`wait`, `as_completed`), told when this one
    /// resolves (before its callbacks run: a callback may wait for others). Unlike a
    /// callback, each leaves when it stops waiting ([`Watch`]), so repeated waits on a
    /// long task add nothing.
    watchers: Mutex<Watchers>,
}

#[derive(Default)]
struct Watchers {
    next: u64,
    /// (watch id, where to say so, what to say: the result's index for its waiter).
    list: Vec<(u64, crossbeam_channel::Sender<usize>, usize)>,
}

/// One waiter's registration on a slot: it is told (its index is sent) once the slot
/// is ready, and removed when this drops.
pub(crate) struct Watch<T> {
    slot: Arc<Slot<T>>,
    id: u64,
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        self.slot
            .watchers()
            .list
            .retain(|(id, _, _)| *id != self.id);
    }
}

impl<T> Slot<T> {
    pub fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(State::Pending {
                callbacks: Vec::new(),
                waker: None,
            }),
            done: Condvar::new(),
            ready: AtomicBool::new(false),
            resolved: AtomicBool::new(false),
            watchers: Mutex::new(Watchers::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A callback panicking never holds this lock, so poisoning can only come from a
        // bug here; the state itself is always consistent, so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchers(&self) -> MutexGuard<'_, Watchers> {
        // No user code runs under this lock.
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `index` down `tx` once this slot has resolved (at once if it has), until
    /// the returned [`Watch`] drops.
    pub(crate) fn watch(
        self: &Arc<Self>,
        tx: &crossbeam_channel::Sender<usize>,
        index: usize,
    ) -> Watch<T> {
        let mut watchers = self.watchers();
        let id = watchers.next;
        watchers.next += 1;
        // Under the watchers' lock, which `resolve` takes after setting `resolved`:
        // either this sees it set, or `resolve` sees this watcher.
        if self.resolved.load(Ordering::Acquire) {
            let _ = tx.send(index);
        } else {
            watchers.list.push((id, tx.clone(), index));
        }
        Watch {
            slot: self.clone(),
            id,
        }
    }

    /// Completes the slot once; a second completion is a bug upstream and is ignored.
    /// Without callbacks it is ready at once. With callbacks, they run on the pool's
    /// callbacks thread when this is called on its results thread (see `completion`),
    /// here otherwise, or on the first thread that waits for the result; waiters wake
    /// after them.
    pub fn complete(self: &Arc<Self>, result: Result<T, JobError>)
    where
        T: Send + 'static,
    {
        let mut state = self.lock();
        let State::Pending { callbacks, waker } = &mut *state else {
            tracing::error!("a result was completed twice; the second is ignored");
            return;
        };
        if callbacks.is_empty() {
            let waker = waker.take();
            *state = State::Ready(result);
            drop(state);
            self.mark_ready(waker);
            self.resolve();
            return;
        }
        let (callbacks, waker) = (std::mem::take(callbacks), waker.take());
        *state = State::Deferred {
            result,
            callbacks,
            waker: None,
        };
        drop(state);
        // Waiters may run the callbacks themselves rather than wait for their thread.
        self.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        self.resolve();
        let slot = self.clone();
        let work: crate::completion::CallbackWork = Box::new(move || slot.run_deferred());
        if let Some(work) = crate::completion::defer_callbacks(work) {
            work();
        }
    }

    /// Tells the watchers that the task resolved.
    fn resolve(&self) {
        let mut watchers = self.watchers();
        self.resolved.store(true, Ordering::Release);
        for (_, tx, index) in std::mem::take(&mut watchers.list) {
            let _ = tx.send(index);
        }
    }

    fn mark_ready(&self, waker: Option<Waker>) {
        self.ready.store(true, Ordering::Release);
        self.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Runs the callbacks of a `Deferred` result (if no other thread has taken them),
    /// and any that arrive meanwhile, outside the lock; then the result is ready.
    fn run_deferred(&self) {
        let mut state = self.lock();
        let State::Deferred { .. } = &*state else {
            return;
        };
        let State::Deferred {
            result,
            mut callbacks,
            waker,
        } = std::mem::replace(
            &mut *state,
            State::Completing {
                late: Vec::new(),
                waker: None,
                ok: false,
            },
        )
        else {
            return;
        };
        if let State::Completing { waker: w, ok, .. } = &mut *state {
            *w = waker;
            *ok = result.is_ok();
        }
        drop(state);
        loop {
            for callback in callbacks.drain(..) {
                run_callback(callback, &result);
            }
            let mut state = self.lock();
            match &mut *state {
                State::Completing { late, .. } if !late.is_empty() => {
                    callbacks = std::mem::take(late);
                }
                State::Completing { waker, .. } => {
                    let waker = waker.take();
                    *state = State::Ready(result);
                    drop(state);
                    self.mark_ready(waker);
                    return;
                }
                _ => {
                    tracing::error!("a result changed while its callbacks ran");
                    return;
                }
            }
        }
    }

    fn on_complete(&self, callback: Callback<T>) {
        let mut state = self.lock();
        match &mut *state {
            State::Pending { callbacks, .. } | State::Deferred { callbacks, .. } => {
                callbacks.push(callback)
            }
            State::Completing { late, .. } => late.push(callback),
            State::Ready(_) => {
                // Run here, outside the lock, so the callback may look at this result.
                let State::Ready(result) =
                    std::mem::replace(&mut *state, State::Taken { ok: false })
                else {
                    return;
                };
                *state = State::Deferred {
                    result,
                    callbacks: vec![callback],
                    waker: None,
                };
                drop(state);
                self.run_deferred();
            }
            State::Taken { ok } => {
                let ok = *ok;
                drop(state);
                tracing::warn!(ok, "callback added after the result was taken; not run");
            }
        }
    }

    /// How many callbacks and watchers wait on this slot (for tests of leaks).
    #[cfg(test)]
    pub(crate) fn registrations(&self) -> usize {
        let callbacks = match &*self.lock() {
            State::Pending { callbacks, .. } | State::Deferred { callbacks, .. } => callbacks.len(),
            State::Completing { late, .. } => late.len(),
            _ => 0,
        };
        callbacks + self.watchers().list.len()
    }

    fn is_ready(state: &State<T>) -> bool {
        matches!(state, State::Ready(_) | State::Taken { .. })
    }

    /// Waits until ready or `deadline`; returns the guard and whether it is ready.
    fn wait_until(&self, deadline: Option<Instant>) -> (MutexGuard<'_, State<T>>, bool) {
        // A reply often comes within tens of microseconds: look for it, letting other
        // threads run, before going to sleep (a sleep and a wake-up cost about as much).
        let spin_until = Instant::now() + SPIN;
        let spin_until = deadline.map_or(spin_until, |d| d.min(spin_until));
        while !self.ready.load(Ordering::Acquire) && Instant::now() < spin_until {
            std::thread::yield_now();
        }
        let mut state = self.lock();
        loop {
            match &*state {
                State::Ready(_) | State::Taken { .. } => return (state, true),
                State::Deferred { .. } => {
                    // Its callbacks wait for a thread that may be busy: run them here.
                    drop(state);
                    self.run_deferred();
                    state = self.lock();
                }
                State::Pending { .. } | State::Completing { .. } => {
                    let left = match deadline {
                        None => None,
                        Some(d) => match d.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => Some(left),
                            _ => return (state, false),
                        },
                    };
                    state = match left {
                        None => self.done.wait(state).unwrap_or_else(|e| e.into_inner()),
                        Some(left) => {
                            self.done
                                .wait_timeout(state, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                    };
                }
            }
        }
    }

    fn take(state: &mut State<T>) -> Result<T, JobError> {
        match state {
            State::Ready(r) => {
                let ok = r.is_ok();
                let State::Ready(r) = std::mem::replace(state, State::Taken { ok }) else {
                    unreachable!()
                };
                r
            }
            State::Taken { .. } => Err(JobError::ResultTaken),
            _ => unreachable!("take on a pending result"),
        }
    }
}

/// Waits on `cv` while `pending` holds, until `deadline` if there is one; recovers
/// from poisoning (the states guarded here are always consistent).
pub(crate) fn wait_while<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    pending: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    match deadline {
        None => cv
            .wait_while(guard, pending)
            .unwrap_or_else(|e| e.into_inner()),
        Some(d) => {
            cv.wait_timeout_while(guard, d.saturating_duration_since(Instant::now()), pending)
                .unwrap_or_else(|e| e.into_inner())
                .0
        }
    }
}

fn run_callback<T>(callback: Callback<T>, result: &Result<T, JobError>) {
    // A callback is user code; its panic must not stop the delivery of other results
    // (in CPython a raising callback kills the pool's result thread: cpython#83371).
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(result))) {
        tracing::error!(
            panic = %pool_worker::panic_message(payload.as_ref()),
            "a completion callback panicked; other results are unaffected"
        );
    }
}

/// The future value of one submission (`apply_async`, `map_async`).
///
/// Wait for it with [`get`](AsyncResult::get) / [`get_timeout`](AsyncResult::get_timeout),
/// poll it with [`ready`](AsyncResult::ready), attach a callback with
/// [`on_complete`](AsyncResult::on_complete), or `.await` it from any executor.
///
/// The value is handed over once: `get` and `get_timeout` take the handle. To wait in
/// steps, or to decide after a while whether to give up, use
/// [`wait_timeout`](AsyncResult::wait_timeout) (which borrows), then `get` or
/// [`cancel`](AsyncResult::cancel).
///
/// Dropping an `AsyncResult`, awaited or not, does not stop its task: the task runs to
/// its end and its value is dropped, as with `multiprocessing`. To stop
/// the task when the handle goes away (an `.await` inside `tokio::time::timeout` or
/// `select!` that loses), wrap it with [`cancel_on_drop`](AsyncResult::cancel_on_drop).
///
/// ```no_run
/// # use procpool::{job, Pool};
/// # use std::time::Duration;
/// #[job]
/// fn square(x: u64) -> u64 { x * x }
///
/// # fn main() -> Result<(), procpool::Error> {
/// procpool::init();
/// let pool = Pool::builder().processes(2).build()?;
/// let r = pool.apply_async(square, 12)?;
/// r.on_complete(|v| tracing::info!(?v, "done"));
/// assert_eq!(r.get_timeout(Duration::from_secs(5))?, 144);
/// # Ok(()) }
/// ```
#[must_use = "a task's result or error is only seen through its AsyncResult"]
pub struct AsyncResult<T> {
    slot: Arc<Slot<T>>,
    cancel: Option<Canceller>,
}

/// What `cancel` needs: the pool (weakly: a result must not keep a pool alive) and
/// the ids of the submission's tasks.
pub(crate) struct Canceller {
    pub shared: Weak<Shared>,
    pub tasks: Vec<u64>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &Slot::is_ready(&self.slot.lock()))
            .finish()
    }
}

impl<T: Send + 'static> AsyncResult<T> {
    pub(crate) fn new(slot: Arc<Slot<T>>, cancel: Option<Canceller>) -> Self {
        AsyncResult { slot, cancel }
    }

    /// Cancels the submission: a task not started yet is dropped, a running one has
    /// its worker killed and replaced; the result then resolves
    /// [`JobError::Cancelled`]. Returns false if it had already resolved (a task
    /// finishing at the same moment may still win the race and keep its value).
    pub fn cancel(&self) -> bool {
        if self.ready() {
            return false;
        }
        if let Some(shared) = self.cancel.as_ref().and_then(|c| c.shared.upgrade()) {
            shared.cancel(
                self.cancel
                    .as_ref()
                    .map(|c| c.tasks.clone())
                    .unwrap_or_default(),
            );
        }
        true
    }

    /// Blocks until the task resolves and returns its value or error.
    pub fn get(self) -> Result<T, JobError> {
        let (mut state, _) = self.slot.wait_until(None);
        Slot::take(&mut state)
    }

    /// Like [`get`](Self::get) but gives up after `timeout` with
    /// [`JobError::WaitTimeout`]. Either way the handle is gone, and the task goes on
    /// (see [`cancel_on_drop`](Self::cancel_on_drop) to stop it instead); to wait
    /// again after a while, use [`wait_timeout`](Self::wait_timeout) then `get`.
    pub fn get_timeout(self, timeout: Duration) -> Result<T, JobError> {
        let (mut state, ready) = self.slot.wait_until(Instant::now().checked_add(timeout));
        if !ready {
            return Err(JobError::WaitTimeout { waited: timeout });
        }
        Slot::take(&mut state)
    }

    /// This result, made to cancel its task if it is dropped before the task resolved:
    /// a queued task is dropped, a running one has its worker killed and replaced.
    /// For `.await` under a timeout or `select!`, where losing drops the future.
    pub fn cancel_on_drop(self) -> CancelOnDrop<T> {
        CancelOnDrop::new(self)
    }

    /// Blocks until the task resolves.
    pub fn wait(&self) {
        drop(self.slot.wait_until(None));
    }

    /// Blocks until the task resolves or `timeout` passes; true if it resolved.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot.wait_until(Instant::now().checked_add(timeout)).1
    }

    /// Whether the task has resolved: its outcome is in, and [`get`](Self::get) waits
    /// for no worker (it may first run the result's callbacks, or wait for them).
    pub fn ready(&self) -> bool {
        self.successful().is_some()
    }

    /// `None` while pending; then whether the task produced a value.
    pub fn successful(&self) -> Option<bool> {
        match &*self.slot.lock() {
            State::Pending { .. } => None,
            State::Deferred { result, .. } | State::Ready(result) => Some(result.is_ok()),
            State::Completing { ok, .. } | State::Taken { ok } => Some(*ok),
        }
    }

    /// Runs `callback` with the outcome once the task resolves (at once, on this
    /// thread, if it already has; otherwise on the pool's callbacks thread, one
    /// callback at a time, so keep it short). A callback may use the pool (`apply`,
    /// `terminate`, dropping the pool). A panicking callback is logged and changes
    /// nothing else.
    pub fn on_complete(&self, callback: impl FnOnce(&Result<T, JobError>) + Send + 'static) {
        self.slot.on_complete(Box::new(callback));
    }

    /// Sends `index` down `tx` once the task resolves, until the watch drops.
    pub(crate) fn watch(&self, tx: &crossbeam_channel::Sender<usize>, index: usize) -> Watch<T> {
        self.slot.watch(tx, index)
    }
}

impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.lock();
        if let State::Deferred { .. } = &*state {
            drop(state);
            self.slot.run_deferred();
            state = self.slot.lock();
        }
        match &mut *state {
            // Callbacks still to run, or running: woken after them.
            State::Pending { waker, .. }
            | State::Deferred { waker, .. }
            | State::Completing { waker, .. } => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(Slot::take(&mut state)),
        }
    }
}

/// Sink of a single-argument submission (`apply_async`).
pub(crate) struct OneSink<T>(pub Arc<Slot<T>>);

impl<T: DeserializeOwned + Send + 'static> Sink for OneSink<T> {
    fn deliver(&self, _part: usize, delivery: Delivery) {
        let first = decode_delivery(delivery).into_iter().next();
        self.0.complete(first.unwrap_or(Err(JobError::Protocol {
            message: "worker returned no outcome".into(),
        })));
    }
}

/// Sink of a whole submission (`map`, `map_results`): each part is decoded as it
/// arrives (`decode`), and the parts, in order, become the value once all are in
/// (`finish`).
pub(crate) struct CollectSink<P, U> {
    parts: Mutex<Parts<P>>,
    decode: fn(Delivery) -> P,
    finish: fn(Vec<P>) -> Result<U, JobError>,
    slot: Arc<Slot<U>>,
}

struct Parts<P> {
    parts: Vec<Option<P>>,
    remaining: usize,
}

impl<P, U> CollectSink<P, U> {
    pub fn new(
        parts: usize,
        decode: fn(Delivery) -> P,
        finish: fn(Vec<P>) -> Result<U, JobError>,
        slot: Arc<Slot<U>>,
    ) -> Self {
        CollectSink {
            parts: Mutex::new(Parts {
                parts: (0..parts).map(|_| None).collect(),
                remaining: parts,
            }),
            decode,
            finish,
            slot,
        }
    }
}

impl<P, U> Sink for CollectSink<P, U>
where
    P: Send + 'static,
    U: Send + 'static,
{
    fn deliver(&self, part: usize, delivery: Delivery) {
        let decoded = (self.decode)(delivery);
        let all = {
            let mut guard = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            let Parts { parts, remaining } = &mut *guard;
            match parts.get_mut(part) {
                Some(p @ None) => {
                    *p = Some(decoded);
                    *remaining -= 1;
                }
                _ => {
                    tracing::error!(part, "a part was delivered twice or out of range");
                    return;
                }
            }
            if *remaining > 0 {
                return;
            }
            std::mem::take(parts)
        };
        self.slot
            .complete((self.finish)(all.into_iter().flatten().collect()));
    }
}

/// `map`'s parts become one vector of values, or the first error in input order.
pub(crate) fn concat_values<T>(parts: Vec<Result<Vec<T>, JobError>>) -> Result<Vec<T>, JobError> {
    let mut values = Vec::with_capacity(parts.iter().map(|p| p.as_ref().map_or(0, Vec::len)).sum());
    for part in parts {
        values.extend(part?);
    }
    Ok(values)
}

/// `map_results`' parts become one vector of outcomes.
pub(crate) fn concat_outcomes<T>(parts: Vec<Outcomes<T>>) -> Result<Outcomes<T>, JobError> {
    Ok(parts.into_iter().flatten().collect())
}

/// Sink of a streaming submission (`imap`): each part goes down a channel.
pub(crate) struct StreamSink<T> {
    pub tx: crossbeam_channel::Sender<(usize, Outcomes<T>)>,
    pub decode: fn(Delivery) -> Outcomes<T>,
}

impl<T: Send + 'static> Sink for StreamSink<T> {
    fn deliver(&self, part: usize, delivery: Delivery) {
        let decoded = (self.decode)(delivery);
        // The receiver is the iterator; if it was dropped, nobody wants these.
        let _ = self.tx.send((part, decoded));
    }
}
