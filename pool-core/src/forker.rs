//! The thread that forks `StartMethod::Fork` workers (of pools and `Process`es).
//!
//! A process forked from a multithreaded caller starts with every lock as it was at
//! the fork, and one that another thread held stays held for ever in the child. std's
//! stderr lock is one a job is sure to take (`eprintln!`), so the fork is made by a
//! thread that holds it across the fork: the child inherits it held by its own (only)
//! thread, and releases it. (Panics do not go through std's locks in a forked worker:
//! see `pool_worker::os::prepare_fork`.)
//!
//! Taking the lock waits for another thread's print, or for as long as a thread keeps
//! `io::stderr().lock()`, so the forking happens on a thread of its own, and a caller
//! waits for it at most [`LOCK_WAIT`]; past that, it forks by itself without the lock
//! (and says so). stdout's lock is not taken as well: holding one of the two while
//! waiting for the other could deadlock with a thread of the caller that takes them in
//! the other order.
//!
//! The thread lives as long as the process, as a worker's parent-death signal fires
//! when the thread that forked it exits.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};
use pool_worker::os::{self, ForkedWorker};

/// How long a caller waits for the forker thread (for std's stderr lock).
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// A request's states: the caller gives up on it only while it waits, and the forker
/// forks for it only if the caller has not given up.
const WAITING: u8 = 0;
const FORKING: u8 = 1;
const ABANDONED: u8 = 2;

struct Request {
    worker: ForkedWorker,
    state: Arc<AtomicU8>,
    reply: Sender<io::Result<u32>>,
}

/// The forker thread's queue, started at first use (`None` if it could not start).
fn forker() -> Option<&'static Sender<Request>> {
    static FORKER: OnceLock<Option<Sender<Request>>> = OnceLock::new();
    FORKER
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<Request>();
            let started = std::thread::Builder::new()
                .name("procpool-forker".into())
                .spawn(move || {
                    for request in rx {
                        serve(request);
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no forker thread; workers are forked without std's stderr lock");
                    None
                }
            }
        })
        .as_ref()
}

/// On the forker thread: forks for `request` with std's stderr lock held.
fn serve(request: Request) {
    let stderr = io::stderr().lock();
    if request
        .state
        .compare_exchange(WAITING, FORKING, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return; // its caller forked by itself meanwhile
    }
    match os::fork() {
        Ok(None) => {
            // The child: its only thread holds the lock, and frees it.
            drop(stderr);
            os::become_forked_worker(&request.worker)
        }
        Ok(Some(pid)) => {
            drop(stderr);
            let _ = request.reply.send(Ok(pid));
        }
        Err(e) => {
            drop(stderr);
            let _ = request.reply.send(Err(e));
        }
    }
}

/// Forks a worker set up as `worker` says; its pid. The descriptors `worker` names must
/// stay open until this returns.
pub(crate) fn fork_worker(worker: &ForkedWorker) -> io::Result<u32> {
    os::prepare_fork();
    if let Some(forker) = forker() {
        let state = Arc::new(AtomicU8::new(WAITING));
        let (reply, replied) = crossbeam_channel::bounded(1);
        let request = Request {
            worker: *worker,
            state: state.clone(),
            reply,
        };
        if forker.send(request).is_ok() {
            match replied.recv_timeout(LOCK_WAIT) {
                Ok(forked) => return forked,
                Err(RecvTimeoutError::Timeout) => {
                    if state
                        .compare_exchange(WAITING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        // It is forking this very moment: its answer comes at once.
                        return replied
                            .recv()
                            .unwrap_or_else(|_| Err(io::Error::other("the forker thread ended")));
                    }
                    tracing::warn!(
                        "std's stderr lock stayed held by another thread; forking a worker \
                         without it (an eprintln! in that worker may wait for ever)"
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {}
            }
        }
    }
    match os::fork()? {
        None => os::become_forked_worker(worker),
        Some(pid) => Ok(pid),
    }
}
