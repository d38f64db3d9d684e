//! `concurrent.futures`' helpers for many results: [`wait`] and [`as_completed`].

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::JobError;
use crate::result::{AsyncResult, Watch};

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
    let (tx, rx) = crossbeam_channel::unbounded::<usize>();
    // Told at once for a result that is already ready; each leaves when this returns.
    let _watches: Vec<_> = results
        .iter()
        .enumerate()
        .map(|(i, r)| r.watch(&tx, i))
        .collect();
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
    let watches = results
        .iter()
        .enumerate()
        .map(|(i, r)| r.watch(&tx, i))
        .collect();
    AsCompleted {
        remaining: results.len(),
        results: results.into_iter().map(Some).collect(),
        rx,
        _watches: watches,
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<T> {
    results: Vec<Option<AsyncResult<T>>>,
    rx: Receiver<usize>,
    remaining: usize,
    /// Its registrations on the results, removed when it drops.
    _watches: Vec<Watch<T>>,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::result::Slot;

    fn pending() -> (Arc<Slot<u32>>, AsyncResult<u32>) {
        let slot = Slot::new();
        (slot.clone(), AsyncResult::new(slot, None))
    }

    #[test]
    fn a_wait_that_times_out_leaves_nothing_registered() {
        // Issue 11, item 11: each wait on a pending result left a callback behind,
        // freed only when the result completed.
        let (slot, result) = pending();
        let results = [result];
        for _ in 0..10_000 {
            let (done, pending) = wait(&results, WaitFor::FirstCompleted, Some(Duration::ZERO));
            assert!(done.is_empty() && pending == [0]);
        }
        assert_eq!(slot.registrations(), 0);
    }

    #[test]
    fn a_dropped_as_completed_leaves_nothing_registered() {
        let (slot, result) = pending();
        drop(as_completed(vec![result]));
        assert_eq!(slot.registrations(), 0);
    }

    #[test]
    fn wait_wakes_when_a_result_completes_meanwhile() {
        let (slot_a, a) = pending();
        let (_slot_b, b) = pending();
        let results = [a, b];
        let completer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            slot_a.complete(Ok(7));
        });
        let (done, pending) = wait(&results, WaitFor::FirstCompleted, None);
        assert_eq!((done, pending), (vec![0], vec![1]));
        completer.join().unwrap();
        let (done, _) = wait(&results, WaitFor::All, Some(Duration::from_millis(10)));
        assert_eq!(done, [0]);
    }

    #[test]
    fn as_completed_yields_in_completion_order() {
        let (slot_a, a) = pending();
        let (slot_b, b) = pending();
        let mut stream = as_completed(vec![a, b]);
        slot_b.complete(Ok(2));
        assert_eq!(stream.next(), Some((1, Ok(2))));
        slot_a.complete(Ok(1));
        assert_eq!(stream.next(), Some((0, Ok(1))));
        assert_eq!(stream.next(), None);
    }
}
