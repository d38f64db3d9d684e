//! The two error types: why a task has no value ([`JobError`]) and why a pool
//! operation failed ([`Error`]).

use std::io;
use std::time::Duration;

use crate::sync::SyncError;

/// Why a task resolved without a value. Every variant says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job returned `Err`; `message` is its `Display` text.
    #[error("job failed: {message}")]
    Failed { message: String },
    /// The job panicked; the worker caught it and lives on.
    #[error("job panicked: {message}")]
    Panicked { message: String },
    /// The worker process died while running the task (signal, abort, `exit`, OOM).
    /// `exitcode` follows `multiprocessing`: `>0` exit status, `<0` minus the signal.
    /// `pid` and `exitcode` are the last worker's; `attempts` counts the runs lost
    /// (1 unless retries were configured); `cause` is what the kernel told about it.
    #[error(
        "worker {pid} was lost while running the task: {}{}{cause}",
        describe_exitcode(*.exitcode),
        if *.attempts > 1 { format!(" (after {} attempts)", .attempts) } else { String::new() }
    )]
    WorkerLost {
        pid: u32,
        exitcode: i32,
        attempts: u32,
        cause: Box<LostCause>,
    },
    /// The task ran past its time limit; its worker was killed and replaced.
    #[error("task ran past its time limit; its worker was killed and replaced")]
    Timeout,
    /// The task was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel), or
    /// a [`CancelOnDrop`](crate::CancelOnDrop) dropped before it resolved): if it had
    /// not started it never will; if it was running, its worker was killed and
    /// replaced.
    #[error("task was cancelled")]
    Cancelled,
    /// Submitted after `close()` or `terminate()`.
    #[error("pool is closed to new tasks")]
    PoolClosed,
    /// Pending or running when the pool was terminated.
    #[error("pool was terminated before the task finished")]
    Terminated,
    /// The worker executable has no job by this name (or one with other types).
    #[error("the workers have no job `{name}`{detail}")]
    UnknownJob { name: String, detail: String },
    /// An argument or result could not be encoded or decoded.
    #[error("codec error: {message}")]
    Codec { message: String },
    /// The worker sent something that breaks the protocol; it was killed.
    #[error("protocol error: {message}")]
    Protocol { message: String },
    /// Workers could not be started (bad executable, failing initializer, ...) too many
    /// times in a row; the pool gave up rather than respawn forever.
    #[error("workers cannot be started: {message}")]
    StartFailed { message: String },
    /// A timed wait ended before the task did; the task may still finish.
    #[error("waited {waited:?} and the task has not finished")]
    WaitTimeout { waited: Duration },
    /// The value was handed over already. A result hands its value over once:
    /// [`AsyncResult::get`](crate::AsyncResult::get) and
    /// [`get_timeout`](crate::AsyncResult::get_timeout) take the handle, so this comes
    /// only from polling an `AsyncResult` again after it returned `Ready`, or from a
    /// second [`Process::result`](crate::Process::result).
    #[error("the result was already taken")]
    ResultTaken,
}

impl JobError {
    /// The variant's name (`"WorkerLost"`, `"Timeout"`, ...), for logs and records.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Failed { .. } => "Failed",
            JobError::Panicked { .. } => "Panicked",
            JobError::WorkerLost { .. } => "WorkerLost",
            JobError::Timeout => "Timeout",
            JobError::Cancelled => "Cancelled",
            JobError::PoolClosed => "PoolClosed",
            JobError::Terminated => "Terminated",
            JobError::UnknownJob { .. } => "UnknownJob",
            JobError::Codec { .. } => "Codec",
            JobError::Protocol { .. } => "Protocol",
            JobError::StartFailed { .. } => "StartFailed",
            JobError::WaitTimeout { .. } => "WaitTimeout",
            JobError::ResultTaken => "ResultTaken",
        }
    }
}

/// What is known about why a worker died, beyond its exitcode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostCause {
    /// Whether the kernel's OOM killer ended it: `Some(true)` if it died of SIGKILL
    /// while the OOM-kill count of its cgroup rose, `Some(false)` if it died of SIGKILL
    /// and the count did not move, `None` when unknown (another way of dying, or no
    /// cgroup v2 `memory.events` to read). Another process of the same cgroup killed at
    /// the same moment would also raise the count: `Some(true)` means "very likely".
    pub oom_killed: Option<bool>,
    /// The worker's peak resident memory, in bytes.
    pub peak_rss: Option<u64>,
    /// Its last lines of stderr (with `PoolBuilder::capture_stderr`), oldest first.
    pub stderr_tail: Vec<String>,
}

impl std::fmt::Display for LostCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.oom_killed {
            Some(true) => write!(f, "; killed by the OOM killer")?,
            Some(false) => write!(f, "; not the OOM killer")?,
            None => {}
        }
        if let Some(rss) = self.peak_rss {
            write!(f, "; peak RSS {:.1} MiB", rss as f64 / (1 << 20) as f64)?;
        }
        if let Some(last) = self.stderr_tail.last() {
            write!(f, "; last stderr line: {last}")?;
        }
        Ok(())
    }
}

/// `multiprocessing`-style exit code in words: `-9` is "killed by SIGKILL".
pub fn describe_exitcode(exitcode: i32) -> String {
    if exitcode == EXIT_UNKNOWN {
        "ended with a status nobody can know (reaped by the system: does this program \
         ignore SIGCHLD?)"
            .into()
    } else if exitcode < 0 {
        let name = nix::sys::signal::Signal::try_from(-exitcode)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {}", -exitcode));
        format!("killed by {name} (exitcode {exitcode})")
    } else {
        format!("exited with status {exitcode}")
    }
}

/// The exitcode of a worker whose status was lost: the system reaped it (a program that
/// ignores `SIGCHLD`).
pub(crate) const EXIT_UNKNOWN: i32 = i32::MIN;

/// Per-task settings: a time limit and retries. The pool's builder sets the defaults;
/// the `*_with` methods and [`Imap`](crate::Imap) override them per call.
///
/// ```
/// use std::time::Duration;
/// let options = procpool::TaskOptions::default()
///     .timeout(Duration::from_secs(30))
///     .retries(2);
/// assert_eq!(options.retries, 2);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Longest a task may run (from when its worker starts it); past it, the task
    /// resolves [`JobError::Timeout`] and its worker is killed and replaced. A chunk
    /// of `map` is one task. `None`: no limit.
    pub timeout: Option<Duration>,
    /// How many times to re-run a task whose worker was lost (crash, kill, exit).
    /// A task that returned `Err`, panicked or timed out is never re-run.
    pub retries: u32,
}

impl TaskOptions {
    /// Sets the time limit.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Sets the number of retries after a lost worker.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
}

/// Why a pool could not be built, joined or used; with `?`, also a task's error
/// ([`JobError`]) or a shared primitive's ([`SyncError`]), so that one `main() ->
/// Result<(), procpool::Error>` takes them all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task's error, for callers that use `?` on both kinds in one function.
    #[error(transparent)]
    Job(#[from] JobError),
    /// An operation on a shared primitive (`Queue`, `Pipe`, `Event`, ...) failed, for
    /// callers that use `?` on it beside pool operations.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The first workers could not be started or did not complete their handshake.
    #[error("cannot start workers: {message}")]
    WorkerStart { message: String },
    /// This process was started as a worker, yet builds a pool instead of serving.
    #[error(
        "this process was started as a procpool worker but built a pool: call \
         procpool::init() first thing in main (in a test binary, whose main is the \
         test harness: put procpool::test_harness!() at the crate root)"
    )]
    NotInitialized,
    /// `join` before `close` or `terminate`.
    #[error("pool is still accepting tasks: call close() or terminate() before join()")]
    StillRunning,
    /// A builder setting is out of range.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// The supervisor could not set up its own resources.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}
