//! The caller's side: [`PoolBuilder`], [`Pool`] and the state it shares with the
//! supervisor thread.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use pool_worker::payload::{self, Encoded, Region, SpillTo};
pub use pool_worker::protocol::JobInfo;
use pool_worker::protocol::{self, DEFAULT_MAX_FRAME, Request};
use pool_worker::{Codec, Job};
use serde_bytes::ByteBuf;

use crate::completion::{self, Drained};
use crate::error::{Error, JobError, TaskOptions};
use crate::imap::Imap;
use crate::launch::{LaunchSpec, StartMethod};
use crate::result::{
    AsyncResult, Canceller, CollectSink, Delivery, OneSink, Scratch, Sink, Slot, concat_outcomes,
    concat_values, decode_delivery, decode_values, raw_delivery, wait_while,
};
use crate::supervisor::{Command, Supervisor, Task, WAKER};
use crate::sync::{Hold, collect_holds};

/// Everything the supervisor needs to know, fixed at `build()`.
pub(crate) struct Config {
    pub processes: usize,
    /// The initializer's job name and encoded argument.
    pub initializer: Option<(String, Vec<u8>)>,
    pub max_tasks_per_child: Option<usize>,
    pub launch: LaunchSpec,
    pub start_timeout: Duration,
    pub terminate_grace: Duration,
    pub max_message_size: usize,
    pub tasks_per_worker: usize,
    pub max_start_failures: u32,
    pub max_memory_per_child: Option<u64>,
    pub timeout_grace: Duration,
    /// Lines of each worker's stderr kept for `WorkerLost` (0: stderr not captured).
    pub stderr_lines: usize,
}

/// Marks a test binary whose `#[test]` entry serves as a worker; submitted by
/// `procpool::test_harness!()`. With it, the pool starts the test binary with the
/// arguments that run only that entry.
#[doc(hidden)]
pub struct TestHarness {
    pub module_path: &'static str,
}

inventory::collect!(TestHarness);

/// The name of the entry test that `procpool::test_harness!()` defines.
pub const TEST_ENTRY: &str = "__procpool_worker_entry";

/// Configures and starts a [`Pool`].
///
/// ```no_run
/// # fn main() -> Result<(), procpool::Error> {
/// procpool::init();
/// let pool = procpool::Pool::builder()
///     .processes(4)
///     .max_tasks_per_child(1000)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<(String, Result<Vec<u8>, String>)>,
    max_tasks_per_child: Option<usize>,
    worker_executable: Option<PathBuf>,
    worker_args: Vec<OsString>,
    worker_env: Vec<(OsString, OsString)>,
    start_timeout: Duration,
    terminate_grace: Duration,
    max_message_size: usize,
    tasks_per_worker: usize,
    max_start_failures: u32,
    task_options: TaskOptions,
    max_memory_per_child: Option<u64>,
    memory_limit: Option<u64>,
    timeout_grace: Duration,
    stderr_lines: usize,
    start_method: StartMethod,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            worker_executable: None,
            worker_args: Vec::new(),
            worker_env: Vec::new(),
            start_timeout: Duration::from_secs(30),
            terminate_grace: Duration::from_secs(1),
            max_message_size: DEFAULT_MAX_FRAME,
            tasks_per_worker: 8,
            max_start_failures: 5,
            task_options: TaskOptions::default(),
            max_memory_per_child: None,
            memory_limit: None,
            timeout_grace: Duration::ZERO,
            stderr_lines: 0,
            start_method: StartMethod::Spawn,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default: the number of CPUs available.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A job each worker runs once, before its first task (for example to open a
    /// connection or load a model). If it fails, that worker counts as failing to
    /// start. Default: none.
    pub fn initializer<J: Job>(mut self, _job: J, argument: J::Input) -> Self {
        self.initializer = Some((J::NAME.to_owned(), Codec::Bincode.encode(&argument)));
        self
    }

    /// Replace a worker after it has run this many tasks (a chunk of `map` counts as
    /// one task, as in Python). Default: never.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// The program to start as a worker. Default: this program itself
    /// (`current_exe()`), whose `main` calls `procpool::init()`.
    pub fn worker_executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_executable = Some(path.into());
        self
    }

    /// Arguments for the worker program. Default: none.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.worker_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable for the workers (on top of this process's
    /// environment, which they inherit). Default: none.
    pub fn worker_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.worker_env.push((key.into(), value.into()));
        self
    }

    /// How long a worker may take to start and say hello. Default: 30 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// At `terminate`, how long workers get after SIGTERM before SIGKILL. Default: 1 s.
    pub fn terminate_grace(mut self, grace: Duration) -> Self {
        self.terminate_grace = grace;
        self
    }

    /// Largest message accepted from or sent to a worker. Default: 1 GiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Most tasks in flight per worker (the running one included). A task sent ahead
    /// hides the round trip between two short tasks. Tasks are sent ahead only while
    /// the worker's last task took under 5 ms and its current one has run less than
    /// that; once the current task has run 10 ms, the tasks waiting behind it are
    /// taken back (the worker gives back what it has not started) and run on other
    /// workers, so a surprise long task does not hold short ones hostage. 1 turns
    /// sending ahead off. Default: 8.
    pub fn tasks_per_worker(mut self, n: usize) -> Self {
        self.tasks_per_worker = n;
        self
    }

    /// Worker start failures in a row after which the pool stops respawning and
    /// fails what is queued with [`JobError::StartFailed`]. Default: 5.
    pub fn max_start_failures(mut self, n: u32) -> Self {
        self.max_start_failures = n;
        self
    }

    /// Default time limit of every task; see [`TaskOptions::timeout`]. Default: none.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_options.timeout = Some(limit);
        self
    }

    /// Default retries of a task whose worker was lost; see [`TaskOptions::retries`].
    /// Default: 0.
    pub fn retries(mut self, n: u32) -> Self {
        self.task_options.retries = n;
        self
    }

    /// Replace a worker, once its task is done, whose resident memory has grown past
    /// `bytes` (billiard's `max_memory_per_child`): for jobs that leak. Checked after
    /// every task. Default: never.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Hard cap on each worker's address space (RLIMIT_AS), in bytes: an allocation
    /// past it fails, which aborts the worker (`WorkerLost`, exitcode -6) instead of
    /// pushing the machine into swap or the OOM killer. Leave room for the program
    /// itself: thread stacks and allocator arenas count too. Default: no cap.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// When a task passes its time limit, send its worker SIGTERM and wait this long
    /// before SIGKILL (so the job can clean up). Default: zero, SIGKILL at once.
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.timeout_grace = grace;
        self
    }

    /// Capture each worker's stderr instead of letting it inherit this process's: every
    /// line becomes a `tracing` event (target `procpool::worker_stderr`, level INFO),
    /// and the last `lines` of a worker that dies are attached to its `WorkerLost`
    /// (an abort or panic message is usually there). Default: 0, not captured.
    pub fn capture_stderr(mut self, lines: usize) -> Self {
        self.stderr_lines = lines;
        self
    }

    /// How workers are started: [`StartMethod::Spawn`] (default, exec),
    /// [`StartMethod::Fork`] (fork the supervisor) or [`StartMethod::ForkServer`]
    /// (forks of a fork server executed once per pool).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// Starts the workers and waits until all of them have completed their handshake.
    pub fn build(self) -> Result<Pool, Error> {
        if pool_worker::missing_init() {
            return Err(Error::NotInitialized);
        }
        let processes = match self.processes {
            Some(0) => return Err(Error::Config("processes must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.tasks_per_worker == 0 || self.tasks_per_worker > pool_worker::slots::SLOTS {
            return Err(Error::Config(format!(
                "tasks_per_worker must be between 1 and {}",
                pool_worker::slots::SLOTS
            )));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::Config(
                "max_tasks_per_child must be at least 1".into(),
            ));
        }
        let initializer = match self.initializer {
            None => None,
            Some((name, Ok(bytes))) => Some((name, bytes)),
            Some((name, Err(e))) => {
                return Err(Error::Config(format!(
                    "the argument of initializer `{name}` does not encode: {e}"
                )));
            }
        };
        if self.start_method == StartMethod::Fork
            && (self.worker_executable.is_some()
                || !self.worker_args.is_empty()
                || !self.worker_env.is_empty())
        {
            return Err(Error::Config(
                "worker_executable, worker_args and worker_env need an exec: use \
                 StartMethod::Spawn with them"
                    .into(),
            ));
        }
        let mut launch = launch_spec(self.worker_executable, self.worker_args)?;
        launch.method = self.start_method;
        launch.env = self.worker_env;
        launch.address_space = self.memory_limit;
        launch.capture_stderr = self.stderr_lines > 0;
        let config = Arc::new(Config {
            processes,
            initializer,
            max_tasks_per_child: self.max_tasks_per_child,
            launch,
            start_timeout: self.start_timeout,
            terminate_grace: self.terminate_grace,
            max_message_size: self.max_message_size,
            tasks_per_worker: self.tasks_per_worker,
            max_start_failures: self.max_start_failures.max(1),
            max_memory_per_child: self.max_memory_per_child,
            timeout_grace: self.timeout_grace,
            stderr_lines: self.stderr_lines,
        });

        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            port: Mutex::new(Port {
                tx,
                accepting: Accepting::Open,
            }),
            waker,
            status: Mutex::new(Status::default()),
            status_changed: Condvar::new(),
            next_task: AtomicU64::new(1),
            drained: Arc::default(),
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let span = tracing::info_span!("pool", processes);
        let completions = span.in_scope(|| completion::start(shared.drained.clone()))?;
        let supervisor = Supervisor::new(
            poll,
            rx,
            shared.clone(),
            config.clone(),
            ready_tx,
            completions,
        );
        let live = LivePool::new();
        let thread = std::thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                let _live = live;
                span.in_scope(|| supervisor.run())
            })?;
        let jobs = match ready_rx.recv() {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::WorkerStart {
                    message: "the supervisor thread ended during start-up".into(),
                });
            }
        };
        Ok(Pool {
            shared,
            jobs,
            processes,
            max_message_size: config.max_message_size,
            options: self.task_options,
            thread: Mutex::new(Some(thread)),
        })
    }
}

pub(crate) fn launch_spec(
    executable: Option<PathBuf>,
    args: Vec<OsString>,
) -> Result<LaunchSpec, Error> {
    if let Some(executable) = executable {
        return Ok(LaunchSpec {
            method: StartMethod::Spawn,
            executable,
            args,
            env: Vec::new(),
            address_space: None,
            quiet_stdout: false,
            capture_stderr: false,
        });
    }
    let executable = std::env::current_exe()?;
    // In a test binary the harness owns `main`: run only the entry test that serves.
    if let Some(h) = inventory::iter::<TestHarness>().next() {
        let module = h.module_path.split_once("::").map(|(_, rest)| rest);
        let test = match module {
            Some(m) => format!("{m}::{TEST_ENTRY}"),
            None => TEST_ENTRY.to_owned(),
        };
        let mut harness_args: Vec<OsString> = [
            test.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        harness_args.extend(args);
        return Ok(LaunchSpec {
            method: StartMethod::Spawn,
            executable,
            args: harness_args,
            env: Vec::new(),
            address_space: None,
            quiet_stdout: true,
            capture_stderr: false,
        });
    }
    Ok(LaunchSpec {
        method: StartMethod::Spawn,
        executable,
        args,
        env: Vec::new(),
        address_space: None,
        quiet_stdout: false,
        capture_stderr: false,
    })
}

/// Whether the pool takes new tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Accepting {
    Open,
    Closed,
    /// Workers failed to start too often; the message says why.
    Broken(String),
}

pub(crate) struct Port {
    tx: Sender<Command>,
    accepting: Accepting,
}

#[derive(Default)]
struct Status {
    pids: Vec<u32>,
    finished: bool,
}

/// What callers and the supervisor thread share.
pub(crate) struct Shared {
    /// Commands are sent under this lock, so once `accepting` leaves `Open` no task can
    /// slip into the channel behind the supervisor's back.
    port: Mutex<Port>,
    waker: mio::Waker,
    status: Mutex<Status>,
    status_changed: Condvar,
    next_task: AtomicU64,
    /// Set once every resolved task has been delivered and its callbacks run.
    drained: Arc<Drained>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data is still
    // consistent (plain assignments), so carry on rather than cascade the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn send(&self, command: Command) -> Result<(), JobError> {
        let port = relock(&self.port);
        match &port.accepting {
            Accepting::Open => {}
            Accepting::Closed => return Err(JobError::PoolClosed),
            Accepting::Broken(message) => {
                return Err(JobError::StartFailed {
                    message: message.clone(),
                });
            }
        }
        port.tx.send(command).map_err(|_| JobError::PoolClosed)?;
        drop(port);
        self.wake();
        Ok(())
    }

    /// Asks the supervisor to cancel these tasks (allowed after `close` too).
    pub fn cancel(&self, tasks: Vec<u64>) {
        let port = relock(&self.port);
        // If the supervisor is gone, every task has resolved already.
        if port.tx.send(Command::Cancel(tasks)).is_ok() {
            drop(port);
            self.wake();
        }
    }

    /// Stops accepting tasks, then sends `command` (close or terminate).
    fn stop(&self, command: Command) {
        let mut port = relock(&self.port);
        if port.accepting == Accepting::Open {
            port.accepting = Accepting::Closed;
        }
        let _ = port.tx.send(command);
        drop(port);
        self.wake();
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the supervisor thread");
        }
    }

    pub fn set_accepting(&self, accepting: Accepting) {
        let mut port = relock(&self.port);
        if port.accepting == Accepting::Open {
            port.accepting = accepting;
        }
    }

    pub fn set_pids(&self, pids: Vec<u32>) {
        relock(&self.status).pids = pids;
    }

    pub fn set_finished(&self) {
        relock(&self.status).finished = true;
        self.status_changed.notify_all();
    }

    fn is_open(&self) -> bool {
        relock(&self.port).accepting == Accepting::Open
    }

    /// Waits for the supervisor to finish; false if `deadline` came first.
    fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        wait_while(&self.status_changed, relock(&self.status), deadline, |s| {
            !s.finished
        })
        .finished
    }

    /// Waits for the supervisor to finish and every outcome to be delivered and its
    /// callbacks run (but for the callback calling this, if one does); false if
    /// `deadline` came first.
    fn wait_drained(&self, deadline: Option<Instant>) -> bool {
        self.wait_finished(deadline) && self.drained.wait(deadline)
    }
}

/// The jobs the workers offer, as announced in the first handshake.
pub(crate) struct JobTable {
    pub infos: Vec<JobInfo>,
    by_name: HashMap<String, u32>,
}

impl JobTable {
    pub fn new(infos: Vec<JobInfo>) -> Result<JobTable, String> {
        let mut by_name = HashMap::new();
        let mut duplicates = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            if let Some(first) = by_name.insert(info.name.clone(), i as u32) {
                let first = &infos[first as usize];
                duplicates.push(format!(
                    "`{}` ({} and {})",
                    info.name, first.path, info.path
                ));
            }
        }
        if !duplicates.is_empty() {
            return Err(format!(
                "the worker registers more than one job named {}; rename one with \
                 #[job(name = \"...\")]",
                duplicates.join(", ")
            ));
        }
        Ok(JobTable { infos, by_name })
    }

    pub fn index(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The wire index of `J`, checking that the workers' job of that name has the
    /// same argument and result types as the caller's.
    pub(crate) fn resolve<J: Job>(&self) -> Result<u32, JobError> {
        let index = self.index(J::NAME).ok_or_else(|| JobError::UnknownJob {
            name: J::NAME.to_owned(),
            detail: String::new(),
        })?;
        let info = &self.infos[index as usize];
        let (input, output) = (
            std::any::type_name::<J::Input>(),
            std::any::type_name::<J::Output>(),
        );
        if info.input_type != input || info.output_type != output {
            return Err(JobError::UnknownJob {
                name: J::NAME.to_owned(),
                detail: format!(
                    " taking {input} and returning {output} (theirs takes {} and returns {})",
                    info.input_type, info.output_type
                ),
            });
        }
        Ok(index)
    }
}

/// A pool of worker processes that run registered jobs.
///
/// ```no_run
/// #[procpool::job]
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(); // in a worker, this serves jobs and never returns
///     let pool = procpool::Pool::builder().processes(4).build()?;
///     let squares = pool.map(square, 0..10_000)?;
///     assert_eq!(squares[12], 144);
///     pool.close();
///     pool.join()?;
///     Ok(())
/// }
/// ```
///
/// Dropping a pool terminates it: unfinished tasks resolve as
/// [`JobError::Terminated`] and every worker is ended.
pub struct Pool {
    shared: Arc<Shared>,
    jobs: Arc<JobTable>,
    processes: usize,
    max_message_size: usize,
    options: TaskOptions,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("worker_pids", &self.worker_pids())
            .finish()
    }
}

/// Pools whose supervisor runs, in this process.
static LIVE_POOLS: AtomicUsize = AtomicUsize::new(0);

/// Counts a running supervisor. When the last one ends, the shared memory kept for
/// reuse (`pool_worker::payload`'s spare list) is freed: a program done with its pools
/// keeps none.
struct LivePool;

impl LivePool {
    fn new() -> LivePool {
        LIVE_POOLS.fetch_add(1, Ordering::SeqCst);
        LivePool
    }
}

impl Drop for LivePool {
    fn drop(&mut self) {
        if LIVE_POOLS.fetch_sub(1, Ordering::SeqCst) == 1 {
            payload::free_spare();
        }
    }
}

/// Which job a submission runs, how its arguments are encoded, and its options.
pub(crate) struct TaskSpec {
    pub index: u32,
    pub name: String,
    pub codec: Codec,
    pub options: TaskOptions,
}

impl TaskSpec {
    fn typed<J: Job>(index: u32, options: TaskOptions) -> TaskSpec {
        TaskSpec {
            index,
            name: J::NAME.to_owned(),
            codec: Codec::Bincode,
            options,
        }
    }
}

/// A task's arguments as they go on the wire.
pub(crate) enum Arguments {
    /// Each encoded on its own (the untyped path: `imap_encoded`, the CLI).
    Each(Vec<ByteBuf>),
    /// Encoded together as one batch (typed callers).
    Batch(Batch),
}

/// `count` typed arguments encoded together as one bincode `Vec`, with holds on the
/// shared handles among them while they are in flight.
pub(crate) struct Batch {
    pub count: usize,
    pub payload: Encoded,
    pub holds: Vec<Hold>,
}

/// Encodes typed arguments for the wire, as one batch.
pub(crate) fn encode_batch<T: serde::Serialize>(arguments: &[T]) -> Result<Batch, JobError> {
    let (payload, holds) = collect_holds(|| Codec::encode_payload(arguments, SpillTo::Spare));
    let payload = payload.map_err(|message| JobError::Codec {
        message: format!("argument does not encode: {message}"),
    })?;
    Ok(Batch {
        count: arguments.len(),
        payload,
        holds,
    })
}

/// [`encode_batch`], as a task's arguments.
pub(crate) fn encode_all<T: serde::Serialize>(arguments: &[T]) -> Result<Arguments, JobError> {
    encode_batch(arguments).map(Arguments::Batch)
}

fn encode_owned(arguments: Vec<Vec<u8>>) -> Result<Arguments, JobError> {
    Ok(Arguments::Each(
        arguments.into_iter().map(ByteBuf::from).collect(),
    ))
}

fn too_large(size: usize, max: usize) -> JobError {
    JobError::Codec {
        message: format!("task of {size} bytes is larger than max_message_size ({max} bytes)"),
    }
}

/// The request that runs `count` arguments encoded as one batch: inline, or, when
/// the encoder put them in a region (past `payload::SHARED_ABOVE` bytes), with the
/// task's [`Regions`], whose descriptors go with the request.
pub(crate) fn batch_request(
    task: u64,
    job: u32,
    count: usize,
    payload: Encoded,
) -> Result<(Request, Option<Regions>), JobError> {
    let count = u32::try_from(count).map_err(|_| JobError::Codec {
        message: format!("{count} arguments in one task is too many"),
    })?;
    let (arguments, len) = match payload {
        Encoded::Inline(bytes) => {
            let batch = bytes.into();
            return Ok((
                Request::RunBatch {
                    task,
                    job,
                    count,
                    from: 0,
                    batch,
                },
                None,
            ));
        }
        Encoded::InRegion { region, len } => (region, len),
        Encoded::Sealed { .. } => {
            return Err(JobError::Codec {
                message: "arguments were sealed instead of put in a region".into(),
            });
        }
    };
    let scratch = payload::spare_region().map_err(|e| JobError::Codec {
        message: format!("no shared memory for the task's outcomes: {e}"),
    })?;
    let request = Request::RunBatchShared {
        task,
        job,
        count,
        from: 0,
        len: len as u64,
    };
    Ok((request, Some(Regions { arguments, scratch })))
}

/// A task's shared memory (see `pool_worker::payload`): its arguments, which the
/// worker gets read-only, and its scratch, where the worker may write its outcomes.
/// Dropped, both are freed; only [`Regions::recycle`] puts them back for reuse, once
/// the worker has answered.
#[derive(Debug)]
pub(crate) struct Regions {
    arguments: Region,
    scratch: Region,
}

impl Regions {
    /// New descriptors to send with the request: the arguments read-only, then the
    /// scratch.
    pub fn fds(&mut self) -> std::io::Result<Vec<OwnedFd>> {
        Ok(vec![self.arguments.read_only_fd()?, self.scratch.fd()?])
    }

    /// Both back on the spare list: the worker has answered and should touch them no
    /// more (one that does anyway only garbles a later payload; no region can shrink).
    pub fn recycle(self) {
        payload::recycle(self.arguments);
        payload::recycle(self.scratch);
    }

    /// The worker's answer of `len` bytes in the scratch; the arguments go back on the
    /// spare list. The scratch is not mapped again here: its bytes are copied out
    /// when they are decoded.
    pub fn into_outcomes(self, len: u64) -> Result<Scratch, String> {
        let Regions { arguments, scratch } = self;
        payload::recycle(arguments);
        Scratch::new(scratch, len).map_err(|e| e.to_string())
    }
}

/// Encoded task bytes sent to the supervisor together, at most (besides the first
/// task and large ones, which go at once).
const SUBMIT_BATCH_BYTES: usize = 64 * 1024;

/// Python's default chunk size for `map`: `len / (4 * processes)`, rounded up.
pub fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

impl Pool {
    /// A builder with every setting at its default.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes the pool keeps.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The pids of the workers alive now (including ones still starting).
    pub fn worker_pids(&self) -> Vec<u32> {
        relock(&self.shared.status).pids.clone()
    }

    /// Runs `job(argument)` in a worker and waits for it.
    pub fn apply<J: Job>(&self, job: J, argument: J::Input) -> Result<J::Output, JobError> {
        self.apply_async(job, argument)?.get()
    }

    /// Submits `job(argument)` and returns at once with its [`AsyncResult`].
    /// Fails at once with `UnknownJob`, `Codec` or `PoolClosed`.
    pub fn apply_async<J: Job>(
        &self,
        job: J,
        argument: J::Input,
    ) -> Result<AsyncResult<J::Output>, JobError> {
        self.apply_async_with(job, argument, self.options)
    }

    /// [`apply_async`](Self::apply_async) with this call's own time limit and retries.
    pub fn apply_async_with<J: Job>(
        &self,
        _job: J,
        argument: J::Input,
        options: TaskOptions,
    ) -> Result<AsyncResult<J::Output>, JobError> {
        let index = self.jobs.resolve::<J>()?;
        let slot = Slot::new();
        let task = self.task(
            &TaskSpec::typed::<J>(index, options),
            encode_all(std::slice::from_ref(&argument))?,
            Arc::new(OneSink(slot.clone())),
            0,
        )?;
        let ids = vec![task.id];
        self.shared.send(Command::Submit(vec![task]))?;
        Ok(AsyncResult::new(slot, self.canceller(ids)))
    }

    /// Runs `job` over `inputs` and returns the results in input order, or the first
    /// error in input order (as Python's `map` does). Chunked automatically.
    pub fn map<J, I>(&self, job: J, inputs: I) -> Result<Vec<J::Output>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        self.map_async(job, inputs)?.get()
    }

    /// Like [`map`](Self::map) but keeps each input's own outcome, so successes are not
    /// lost to one failure.
    pub fn map_results<J, I>(
        &self,
        job: J,
        inputs: I,
    ) -> Result<Vec<Result<J::Output, JobError>>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        let inputs: Vec<J::Input> = inputs.into_iter().collect();
        let chunksize = default_chunksize(inputs.len(), self.processes);
        self.map_results_chunked(job, inputs, chunksize)
    }

    /// [`map_results`](Self::map_results) with an explicit chunk size. A worker that
    /// dies takes its whole chunk with it, so chunk size 1 isolates every input.
    pub fn map_results_chunked<J, I>(
        &self,
        _job: J,
        inputs: I,
        chunksize: usize,
    ) -> Result<Vec<Result<J::Output, JobError>>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        let inputs: Vec<J::Input> = inputs.into_iter().collect();
        self.submit_collect::<J, _, _>(
            inputs,
            chunksize,
            self.options,
            decode_delivery::<J::Output>,
            concat_outcomes,
        )?
        .get()
    }

    /// [`map`](Self::map) without waiting.
    pub fn map_async<J, I>(
        &self,
        job: J,
        inputs: I,
    ) -> Result<AsyncResult<Vec<J::Output>>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        let inputs: Vec<J::Input> = inputs.into_iter().collect();
        let chunksize = default_chunksize(inputs.len(), self.processes);
        self.map_async_chunked(job, inputs, chunksize)
    }

    /// [`map`](Self::map) with an explicit chunk size (arguments per task).
    pub fn map_chunked<J, I>(
        &self,
        job: J,
        inputs: I,
        chunksize: usize,
    ) -> Result<Vec<J::Output>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        self.map_async_chunked(job, inputs, chunksize)?.get()
    }

    /// [`map_async`](Self::map_async) with an explicit chunk size.
    pub fn map_async_chunked<J, I>(
        &self,
        job: J,
        inputs: I,
        chunksize: usize,
    ) -> Result<AsyncResult<Vec<J::Output>>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        self.map_async_with(job, inputs, chunksize, self.options)
    }

    /// [`map_async_chunked`](Self::map_async_chunked) with this call's own time limit
    /// and retries (per chunk: a chunk is one task).
    pub fn map_async_with<J, I>(
        &self,
        _job: J,
        inputs: I,
        chunksize: usize,
        options: TaskOptions,
    ) -> Result<AsyncResult<Vec<J::Output>>, JobError>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
    {
        let inputs: Vec<J::Input> = inputs.into_iter().collect();
        self.submit_collect::<J, _, _>(
            inputs,
            chunksize,
            options,
            decode_values::<J::Output>,
            concat_values,
        )
    }

    fn submit_collect<J: Job, P: Send + 'static, U: Send + 'static>(
        &self,
        inputs: Vec<J::Input>,
        chunksize: usize,
        options: TaskOptions,
        decode: fn(Delivery) -> P,
        finish: fn(Vec<P>) -> Result<U, JobError>,
    ) -> Result<AsyncResult<U>, JobError> {
        let index = self.jobs.resolve::<J>()?;
        let slot = Slot::new();
        if inputs.is_empty() {
            slot.complete(finish(Vec::new()));
            return Ok(AsyncResult::new(slot, None));
        }
        let chunks: Vec<&[J::Input]> = inputs.chunks(chunksize.max(1)).collect();
        let sink = Arc::new(CollectSink::new(chunks.len(), decode, finish, slot.clone()));
        let spec = TaskSpec::typed::<J>(index, options);
        // Tasks go to the supervisor as they are encoded, a few at a time, so workers
        // start on the first chunks while later ones are still being encoded.
        let mut ids = Vec::with_capacity(chunks.len());
        let mut pending = Vec::new();
        let mut pending_bytes = 0;
        let last = chunks.len() - 1;
        for (part, chunk) in chunks.into_iter().enumerate() {
            let sent = encode_all(chunk)
                .and_then(|a| self.task(&spec, a, sink.clone(), part))
                .and_then(|task| {
                    ids.push(task.id);
                    pending_bytes += task.frame.len();
                    let large = task.regions.is_some();
                    pending.push(task);
                    if part == 0 || part == last || large || pending_bytes >= SUBMIT_BATCH_BYTES {
                        pending_bytes = 0;
                        self.submit(std::mem::take(&mut pending))
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = sent {
                // The submission fails as a whole: what was sent of it is of no use now.
                self.shared.cancel(ids);
                return Err(e);
            }
        }
        Ok(AsyncResult::new(slot, self.canceller(ids)))
    }

    /// Streams `job` over `inputs` in input order, reading the inputs lazily with a
    /// bounded number of tasks in flight, so an endless iterator runs in constant
    /// memory. Chunk size 1 unless set with [`Imap::chunksize`].
    pub fn imap<'a, J, I>(&'a self, job: J, inputs: I) -> Imap<'a, J::Input, J::Output>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
        I::IntoIter: 'a,
    {
        self.typed_imap(job, inputs, true)
    }

    /// Like [`imap`](Self::imap) but yields results as they finish.
    pub fn imap_unordered<'a, J, I>(&'a self, job: J, inputs: I) -> Imap<'a, J::Input, J::Output>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
        I::IntoIter: 'a,
    {
        self.typed_imap(job, inputs, false)
    }

    fn typed_imap<'a, J, I>(
        &'a self,
        _job: J,
        inputs: I,
        ordered: bool,
    ) -> Imap<'a, J::Input, J::Output>
    where
        J: Job,
        I: IntoIterator<Item = J::Input>,
        I::IntoIter: 'a,
    {
        let spec = self
            .jobs
            .resolve::<J>()
            .map(|index| TaskSpec::typed::<J>(index, self.options));
        Imap::new(
            self,
            spec,
            Box::new(inputs.into_iter()),
            ordered,
            |chunk| encode_all(&chunk),
            decode_delivery,
        )
    }

    /// Streams a job chosen by name over arguments already encoded with `codec`,
    /// yielding each result's encoded bytes, without knowing the job's Rust types.
    /// This is how the `procpool` command runs JSON lines; Rust callers want
    /// [`imap`](Self::imap). `ordered: false` yields results as they finish; pair them
    /// with their inputs through [`Imap::with_positions`].
    pub fn imap_encoded<'a, I>(
        &'a self,
        job: &str,
        codec: Codec,
        arguments: I,
        ordered: bool,
    ) -> Imap<'a, Vec<u8>, Vec<u8>>
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: 'a,
    {
        let spec = match self.jobs.index(job) {
            Some(index) => Ok(TaskSpec {
                index,
                name: job.to_owned(),
                codec,
                options: self.options,
            }),
            None => Err(JobError::UnknownJob {
                name: job.to_owned(),
                detail: String::new(),
            }),
        };
        Imap::new(
            self,
            spec,
            Box::new(arguments.into_iter()),
            ordered,
            encode_owned,
            raw_delivery,
        )
    }

    /// The jobs the workers offer: names and argument and result type names.
    pub fn jobs(&self) -> &[JobInfo] {
        &self.jobs.infos
    }

    /// One task: the encoded arguments of `part` of a submission.
    pub(crate) fn task(
        &self,
        spec: &TaskSpec,
        arguments: Arguments,
        sink: Arc<dyn Sink>,
        part: usize,
    ) -> Result<Task, JobError> {
        let id = self.shared.next_task.fetch_add(1, Ordering::Relaxed);
        let (count, request, holds, regions) = match arguments {
            Arguments::Each(arguments) => (
                arguments.len(),
                Request::Run {
                    task: id,
                    job: spec.index,
                    codec: spec.codec,
                    arguments,
                },
                Vec::new(),
                None,
            ),
            Arguments::Batch(Batch {
                count,
                payload,
                holds,
            }) => {
                if payload.len() > self.max_message_size {
                    return Err(too_large(payload.len(), self.max_message_size));
                }
                let (request, regions) = batch_request(id, spec.index, count, payload)?;
                (count, request, holds, regions)
            }
        };
        let frame = protocol::frame(&request).map_err(|e| JobError::Codec {
            message: e.to_string(),
        })?;
        if frame.len() - 4 > self.max_message_size {
            return Err(too_large(frame.len() - 4, self.max_message_size));
        }
        Ok(Task {
            id,
            frame: frame.into(),
            arguments: count,
            sink,
            part,
            span: tracing::debug_span!("task", id, job = %spec.name),
            options: spec.options,
            lost_runs: 0,
            prefix: Vec::new(),
            _holds: holds,
            regions,
        })
    }

    fn canceller(&self, tasks: Vec<u64>) -> Option<Canceller> {
        Some(Canceller {
            shared: Arc::downgrade(&self.shared),
            tasks,
        })
    }

    pub(crate) fn submit(&self, tasks: Vec<Task>) -> Result<(), JobError> {
        self.shared.send(Command::Submit(tasks))
    }

    /// Stops accepting tasks; queued and running ones still complete. Then `join`.
    pub fn close(&self) {
        self.shared.stop(Command::Close);
    }

    /// Ends every worker now (SIGTERM, then SIGKILL after the grace period) and
    /// resolves every unfinished task with [`JobError::Terminated`]. Returns once the
    /// workers are gone (callbacks still running go on on their own thread).
    pub fn terminate(&self) {
        self.shared.stop(Command::Terminate);
        self.shared.wait_finished(None);
        self.reap_thread();
    }

    /// Waits until the pool has finished after `close` or `terminate`: its workers are
    /// gone, and every result was delivered and its callbacks run (except the callback
    /// calling this, if one does).
    pub fn join(&self) -> Result<(), Error> {
        if self.shared.is_open() {
            return Err(Error::StillRunning);
        }
        self.shared.wait_drained(None);
        self.reap_thread();
        Ok(())
    }

    /// Like [`join`](Self::join) but returns within `timeout`: `Ok(true)` if the pool
    /// finished, `Ok(false)` if it is still finishing.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        if self.shared.is_open() {
            return Err(Error::StillRunning);
        }
        let done = self
            .shared
            .wait_drained(Instant::now().checked_add(timeout));
        if done {
            self.reap_thread();
        }
        Ok(done)
    }

    fn reap_thread(&self) {
        if let Some(handle) = relock(&self.thread).take() {
            if handle.join().is_err() {
                tracing::error!("the supervisor thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}
