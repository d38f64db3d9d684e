//! [`CancelOnDrop`]: an [`AsyncResult`] whose task stops when the handle goes away.
//!
//! A plain `AsyncResult` dropped before its task resolved leaves the task running
//! (Python's `AsyncResult` and `concurrent.futures` do the same). An async caller that
//! gives up on a task (`tokio::time::timeout`, `select!`) drops the future it was
//! awaiting; with this wrapper that also cancels the task, the way dropping a tokio
//! `JoinHandle` under `abort_on_drop` would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::JobError;
use crate::result::AsyncResult;

/// An [`AsyncResult`] that cancels its task when dropped before the task resolved.
/// Made by [`AsyncResult::cancel_on_drop`].
///
/// ```no_run
/// # use std::time::Duration;
/// #[procpool::job]
/// fn slow(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
///
/// # fn main() -> Result<(), procpool::Error> {
/// procpool::init();
/// let pool = procpool::Pool::builder().processes(2).build()?;
/// // Gives up after a second, and the task stops too: its worker is replaced.
/// let r = pool.apply_async(slow, 60_000)?.cancel_on_drop();
/// assert!(matches!(
///     r.get_timeout(Duration::from_secs(1)),
///     Err(procpool::JobError::WaitTimeout { .. })
/// ));
/// # Ok(()) }
/// ```
#[must_use = "dropping it cancels the task"]
#[derive(Debug)]
pub struct CancelOnDrop<T: Send + 'static> {
    /// `None` once the value was taken or the guard disarmed.
    result: Option<AsyncResult<T>>,
}

impl<T: Send + 'static> CancelOnDrop<T> {
    pub(crate) fn new(result: AsyncResult<T>) -> Self {
        CancelOnDrop {
            result: Some(result),
        }
    }

    fn inner(&self) -> Option<&AsyncResult<T>> {
        self.result.as_ref()
    }

    /// Blocks until the task resolves and returns its value or error.
    pub fn get(mut self) -> Result<T, JobError> {
        match self.result.take() {
            Some(r) => r.get(),
            None => Err(JobError::ResultTaken),
        }
    }

    /// Like [`get`](Self::get), but after `timeout` cancels the task and returns
    /// [`JobError::WaitTimeout`].
    pub fn get_timeout(self, timeout: Duration) -> Result<T, JobError> {
        if !self.wait_timeout(timeout) {
            return Err(JobError::WaitTimeout { waited: timeout });
        }
        self.get()
    }

    /// Blocks until the task resolves or `timeout` passes; true if it resolved.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.inner().is_some_and(|r| r.wait_timeout(timeout))
    }

    /// Whether the task has resolved.
    pub fn ready(&self) -> bool {
        self.inner().is_some_and(AsyncResult::ready)
    }

    /// Cancels the task now; see [`AsyncResult::cancel`].
    pub fn cancel(&self) -> bool {
        self.inner().is_some_and(AsyncResult::cancel)
    }

    /// The plain `AsyncResult` back: dropping it no longer cancels the task.
    pub fn into_inner(mut self) -> AsyncResult<T> {
        match self.result.take() {
            Some(r) => r,
            // Every constructor sets it and only consuming methods take it.
            None => unreachable!("a CancelOnDrop always holds its result until consumed"),
        }
    }
}

impl<T: Send + 'static> Future for CancelOnDrop<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(result) = self.result.as_mut() else {
            return Poll::Ready(Err(JobError::ResultTaken));
        };
        let polled = Pin::new(result).poll(cx);
        if polled.is_ready() {
            // Resolved: nothing is left to cancel.
            self.result = None;
        }
        polled
    }
}

impl<T: Send + 'static> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        if let Some(result) = self.result.take() {
            if !result.ready() {
                tracing::debug!("a CancelOnDrop result was dropped unresolved; cancelling");
                result.cancel();
            }
        }
    }
}
