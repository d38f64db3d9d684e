//! Where a resolved task goes after the supervisor: the pool's *result handler*.
//!
//! The supervisor thread owns workers and tasks and must never run user code: a result
//! type's `Deserialize` that panics would unwind it, a callback that calls back into the
//! pool (`terminate`, `apply`, dropping the last handle) would wait for the very thread
//! it runs on. So, like CPython's pool, which has a result-handler thread beside its
//! task handler, the supervisor only hands each resolved task's delivery to this
//! module, and two threads of the pool's take it from there:
//!
//! - `procpool-results` decodes each delivery into the caller's type (its sink) and
//!   completes the result;
//! - `procpool-callbacks` runs completion callbacks, so a callback may block on the
//!   pool (`apply`) while the results thread goes on completing other results.
//!
//! Both end by themselves once the supervisor is gone and every delivery is done; the
//! last to end says so ([`Drained`]), which is what `Pool::join` waits for.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::result::{Delivery, Sink, wait_while};

/// Work for the callbacks thread.
pub(crate) type CallbackWork = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on a pool's results thread: where completions with callbacks send them.
    static CALLBACKS: RefCell<Option<Sender<CallbackWork>>> = const { RefCell::new(None) };
}

/// Runs `work` on the callbacks thread if called on a results thread (and gives it
/// back otherwise, for the caller to run itself).
pub(crate) fn defer_callbacks(work: CallbackWork) -> Option<CallbackWork> {
    CALLBACKS.with(|c| match &*c.borrow() {
        Some(tx) => tx.send(work).err().map(|e| e.0),
        None => Some(work),
    })
}

/// The supervisor's end: resolved tasks go in here.
pub(crate) struct Completions {
    tx: Sender<(Arc<dyn Sink>, usize, Delivery)>,
}

impl Completions {
    /// Hands `delivery`, the outcome of part `part` of the submission behind `sink`,
    /// to the results thread. Never blocks, never runs user code.
    pub fn deliver(&self, sink: Arc<dyn Sink>, part: usize, delivery: Delivery) {
        if let Err(e) = self.tx.send((sink, part, delivery)) {
            // The results thread is gone (it only ends after this sender): deliver here
            // rather than lose the outcome.
            let (sink, part, delivery) = e.0;
            deliver_guarded(&*sink, part, delivery);
        }
    }
}

/// Whether every delivery of a pool has been made and every callback run.
#[derive(Default)]
pub(crate) struct Drained {
    done: Mutex<bool>,
    changed: Condvar,
    threads: Mutex<Vec<ThreadId>>,
}

impl Drained {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits until drained or `deadline`; true if drained. Called on one of the pool's
    /// own completion threads (a callback that joins its pool), it does not wait for
    /// itself: it returns true at once.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let current = std::thread::current().id();
        if self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&current)
        {
            return true;
        }
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *wait_while(&self.changed, done, deadline, |d| !*d)
    }
}

/// Starts a pool's results and callbacks threads; returns the supervisor's end.
pub(crate) fn start(drained: Arc<Drained>) -> std::io::Result<Completions> {
    let (tx, rx) = crossbeam_channel::unbounded::<(Arc<dyn Sink>, usize, Delivery)>();
    let (callbacks_tx, callbacks_rx) = crossbeam_channel::unbounded::<CallbackWork>();
    let span = tracing::Span::current();
    let callbacks = {
        let drained = drained.clone();
        let span = span.clone();
        std::thread::Builder::new()
            .name("procpool-callbacks".into())
            .spawn(move || span.in_scope(|| run_callbacks(callbacks_rx, &drained)))?
    };
    let results = std::thread::Builder::new()
        .name("procpool-results".into())
        .spawn(move || span.in_scope(|| run_results(rx, callbacks_tx)))?;
    drained
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([callbacks.thread().id(), results.thread().id()]);
    Ok(Completions { tx })
}

fn run_results(rx: Receiver<(Arc<dyn Sink>, usize, Delivery)>, callbacks: Sender<CallbackWork>) {
    CALLBACKS.with(|c| *c.borrow_mut() = Some(callbacks));
    for (sink, part, delivery) in rx {
        deliver_guarded(&*sink, part, delivery);
    }
    // Dropping the sender ends the callbacks thread once it has run what it has.
    CALLBACKS.with(|c| c.borrow_mut().take());
}

fn run_callbacks(rx: Receiver<CallbackWork>, drained: &Drained) {
    for work in rx {
        // Callbacks catch their own panics (see `result`); this is the backstop.
        if catch_unwind(AssertUnwindSafe(work)).is_err() {
            tracing::error!("completing a result panicked");
        }
    }
    drained.set();
}

/// Decodes and completes one delivery. Decoding catches a panicking `Deserialize`
/// itself (the task resolves `Codec`); a panic past that is a bug, logged.
fn deliver_guarded(sink: &dyn Sink, part: usize, delivery: Delivery) {
    if catch_unwind(AssertUnwindSafe(|| sink.deliver(part, delivery))).is_err() {
        tracing::error!(part, "delivering a result panicked");
    }
}
