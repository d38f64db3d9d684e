//! `concurrent.futures`' helpers for many results: [`wait`] and [`as_completed`].

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::JobError;
use crate::result::AsyncResult;

/// When [`wait`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// As soon as any result is ready.
    FirstCompleted,
    /// As soon as any result is an error, or when all are ready.
    FirstError,
    /// When all results are ready.
    All,
}

/// Waits for `results` as `until` says, at most `timeout` (`None`: no limit).
/// Returns the indices of the ready results and of the pending ones, as
/// `concurrent.futures.wait` returns its `done` and `not_done` sets.
///
/// ```no_run
/// # #[procpool::job] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().build()?;
/// use procpool::{WaitFor, wait};
/// let results: Vec<_> = (0..8).map(|i| pool.apply_async(square, i)).collect::<Result<_, _>>()?;
/// let (done, pending) = wait(&results, WaitFor::FirstCompleted, None);
/// assert!(!done.is_empty());
/// # Ok(()) }
/// ```
pub fn wait<T: Send + 'static>(
    results: &[AsyncResult<T>],
    until: WaitFor,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    for r in results {
        let tx = tx.clone();
        // Fires at once for a result that is already ready.
        r.on_complete(move |_| {
            let _ = tx.send(());
        });
    }
    drop(tx);
    loop {
        let satisfied = match until {
            WaitFor::All => results.iter().all(AsyncResult::ready),
            WaitFor::FirstCompleted => results.iter().any(AsyncResult::ready),
            WaitFor::FirstError => {
                results.iter().all(AsyncResult::ready)
                    || results.iter().any(|r| r.successful() == Some(false))
            }
        };
        if satisfied || results.is_empty() {
            break;
        }
        let received = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        if received.is_err() {
            break;
        }
    }
    (0..results.len()).partition(|&i| results[i].ready())
}

/// Yields `(index, outcome)` for each of `results` as it completes, like
/// `concurrent.futures.as_completed`.
///
/// ```no_run
/// # #[procpool::job] fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().build()?;
/// let results: Vec<_> = (0..8).map(|i| pool.apply_async(square, i)).collect::<Result<_, _>>()?;
/// for (i, outcome) in procpool::as_completed(results) {
///     println!("input {i}: {outcome:?}");
/// }
/// # Ok(()) }
/// ```
pub fn as_completed<T: Send + 'static>(results: Vec<AsyncResult<T>>) -> AsCompleted<T> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, r) in results.iter().enumerate() {
        let tx = tx.clone();
        r.on_complete(move |_| {
            let _ = tx.send(i);
        });
    }
    AsCompleted {
        remaining: results.len(),
        results: results.into_iter().map(Some).collect(),
        rx,
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<T> {
    results: Vec<Option<AsyncResult<T>>>,
    rx: Receiver<usize>,
    remaining: usize,
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T, JobError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        // Every result completes (the pool guarantees it), so this wait ends.
        let i = self.rx.recv().ok()?;
        let result = self.results.get_mut(i)?.take()?;
        self.remaining -= 1;
        Some((i, result.get()))
    }
}
