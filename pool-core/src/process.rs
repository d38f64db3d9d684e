//! [`Process`]: one registered job in a process of its own, like
//! `multiprocessing.Process`.
//!
//! A keeper thread per process starts it (so the parent-death signal is tied to a
//! thread that lives exactly as long as the child; a `Fork` child is forked by the
//! forker thread, which lives as long as the program), talks the worker protocol with it
//! (hello, one `RunBatch`, then `Exit` with a status that says whether the job
//! succeeded), and reaps it. It waits for the exit without reaping first (`waitid`
//! with `WNOWAIT`) and reaps under the same lock that `terminate`/`kill` signal under,
//! so a signal never reaches a recycled pid. Dropping the handle leaves the keeper to
//! reap the child: no zombie either way.

use std::any::Any;
use std::ffi::OsString;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use pool_worker::Job;
use pool_worker::payload::{self, Encoded, FrameReader};
use pool_worker::protocol::{self, DEFAULT_MAX_FRAME, ProtocolError, Reply, Request};
use serde::de::DeserializeOwned;

use crate::error::{Error, JobError, LostCause};
use crate::launch::{self, LaunchSpec, StartMethod};
use crate::pool::{JobTable, Regions, batch_request, encode_batch, launch_spec};
use crate::result::{Delivery, decode_values, reply_delivery, shared_outcomes};
use crate::sync::Hold;
use crate::sys;

/// Numbers the default names, `Process-1`, `Process-2`, ... as Python does.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Settings of a [`Process`] to start.
///
/// ```no_run
/// # #[procpool::job] fn greet(who: String) -> String { format!("hello {who}") }
/// let p = procpool::Process::builder()
///     .name("greeter")
///     .spawn(greet, "world".to_string())?;
/// assert_eq!(p.result()?, "hello world");
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProcessBuilder {
    name: Option<String>,
    start_method: StartMethod,
    executable: Option<PathBuf>,
    args: Vec<OsString>,
    start_timeout: Duration,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder {
            name: None,
            start_method: StartMethod::Spawn,
            executable: None,
            args: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

impl ProcessBuilder {
    /// The process's name (default `Process-N`), for `name()` and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// [`StartMethod::Spawn`] (the default) or [`StartMethod::Fork`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// The program to execute (default: this one). `Spawn` only.
    pub fn worker_executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// Arguments for the program given to `worker_executable`.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long the new process may take to announce itself before it is killed and
    /// the start counts as failed. Default 30 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts a process that runs `job(argument)` once, then exits.
    pub fn spawn<J: Job>(self, job: J, argument: J::Input) -> Result<Process<J::Output>, Error> {
        let _ = job;
        if pool_worker::missing_init() {
            return Err(Error::NotInitialized);
        }
        let mut launch = match (self.start_method, self.executable) {
            (StartMethod::ForkServer, _) => {
                return Err(Error::Config(
                    "a Process starts with StartMethod::Spawn or StartMethod::Fork".into(),
                ));
            }
            (StartMethod::Fork, Some(_)) => {
                return Err(Error::Config(
                    "worker_executable needs an exec: use StartMethod::Spawn with it".into(),
                ));
            }
            (_, executable) => launch_spec(executable, self.args)?,
        };
        launch.method = self.start_method;
        let batch = encode_batch(std::slice::from_ref(&argument))?;
        let name = self
            .name
            .unwrap_or_else(|| format!("Process-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let keeper = Keeper {
            launch,
            start_timeout: self.start_timeout,
            resolve: JobTable::resolve::<J>,
            decode: decode_value::<J::Output>,
            _holds: batch.holds,
            inner: inner.clone(),
        };
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let span = tracing::info_span!("process", name = %name, pid = tracing::field::Empty);
        std::thread::Builder::new()
            .name(format!("procpool-keeper-{name}"))
            .spawn(move || span.in_scope(|| keeper.run(started_tx, batch.payload)))?;
        let pid = match started_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                return Err(Error::WorkerStart {
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Error::WorkerStart {
                    message: "the keeper thread ended before the process started".into(),
                });
            }
        };
        Ok(Process {
            inner,
            pid,
            name,
            _t: PhantomData,
        })
    }
}

/// The job's value in a reply, type-erased for the keeper thread (`T` is the job's
/// output type; [`Process::result`] takes it back out).
type Value = Result<Box<dyn Any + Send>, JobError>;

fn decode_value<T: DeserializeOwned + Send + 'static>(delivery: Delivery) -> Value {
    let value = decode_values::<T>(delivery)?
        .pop()
        .ok_or_else(|| JobError::Protocol {
            message: "no outcome in the reply".into(),
        })?;
    Ok(Box::new(value))
}

/// One job running in a process of its own, like `multiprocessing.Process`.
///
/// `exitcode()` has `multiprocessing`'s meaning: `None` while running, `0` when the
/// job returned a value, `1` when it returned `Err` or panicked, another positive
/// number for a job that called `exit`, and minus the signal number when a signal
/// ended it (`terminate` gives `-15`, `kill` `-9`). [`result`](Process::result) gives
/// the job's value, or the [`JobError`] that says why there is none.
///
/// Dropping the handle does not stop the process; its keeper thread still reaps it,
/// so no zombie is left. A process never outlives the program that started it.
///
/// ```no_run
/// # use std::time::Duration;
/// #[procpool::job]
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let p = procpool::Process::spawn(nap, 60_000)?;
/// assert_eq!(p.join_timeout(Duration::from_millis(100)), None);
/// assert!(p.is_alive());
/// p.terminate();
/// assert_eq!(p.join(), -15);
/// assert!(matches!(p.result(), Err(procpool::JobError::Terminated)));
/// # Ok::<(), procpool::Error>(())
/// ```
pub struct Process<T> {
    inner: Arc<Inner>,
    pid: u32,
    name: String,
    _t: PhantomData<fn() -> T>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Set once the process is reaped; its pid may be reused from then on.
    exitcode: Option<i32>,
    peak_rss: Option<u64>,
    /// The job's value, or why there is none; `None` when the process went away
    /// without answering (its exitcode tells why).
    reply: Option<Value>,
    /// `terminate` or `kill` was called before the end.
    stopped: bool,
    /// A descriptor of the process, to signal it by: with SIGCHLD ignored the kernel
    /// reaps it the moment it ends, before `exitcode` is set, and its pid may be
    /// another process's by the time a signal is sent.
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Process<()> {
    /// A builder for a process with a name or another start method.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// Starts a process that runs `job(argument)` once, with default settings.
    pub fn spawn<J: Job>(job: J, argument: J::Input) -> Result<Process<J::Output>, Error> {
        ProcessBuilder::default().spawn(job, argument)
    }
}

impl<T> Process<T> {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given to the builder, or `Process-N`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process has not ended (been reaped) yet.
    pub fn is_alive(&self) -> bool {
        self.exitcode().is_none()
    }

    /// `None` while running; then the exit status, or minus the signal that ended it.
    pub fn exitcode(&self) -> Option<i32> {
        self.inner.state().exitcode
    }

    /// Waits for the process to end; returns its exitcode.
    pub fn join(&self) -> i32 {
        let mut state = self.inner.state();
        loop {
            if let Some(code) = state.exitcode {
                return code;
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits at most `timeout` for the process to end: its exitcode, or `None` if it
    /// is still running.
    pub fn join_timeout(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut state = self.inner.state();
        loop {
            if state.exitcode.is_some() {
                return state.exitcode;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends SIGTERM (the job gets no chance to clean up unless it handles it).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) {
        let mut state = self.inner.state();
        // Under the lock the keeper reaps under: until exitcode is set, the pid is
        // still this process (or its zombie), never a recycled one.
        if state.exitcode.is_none() {
            state.stopped = true;
            sys::signal_process(self.pid, state.pidfd.as_ref(), signal);
        }
    }
}

impl<T: 'static> Process<T> {
    /// Waits for the process to end, then gives the job's value, or why there is none:
    /// the job's `Failed` / `Panicked`, `Terminated` after `terminate`/`kill`,
    /// `WorkerLost` when it died another way (with its exitcode), `StartFailed` or
    /// `UnknownJob` when it never ran the job. The value is handed over once; a later
    /// call says [`JobError::ResultTaken`] (errors are given every time).
    pub fn result(&self) -> Result<T, JobError> {
        self.join();
        let mut state = self.inner.state();
        match &state.reply {
            Some(Ok(_)) => {
                let Some(Ok(value)) = state.reply.replace(Err(JobError::ResultTaken)) else {
                    unreachable!("matched just above");
                };
                value
                    .downcast::<T>()
                    .map(|v| *v)
                    .map_err(|_| JobError::Codec {
                        message: format!("the value is not a {}", std::any::type_name::<T>()),
                    })
            }
            Some(Err(e)) => Err(e.clone()),
            None if state.stopped => Err(JobError::Terminated),
            None => Err(JobError::WorkerLost {
                pid: self.pid,
                exitcode: state.exitcode.unwrap_or(0),
                attempts: 1,
                cause: Box::new(LostCause {
                    peak_rss: state.peak_rss,
                    ..LostCause::default()
                }),
            }),
        }
    }
}

impl<T> std::fmt::Debug for Process<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

/// Everything the keeper thread needs; it owns the child from start to reaping.
struct Keeper {
    launch: LaunchSpec,
    start_timeout: Duration,
    resolve: fn(&JobTable) -> Result<u32, JobError>,
    decode: fn(Delivery) -> Value,
    /// Queues and pipes in the argument, held until the child is reaped.
    _holds: Vec<Hold>,
    inner: Arc<Inner>,
}

impl Keeper {
    fn run(self, started: crossbeam_channel::Sender<std::io::Result<u32>>, batch: Encoded) {
        let launched = match launch::launch(&self.launch) {
            Ok(l) => l,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let pid = launched.pid;
        tracing::Span::current().record("pid", pid);
        self.inner.state().pidfd = sys::pidfd_open(pid);
        let _ = started.send(Ok(pid));
        let reply = self.converse(launched.stream, pid, batch);
        self.inner.state().reply = reply;
        // Wait for the end without reaping, then reap under the lock that signals are
        // sent under.
        let child = nix::unistd::Pid::from_raw(pid as i32);
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let mut state = self.inner.state();
        let reaped = pool_worker::os::reap(Some(pid), true);
        let (exitcode, peak_rss) = match reaped {
            Ok(Some(r)) => (r.exitcode, Some(r.peak_rss)),
            // Reaped by someone else (SIGCHLD ignored: the kernel reaps it; or a
            // `waitpid(-1)` elsewhere): it ended, with a status lost; 0, as CPython's
            // subprocess says then.
            _ => (0, None),
        };
        tracing::debug!(exitcode, "process ended");
        state.exitcode = Some(exitcode);
        state.peak_rss = peak_rss;
        state.pidfd = None;
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Hello, the job, and the exit request. `None` when the process went away without
    /// answering (its exitcode tells why).
    fn converse(&self, stream: UnixStream, pid: u32, batch: Encoded) -> Option<Value> {
        let mut writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                self.abandon(pid);
                return Some(Err(JobError::StartFailed {
                    message: e.to_string(),
                }));
            }
        };
        let _ = stream.set_read_timeout(Some(self.start_timeout));
        let mut reader = FrameReader::new(stream);
        let hello = match reader.read_frame(DEFAULT_MAX_FRAME) {
            Ok(Some(body)) => body,
            Ok(None) => return None,
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.abandon(pid);
                return Some(Err(JobError::StartFailed {
                    message: format!("no handshake within {:?}", self.start_timeout),
                }));
            }
            Err(_) => return None,
        };
        // A socket option: the writer's handle clears it for the reader's too.
        let _ = writer.set_read_timeout(None);
        let job = protocol::decode_hello(&hello)
            .map_err(|e| JobError::StartFailed {
                message: e.to_string(),
            })
            .and_then(|hello| {
                JobTable::new(hello.jobs).map_err(|message| JobError::StartFailed { message })
            })
            .and_then(|table| (self.resolve)(&table));
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                let _ = send(&mut writer, &Request::Exit { code: 1 });
                return Some(Err(e));
            }
        };
        let (request, mut regions) = match batch_request(1, job, 1, batch) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut writer, &Request::Exit { code: 1 });
                return Some(Err(e));
            }
        };
        let sent = match regions.as_mut().map(Regions::fds).transpose() {
            Ok(fds) => {
                let fds: Vec<_> = fds.iter().flatten().map(AsRawFd::as_raw_fd).collect();
                protocol::frame(&request)
                    .and_then(|frame| Ok(payload::send_with_fds(&writer, &frame, &fds)?))
            }
            Err(e) => Err(e.into()),
        };
        if sent.is_err() {
            return None;
        }
        let Ok(Some(body)) = reader.read_frame(DEFAULT_MAX_FRAME) else {
            // The process went away: its exitcode tells why.
            return None;
        };
        let delivery = protocol::decode::<Reply>(&body)
            .map_err(|e| e.to_string())
            .and_then(|reply| {
                let shared = shared_outcomes(&reply, || reader.take_fd(), || regions.take())
                    .map_err(|e| format!("shared result: {e}"))?;
                reply_delivery(reply, 1, shared).map_err(|other| format!("unexpected {other:?}"))
            });
        // The worker has answered: it touches the shared memory no more.
        if let Some(regions) = regions {
            regions.recycle();
        }
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(message) => {
                self.abandon(pid);
                return Some(Err(JobError::Protocol { message }));
            }
        };
        // Decoded once, here: the exit status says whether the job succeeded.
        let value = (self.decode)(delivery);
        let code = if value.is_ok() { 0 } else { 1 };
        let _ = send(&mut writer, &Request::Exit { code });
        Some(value)
    }

    /// Kills a process that broke the protocol or never announced itself (this thread
    /// has not reaped it yet, so the pid is still its own, or its pidfd is used).
    fn abandon(&self, pid: u32) {
        let state = self.inner.state();
        sys::signal_process(pid, state.pidfd.as_ref(), Signal::SIGKILL);
    }
}

fn send(writer: &mut UnixStream, request: &Request) -> Result<(), ProtocolError> {
    protocol::write_frame(writer, &protocol::frame(request)?)?;
    Ok(())
}
