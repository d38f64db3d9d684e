//! The supervisor thread: one event loop that owns every worker and every task.
//!
//! Roles, in the order data flows: callers put tasks on the command channel (and wake
//! the loop); the loop *dispatches* queued tasks to workers with room, *collects*
//! replies and hands the tasks' outcomes to the result handler, and *tends* the
//! workers: it reaps the dead, settles their tasks, replaces them, retires them after
//! `max_tasks_per_child`, and kills them at terminate. All process handling happens on
//! this one thread, which lives as long as the pool: PR_SET_PDEATHSIG is tied to the
//! thread that forked a worker (`Fork` workers come from the process-long forker
//! thread instead), and only the thread that reaps a pid may signal it without racing
//! pid reuse (signals go through a pidfd where the kernel has one).
//!
//! A task is owned by exactly one place at a time (the queue, or a worker's ledger,
//! `inflight`) and is consumed when resolved; this is what makes "resolves exactly
//! once" structural rather than a matter of bookkeeping. Whether a task sent to a
//! worker started is settled by the worker's slots, never by its place in the ledger,
//! and a worker's stream is read to its end before the worker is forgotten, so no
//! reply is lost with it. Resolving hands the outcome to the result handler
//! (`completion`): no user code runs on this thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use pool_worker::payload::Region;
use pool_worker::protocol::{self, Hello, Reply, Request};
use pool_worker::slots::Slots;

use crate::TaskOptions;
use crate::completion::Completions;
use crate::conn::{Conn, ReadEnd};
use crate::error::{Error, JobError, LostCause, describe_exitcode};
use crate::inflight::{Answered, Cancelled, Ledger};
use crate::launch;
use crate::launch::StartMethod;
use crate::pool::{Accepting, Config, JobTable, Regions, Shared};
use crate::result::{Delivery, Sink, reply_delivery, shared_outcomes};
use crate::resume::{self, Partial};
use crate::stderr::{DRAIN_BUDGET, Drained, StderrTap};
use crate::sys;
use crate::zygote::{Zygote, ZygoteChild};
use pool_worker::os::{self, Reaped};

/// The waker's token. Worker `n` has token `2n` for its stream and `2n + 1` for its
/// captured stderr.
pub(crate) const WAKER: Token = Token(0);
/// How long a worker whose stream closed may take to exit before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How often every worker is checked for an exit its stream did not show.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How often a worker known to be exiting is checked.
const REAP_EVERY: Duration = Duration::from_millis(2);
/// A worker is sent tasks ahead only while its tasks take less than this: for short
/// tasks a task waiting in the socket hides the round trip, for long ones it would
/// only wait behind the running task while another worker sits idle.
const PIPELINE_BELOW: Duration = Duration::from_millis(5);
/// A worker whose current task has run this long gets no task sent ahead, and the
/// tasks already sent ahead to it are taken back (revoked) to run elsewhere.
const REVOKE_AFTER: Duration = Duration::from_millis(10);

/// One unit of work on the wire: a chunk of arguments for one job.
pub(crate) struct Task {
    pub id: u64,
    /// The encoded request (`Run` or `RunBatch`), shared so requeueing copies nothing.
    pub frame: Arc<[u8]>,
    pub arguments: usize,
    pub sink: Arc<dyn Sink>,
    pub part: usize,
    /// `task` span (id, job), entered wherever the supervisor acts on the task.
    pub span: tracing::Span,
    pub options: TaskOptions,
    /// Runs of this task lost with their worker so far.
    pub lost_runs: u32,
    /// Outcomes of the arguments before the ones this task runs now, when a worker
    /// died in the middle of it (see `resume`): they go out with its own, in order.
    pub prefix: Vec<Delivery>,
    /// Queues and pipes among the arguments, counted as held until the task resolves
    /// (never read: dropping the task releases them).
    pub _holds: Vec<crate::sync::Hold>,
    /// Its shared memory (large arguments and their scratch), held until it resolves.
    pub regions: Option<Regions>,
}

impl Task {
    /// Resolves the task: its outcome goes to the result handler (after those of the
    /// arguments that ran before, on a worker that died).
    fn resolve(mut self, to: &Completions, delivery: Delivery) {
        self.span.in_scope(|| tracing::trace!("resolved"));
        let delivery = if self.prefix.is_empty() {
            delivery
        } else {
            self.prefix.push(delivery);
            Delivery::Pieces(std::mem::take(&mut self.prefix))
        };
        to.deliver(self.sink, self.part, delivery);
    }

    fn fail(self, to: &Completions, error: JobError) {
        let n = self.arguments;
        self.resolve(to, Delivery::Items(vec![Err(error); n]));
    }
}

pub(crate) enum Command {
    Submit(Vec<Task>),
    /// Resolve these tasks as `Cancelled`: drop them if queued, kill their worker if
    /// running.
    Cancel(Vec<u64>),
    Close,
    Terminate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting {
        deadline: Instant,
    },
    Ready,
    /// Ending: nothing more is sent to it (its stream is shut for writing, so it reads
    /// the end of it), what it wrote is still read, to the end; waiting for the
    /// process to end, SIGKILL at `kill_at`.
    Exiting {
        kill_at: Instant,
    },
}

struct Worker {
    pid: u32,
    /// Its stream, until read to its end (or until it broke the protocol: nothing it
    /// sends after that is believed).
    conn: Option<Conn>,
    phase: Phase,
    /// Sent and not yet answered, in the order the worker will answer.
    ledger: Ledger,
    /// The start-or-revoke slots' memfd, sent to it once its hello is in.
    /// The memfds of its slots and of its journal, sent to it once its hello is in.
    slots_fds: Option<[std::os::fd::OwnedFd; 2]>,
    /// Tasks ever given to this worker (for `max_tasks_per_child`).
    dispatched: usize,
    /// Whether its hello arrived and was accepted.
    handshaken: bool,
    /// Whether it has answered anything (its initializer or a task): until then, an
    /// exit of its own with nothing started is a failure to start (no endless respawn
    /// of a worker that dies right after its hello).
    served: bool,
    /// The supervisor ended it (a cancel, a time limit, retirement, close, terminate):
    /// its exit is no failure to start.
    ended: bool,
    /// To be replaced once idle (`max_tasks_per_child` or `max_memory_per_child`):
    /// it gets no new tasks.
    retire: bool,
    /// How long its last task ran.
    last_task: Option<Duration>,
    /// Why the supervisor ended this worker on purpose (it broke the protocol, its
    /// start failed): its started, unanswered tasks get this error instead of
    /// `WorkerLost`. (A task cancelled or past its time limit is resolved when that is
    /// decided, not here.)
    fail_with: Option<JobError>,
    /// `worker` span (pid), entered while the supervisor handles this worker.
    span: tracing::Span,
    /// Its stderr, when captured.
    stderr: Option<StderrTap>,
    /// The cgroup's OOM-kill count when it started.
    oom_kills_at_start: Option<u64>,
    /// Which fork server forked it (which reaps and signals it), if one did. A worker
    /// of a fork server that has died or been replaced died with it.
    zygote: Option<ZygoteChild>,
    /// A descriptor of the process (not for a fork server's workers, which only their
    /// server signals): signals through it never reach a reused pid.
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Worker {
    /// Whether the worker may be sent tasks ahead: its last task was short, and the
    /// one running now (if any) has not run long.
    fn pipelining(&self, now: Instant) -> bool {
        self.last_task.is_some_and(|d| d < PIPELINE_BELOW)
            && self
                .ledger
                .running(now)
                .is_none_or(|r| now.saturating_duration_since(r.started) < PIPELINE_BELOW)
    }

    /// When the running task passes its time limit, if it has one.
    fn head_deadline(&self, now: Instant) -> Option<Instant> {
        self.ledger.running(now).and_then(|r| r.deadline)
    }

    /// Whether tasks wait behind one that has run long enough to take them back.
    fn revoke_at(&self, now: Instant) -> Option<Instant> {
        let running = self.ledger.running(now)?;
        self.ledger
            .waiting_ahead()
            .then_some(running.started + REVOKE_AFTER)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoolPhase {
    Running,
    Closing,
    Terminating,
}

pub(crate) struct Supervisor {
    poll: Poll,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    workers: HashMap<Token, Worker>,
    next_token: usize,
    queue: VecDeque<Task>,
    phase: PoolPhase,
    jobs: Option<Arc<JobTable>>,
    init_frame: Option<Arc<[u8]>>,
    /// Start failures since a worker last became ready for tasks.
    start_failures: u32,
    spawn_after: Instant,
    /// Set once starting workers failed too often; nothing is respawned after.
    broken: Option<String>,
    /// Until the first workers are up, where `build()` waits for the outcome.
    ready: Option<Sender<Result<Arc<JobTable>, Error>>>,
    next_sweep: Instant,
    /// The fork server, with `StartMethod::ForkServer`.
    zygote: Option<Zygote>,
    /// Fork servers that died, still to be reaped.
    dead_zygotes: Vec<u32>,
    /// Where resolved tasks go: the result handler.
    completions: Completions,
    /// Workers whose stderr had more to read when its drain's budget ran out: drained
    /// again next turn (the pipe is edge-triggered, so no new event comes for it).
    stderr_more: Vec<Token>,
}

impl Supervisor {
    pub fn new(
        poll: Poll,
        commands: Receiver<Command>,
        shared: Arc<Shared>,
        config: Arc<Config>,
        ready: Sender<Result<Arc<JobTable>, Error>>,
        completions: Completions,
    ) -> Supervisor {
        let now = Instant::now();
        Supervisor {
            poll,
            commands,
            shared,
            config,
            workers: HashMap::new(),
            next_token: 2,
            queue: VecDeque::new(),
            phase: PoolPhase::Running,
            jobs: None,
            init_frame: None,
            start_failures: 0,
            spawn_after: now,
            broken: None,
            ready: Some(ready),
            next_sweep: now,
            zygote: None,
            dead_zygotes: Vec::new(),
            completions,
            stderr_more: Vec::new(),
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        self.replenish();
        while !self.finished() {
            let wait = if self.stderr_more.is_empty() {
                self.next_wakeup()
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "event loop failed; terminating the pool");
                self.begin_terminate(JobError::Terminated);
                break;
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    self.take_commands();
                    continue;
                }
                if token.0 % 2 == 1 {
                    self.read_stderr(Token(token.0 - 1));
                    continue;
                }
                if event.is_writable() {
                    self.flush(token);
                }
                // A hang-up or error is read too: the read finds the end of stream.
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(token);
                }
            }
            for token in std::mem::take(&mut self.stderr_more) {
                self.read_stderr(token);
            }
            self.tend();
            self.revoke_waiting();
            self.retire_spent();
            self.dispatch();
            self.replenish();
            self.fail_stranded_tasks();
            self.close_if_drained();
        }
        self.kill_all_and_reap();
        self.shared.set_finished();
    }

    /// Closed or terminated, with no worker left and nothing queued (a closing pool
    /// whose last worker died still starts another for what is queued).
    fn finished(&self) -> bool {
        self.phase != PoolPhase::Running && self.workers.is_empty() && self.queue.is_empty()
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut at = self.next_sweep;
        for w in self.workers.values() {
            match w.phase {
                Phase::Starting { deadline } => at = at.min(deadline),
                // While its stream is open, its end (read as a hang-up) wakes the loop;
                // after that, the process is about to be reapable.
                Phase::Exiting { kill_at } if w.conn.is_some() => at = at.min(kill_at),
                Phase::Exiting { .. } => at = at.min(now + REAP_EVERY),
                Phase::Ready => {
                    let next = [w.head_deadline(now), w.revoke_at(now)];
                    at = next.into_iter().flatten().fold(at, Instant::min);
                }
            }
        }
        if self.wants_workers() && self.spawn_after > now {
            at = at.min(self.spawn_after);
        }
        at.saturating_duration_since(now)
    }

    // ----- commands -----

    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Submit(tasks)) => {
                    if self.phase == PoolPhase::Running {
                        self.queue.extend(tasks);
                    } else {
                        // Callers check under the port lock first; this is a backstop.
                        for t in tasks {
                            t.fail(&self.completions, JobError::PoolClosed);
                        }
                    }
                }
                Ok(Command::Cancel(ids)) => self.cancel(&ids),
                Ok(Command::Close) => {
                    if self.phase == PoolPhase::Running {
                        tracing::debug!("closing: no new tasks, finishing the queue");
                        self.phase = PoolPhase::Closing;
                    }
                }
                Ok(Command::Terminate) => self.begin_terminate(JobError::Terminated),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.begin_terminate(JobError::Terminated);
                    return;
                }
            }
        }
    }

    /// Cancels tasks: one pass over the queue and one over the workers' ledgers,
    /// whatever the number of ids (a `map` of 100k chunks cancels 100k ids at once).
    /// A task a worker has not started is taken back; a started one is stopped by
    /// ending its worker. Replies already in a worker's stream are read first: a task
    /// that finished keeps its value.
    fn cancel(&mut self, ids: &[u64]) {
        let mut ids: HashSet<u64> = ids.iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.queue);
        for task in queue {
            if ids.remove(&task.id) {
                task.fail(&self.completions, JobError::Cancelled);
            } else {
                self.queue.push_back(task);
            }
        }
        if ids.is_empty() {
            return;
        }
        let tokens: Vec<Token> = self
            .workers
            .iter()
            .filter(|(_, w)| ids.iter().any(|id| w.ledger.holds(*id)))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.read(token);
            let Some(w) = self.workers.get_mut(&token) else {
                continue;
            };
            let mut end = false;
            for id in &ids {
                match w.ledger.cancel(*id) {
                    Cancelled::NotHere => {}
                    Cancelled::TakenBack(task) => task.fail(&self.completions, JobError::Cancelled),
                    Cancelled::Stopped(task) => {
                        task.fail(&self.completions, JobError::Cancelled);
                        end = true;
                    }
                }
            }
            if end {
                // Running: the only way to stop it is to end its worker.
                self.kill(token, "a task it runs was cancelled");
            }
        }
    }

    // ----- workers: starting -----

    fn live_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| !matches!(w.phase, Phase::Exiting { .. }))
            .count()
    }

    fn wants_workers(&self) -> bool {
        self.broken.is_none()
            && match self.phase {
                PoolPhase::Running => true,
                PoolPhase::Closing => !self.queue.is_empty(),
                PoolPhase::Terminating => false,
            }
    }

    fn replenish(&mut self) {
        while self.wants_workers()
            && self.live_workers() < self.config.processes
            && Instant::now() >= self.spawn_after
        {
            if let Err(e) = self.spawn() {
                let message = format!(
                    "cannot start {}: {e}",
                    self.config.launch.executable.display()
                );
                self.start_failed(message);
            }
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let (slots, slots_fd) = Slots::create()?;
        let journal = Region::new(pool_worker::journal::BYTES)?;
        let journal_fd = journal.fd()?;
        let mut zygote_child = None;
        let mut launched = if self.config.launch.method == StartMethod::ForkServer {
            let zygote = match &mut self.zygote {
                Some(z) if z.is_alive() => z,
                _ => {
                    if let Some(dead) = self.zygote.take() {
                        self.dead_zygotes.push(dead.pid);
                    }
                    self.zygote.insert(Zygote::start(&self.config.launch)?)
                }
            };
            let (launched, child) = zygote.fork(&self.config.launch, self.config.start_timeout)?;
            zygote_child = Some(child);
            launched
        } else {
            launch::launch(&self.config.launch)?
        };
        launched.stream.set_nonblocking(true)?;
        let mut stream = mio::net::UnixStream::from_std(launched.stream);
        let token = Token(self.next_token);
        self.next_token += 2;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let stderr = match launched.stderr.take() {
            Some(pipe) => {
                let mut pipe = mio::unix::pipe::Receiver::from(pipe);
                pipe.set_nonblocking(true)?;
                self.poll
                    .registry()
                    .register(&mut pipe, Token(token.0 + 1), Interest::READABLE)?;
                Some(StderrTap::new(pipe, self.config.stderr_lines))
            }
            None => None,
        };
        let pid = launched.pid;
        let span = tracing::info_span!("worker", pid);
        span.in_scope(|| tracing::debug!("worker started"));
        self.workers.insert(
            token,
            Worker {
                pid,
                conn: Some(Conn::new(stream, self.config.max_message_size)),
                phase: Phase::Starting {
                    deadline: Instant::now() + self.config.start_timeout,
                },
                ledger: Ledger::new(slots, journal),
                slots_fds: Some([slots_fd, journal_fd]),
                dispatched: 0,
                handshaken: false,
                served: false,
                ended: false,
                retire: false,
                last_task: None,
                fail_with: None,
                span,
                stderr,
                oom_kills_at_start: launch::cgroup_oom_kills(),
                zygote: zygote_child,
                pidfd: zygote_child
                    .is_none()
                    .then(|| sys::pidfd_open(pid))
                    .flatten(),
            },
        );
        self.publish_pids();
        Ok(())
    }

    /// A worker could not be started, died before its handshake, or its initializer
    /// failed. During `build()` that fails the build; later, failures in a row back
    /// off and, past the limit, stop respawning (no endless respawn loop).
    fn start_failed(&mut self, message: String) {
        if self.phase == PoolPhase::Terminating {
            return;
        }
        self.start_failures += 1;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(Error::WorkerStart { message }));
            self.begin_terminate(JobError::Terminated);
            return;
        }
        tracing::warn!(failures = self.start_failures, %message, "worker start failed");
        if self.start_failures >= self.config.max_start_failures {
            tracing::error!(%message, "too many worker start failures in a row; not respawning");
            self.shared
                .set_accepting(Accepting::Broken(message.clone()));
            self.broken = Some(message);
        } else {
            // 10 ms, doubling with each failure in a row, at most 1 s: quick to recover
            // from a worker killed while starting, no busy loop on a broken executable.
            let doublings = self.start_failures.saturating_sub(1).min(7);
            let backoff =
                (Duration::from_millis(10) * 2u32.pow(doublings)).min(Duration::from_secs(1));
            self.spawn_after = Instant::now() + backoff;
        }
    }

    fn on_hello(&mut self, token: Token, body: &[u8]) {
        let hello = match protocol::decode_hello(body) {
            Ok(h) => h,
            Err(e) => return self.broke(token, start_error(format!("bad handshake: {e}"))),
        };
        if let Err(message) = self.check_jobs(&hello) {
            return self.broke(token, start_error(message));
        }
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        tracing::debug!(pid = w.pid, jobs = hello.jobs.len(), "worker ready");
        w.phase = Phase::Ready;
        w.handshaken = true;
        // Every worker starts tasks through its slots, sent ahead or not: they say
        // whether and when it started each.
        if let (Some(fds), Some(conn)) = (w.slots_fds.take(), w.conn.as_mut()) {
            conn.queue(use_slots_frame(), fds.into());
        }
        if let (Some(frame), Some(conn)) = (&self.init_frame, w.conn.as_mut()) {
            w.ledger.send_init(Instant::now());
            conn.queue(frame.clone(), Vec::new());
        }
        self.flush(token);
        if self.ready.is_some() {
            let up = self
                .workers
                .values()
                .filter(|w| w.phase == Phase::Ready)
                .count();
            if up >= self.config.processes {
                if let (Some(ready), Some(jobs)) = (self.ready.take(), &self.jobs) {
                    let _ = ready.send(Ok(jobs.clone()));
                }
            }
        }
    }

    /// The first worker's job list becomes the pool's; every later one must match it.
    fn check_jobs(&mut self, hello: &Hello) -> Result<(), String> {
        if let Some(jobs) = &self.jobs {
            if jobs.infos != hello.jobs {
                return Err("its job list differs from the first worker's (was the \
                            worker executable rebuilt while the pool ran?)"
                    .into());
            }
            return Ok(());
        }
        let table = JobTable::new(hello.jobs.clone())?;
        if let Some((name, argument)) = &self.config.initializer {
            let job = table.index(name).ok_or_else(|| {
                format!("the initializer job `{name}` is not among the worker's jobs")
            })?;
            let frame = protocol::frame(&protocol::Request::Init {
                job,
                codec: pool_worker::Codec::Bincode,
                argument: argument.clone().into(),
            })
            .map_err(|e| e.to_string())?;
            self.init_frame = Some(frame.into());
        }
        self.jobs = Some(Arc::new(table));
        Ok(())
    }

    // ----- workers: I/O -----

    fn flush(&mut self, token: Token) {
        let Some(conn) = self.workers.get_mut(&token).and_then(|w| w.conn.as_mut()) else {
            return;
        };
        if let Err(e) = conn.flush() {
            // The worker is gone or going; its exit is attributed when it is reaped, and
            // what it answered before it went is read to the end of its stream.
            tracing::debug!(error = %e, "write to worker failed");
            self.close_conn(token, EXIT_GRACE);
        }
    }

    /// Reads what the worker has written, to the end of its stream if it has ended.
    fn read(&mut self, token: Token) {
        let Some(span) = self.workers.get(&token).map(|w| w.span.clone()) else {
            return;
        };
        let _worker = span.enter();
        loop {
            let Some(conn) = self.workers.get_mut(&token).and_then(|w| w.conn.as_mut()) else {
                return;
            };
            let end = conn.fill();
            let mut frames = Vec::new();
            let mut bad = None;
            loop {
                match conn.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            let partial = conn.partial_bytes();
            for frame in frames {
                if self.workers.get(&token).is_none_or(|w| w.conn.is_none()) {
                    return;
                }
                self.on_frame(token, &frame);
            }
            if let Some(e) = bad {
                let message = e.to_string();
                return self.broke(token, JobError::Protocol { message });
            }
            match end {
                Ok(ReadEnd::More) => continue,
                Ok(ReadEnd::Open) => return,
                Ok(ReadEnd::Closed) | Err(_) => {
                    let Some(w) = self.workers.get_mut(&token) else {
                        return;
                    };
                    if partial > 0 {
                        w.fail_with.get_or_insert(JobError::Protocol {
                            message: format!(
                                "stream ended inside a message ({partial} bytes of it arrived)"
                            ),
                        });
                    }
                    // Read to its end: nothing more can come.
                    if let Some(mut conn) = w.conn.take() {
                        let _ = self.poll.registry().deregister(&mut conn.stream);
                    }
                    return self.close_conn(token, EXIT_GRACE);
                }
            }
        }
    }

    fn read_stderr(&mut self, token: Token) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        let pid = w.pid;
        let Some(tap) = w.stderr.as_mut() else {
            return;
        };
        match tap.drain(pid, DRAIN_BUDGET) {
            Drained::Empty => {}
            Drained::More => {
                if !self.stderr_more.contains(&token) {
                    self.stderr_more.push(token);
                }
            }
            // At its end: stop watching, but keep the tail for the worker's exit.
            Drained::Ended => {
                let _ = self.poll.registry().deregister(&mut tap.pipe);
            }
        }
    }

    fn on_frame(&mut self, token: Token, body: &[u8]) {
        let Some(w) = self.workers.get(&token) else {
            return;
        };
        if let Phase::Starting { .. } = w.phase {
            return self.on_hello(token, body);
        }
        match protocol::decode::<Reply>(body) {
            Ok(reply) => self.on_reply(token, reply),
            Err(e) => {
                let message = e.to_string();
                self.broke(token, JobError::Protocol { message })
            }
        }
    }

    fn on_reply(&mut self, token: Token, reply: Reply) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        let answers = w.ledger.head_answered_by(&reply);
        // A shared reply's descriptor arrived with its frame: take it now, whatever
        // becomes of the reply, so descriptors and frames stay paired.
        let max = self.config.max_message_size as u64;
        let shared = match &reply {
            Reply::DoneBatchShared { len, .. } | Reply::DoneBatchInScratch { len, .. }
                if *len > max =>
            {
                Err(format!(
                    "a result of {len} bytes is larger than the limit of {max}"
                ))
            }
            _ => shared_outcomes(
                &reply,
                || w.conn.as_mut().and_then(Conn::take_fd),
                || {
                    if answers {
                        w.ledger.take_head_regions()
                    } else {
                        None
                    }
                },
            ),
        };
        let shared = match shared {
            Ok(shared) => shared,
            Err(e) => {
                let message = format!("shared results: {e}");
                return self.broke(token, JobError::Protocol { message });
            }
        };
        if !answers {
            let expected = w.ledger.describe_head();
            let got = match &reply {
                Reply::InitDone | Reply::InitFailed { .. } => "an initializer reply".into(),
                Reply::Done { task, outcomes } => {
                    format!("a reply to task {task} ({} outcomes)", outcomes.len())
                }
                Reply::DoneBatch { task, .. }
                | Reply::DoneBatchShared { task, .. }
                | Reply::DoneBatchInScratch { task, .. } => {
                    format!("a batch reply to task {task}")
                }
            };
            let message = format!("worker sent {got} while {expected} was due");
            return self.broke(token, JobError::Protocol { message });
        }
        if let Reply::InitFailed { message } = reply {
            // `Init` stays at the head: the exit then counts as a start failure.
            w.fail_with = Some(start_error(format!("the initializer failed: {message}")));
            // The worker exits after saying so.
            return self.close_conn(token, EXIT_GRACE);
        }
        let now = Instant::now();
        let ran = w
            .ledger
            .running(now)
            .map(|r| now.saturating_duration_since(r.started));
        let answered = w.ledger.answered();
        if answered.is_some() && !w.served {
            // It works: starting workers works again.
            w.served = true;
            self.start_failures = 0;
        }
        match answered {
            Some(Answered::Init) => {}
            // Resolved already (cancelled, timed out): the reply is dropped, and the
            // worker is done with the task's shared memory.
            Some(Answered::Resolved(Some(regions))) => regions.recycle(),
            Some(Answered::Resolved(None)) => {}
            Some(Answered::Task(mut t)) => {
                // The worker has answered: it touches the task's shared memory no more.
                if let Some(regions) = t.regions.take() {
                    regions.recycle();
                }
                w.last_task = ran;
                tracing::trace!(task = t.id, pid = w.pid, ?ran, "task done");
                if let Some(cap) = self.config.max_memory_per_child {
                    if launch::resident_bytes(w.pid).is_some_and(|rss| rss > cap) {
                        tracing::debug!(pid = w.pid, cap, "worker over its memory cap");
                        w.retire = true;
                        // What was sent ahead and not started runs elsewhere.
                        for back in w.ledger.take_back(false).into_iter().rev() {
                            self.queue.push_front(back);
                        }
                    }
                }
                match reply_delivery(reply, t.arguments, shared) {
                    Ok(delivery) => t.resolve(&self.completions, delivery),
                    Err(_) => t.fail(
                        &self.completions,
                        JobError::Protocol {
                            message: "a reply without its outcomes".into(),
                        },
                    ),
                }
            }
            None => {}
        }
        self.retire_if_spent(token);
    }

    /// Recycles every worker to be retired that has nothing left in flight (its last
    /// task may have left by a reply, a cancel or a take-back).
    fn retire_spent(&mut self) {
        let tokens: Vec<Token> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retire && w.phase == Phase::Ready && w.ledger.is_empty())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.retire_if_spent(token);
        }
    }

    fn retire_if_spent(&mut self, token: Token) {
        let Some(w) = self.workers.get(&token) else {
            return;
        };
        if w.retire && w.ledger.is_empty() && w.phase == Phase::Ready {
            tracing::debug!(pid = w.pid, tasks = w.dispatched, "recycling worker");
            self.close_conn(token, EXIT_GRACE);
            if let Some(w) = self.workers.get_mut(&token) {
                w.ended = true;
            }
        }
    }

    /// Sends the worker nothing more: it sees the end of its stream and exits. What it
    /// wrote is still read, to the end. The process is reaped later; it is SIGKILLed if
    /// it is still there after `grace`.
    fn close_conn(&mut self, token: Token, grace: Duration) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        if let Some(conn) = w.conn.as_mut() {
            conn.close_write();
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, Interest::READABLE);
        }
        if !matches!(w.phase, Phase::Exiting { .. }) {
            w.phase = Phase::Exiting {
                kill_at: Instant::now() + grace,
            };
        }
        self.publish_pids();
    }

    /// Signals worker `token` (through the fork server for its workers).
    fn signal(&self, token: Token, signal: Signal) {
        let Some(w) = self.workers.get(&token) else {
            return;
        };
        match (w.zygote, &self.zygote) {
            (None, _) => sys::signal_process(w.pid, w.pidfd.as_ref(), signal),
            (Some(child), Some(z)) if z.forked(child) => z.signal(child, signal),
            _ => {} // its fork server is gone, and it died with it
        }
    }

    /// Ends a worker: SIGTERM, then SIGKILL after `grace` (at once if zero).
    fn end(&mut self, token: Token, why: &str, grace: Duration) {
        if grace.is_zero() {
            return self.kill(token, why);
        }
        if let Some(w) = self.workers.get_mut(&token) {
            w.span.in_scope(|| tracing::debug!(why, "ending worker"));
            w.ended = true;
        }
        self.signal(token, Signal::SIGTERM);
        self.close_conn(token, grace);
    }

    /// Ends a worker now (SIGKILL); what it wrote before is still read.
    fn kill(&mut self, token: Token, why: &str) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        w.span.in_scope(|| tracing::debug!(why, "killing worker"));
        w.ended = true;
        self.signal(token, Signal::SIGKILL);
        self.close_conn(token, Duration::ZERO);
    }

    /// The worker broke the protocol or failed to start: nothing more it sends is
    /// believed, it is killed, and its started, unanswered tasks (or its start) fail
    /// with `error`.
    fn broke(&mut self, token: Token, error: JobError) {
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        w.span
            .in_scope(|| tracing::warn!(reason = %error, "killing worker"));
        w.fail_with.get_or_insert(error);
        if let Some(mut conn) = w.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.kill(token, "it broke the protocol");
    }

    // ----- workers: reaping -----

    /// Reaps workers that ended, kills those past their deadline.
    fn tend(&mut self) {
        let now = Instant::now();
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + SWEEP_EVERY;
        }
        for w in self.workers.values_mut() {
            w.ledger.observe(now);
        }
        let tokens: Vec<Token> = self
            .workers
            .iter()
            .filter(|(_, w)| sweep || w.phase != Phase::Ready || w.head_deadline(now).is_some())
            .map(|(t, _)| *t)
            .collect();
        if let Some(z) = &mut self.zygote {
            z.collect_exits();
        }
        self.dead_zygotes
            .retain(|&pid| !matches!(os::reap(Some(pid), false), Ok(Some(_)) | Err(_)));
        for token in tokens {
            let Some(w) = self.workers.get(&token) else {
                continue;
            };
            let reaped = match (w.zygote, &mut self.zygote) {
                (None, _) => launch::reap_worker(w.pid),
                // Its fork server reaps it and reports the exit.
                (Some(child), Some(z)) if z.forked(child) => Ok(z.take_exit(child)),
                // Its fork server is gone: it died with it, by its parent-death signal.
                (Some(_), _) => Ok(Some(Reaped {
                    pid: w.pid,
                    exitcode: -(Signal::SIGKILL as i32),
                    peak_rss: 0,
                })),
            };
            let Some(w) = self.workers.get(&token) else {
                continue;
            };
            match reaped {
                Ok(Some(reaped)) => {
                    // Everything it wrote before it died is in its stream: read it all.
                    self.read(token);
                    self.on_exit(token, reaped);
                }
                Ok(None) => match w.phase {
                    Phase::Ready if w.head_deadline(now).is_some_and(|d| now >= d) => {
                        self.time_limit(token);
                    }
                    Phase::Starting { deadline } if now >= deadline => {
                        let message = format!(
                            "worker {} did not complete its handshake within {:?} (does \
                             its main call procpool::init() first thing?)",
                            w.pid, self.config.start_timeout
                        );
                        self.broke(token, start_error(message));
                    }
                    Phase::Exiting { kill_at } if now >= kill_at => {
                        self.signal(token, Signal::SIGKILL);
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::error!(pid = w.pid, error = %e, "cannot wait for worker");
                    let message = e.to_string();
                    self.broke(token, JobError::Protocol { message });
                }
            }
        }
    }

    /// The running task of worker `token` looks past its time limit. Its reply may be
    /// in the stream already (the supervisor looks late when it is busy): read first,
    /// then decide on what the worker says it is running.
    fn time_limit(&mut self, token: Token) {
        self.read(token);
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&token) else {
            return;
        };
        if w.phase != Phase::Ready || w.head_deadline(now).is_none_or(|d| now < d) {
            return;
        }
        // Stopped in its slot, or finished meanwhile (then its reply is coming).
        let Some(task) = w.ledger.expire_head() else {
            return;
        };
        tracing::warn!(task = task.id, pid = w.pid, "task past its time limit");
        task.fail(&self.completions, JobError::Timeout);
        // What waits behind it runs elsewhere.
        for back in w.ledger.take_back(false).into_iter().rev() {
            self.queue.push_front(back);
        }
        self.end(
            token,
            "its task ran past its time limit",
            self.config.timeout_grace,
        );
    }

    fn on_exit(&mut self, token: Token, reaped: Reaped) {
        // Its last words are in the pipe already: read them before they are needed.
        for _ in 0..1024 {
            self.stderr_more.retain(|t| *t != token);
            self.read_stderr(token);
            if !self.stderr_more.contains(&token) {
                break;
            }
        }
        let Some(mut w) = self.workers.remove(&token) else {
            return;
        };
        if let Some(tap) = w.stderr.as_mut() {
            let _ = self.poll.registry().deregister(&mut tap.pipe);
        }
        let code = reaped.exitcode;
        let span = w.span.clone();
        let _worker = span.enter();
        if let Some(mut conn) = w.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.publish_pids();
        let pid = w.pid;
        let cause = lost_cause(&w, &reaped);
        let broke = matches!(w.fail_with, Some(JobError::Protocol { .. }));
        let lost = w.ledger.lost(broke);
        // Tasks it never started run elsewhere, first, in order, as if new.
        for task in lost.never_started.into_iter().rev() {
            self.queue.push_front(task);
        }
        // Died on its own before it ran anything (not ended by the supervisor, nor by a
        // SIGKILL from outside): it cannot serve, like one that failed its hello.
        let died_unused =
            !w.served && !w.ended && lost.started.is_empty() && code != -(Signal::SIGKILL as i32);
        let starting = !w.handshaken || lost.in_init || died_unused;
        if starting && self.wants_workers() {
            let message = match w.fail_with.take() {
                Some(JobError::StartFailed { message }) => message,
                Some(other) => other.to_string(),
                None if lost.in_init => format!(
                    "worker {pid} {} while running the initializer",
                    describe_exitcode(code)
                ),
                None if w.handshaken => format!(
                    "worker {pid} {} after its handshake, before it ran anything",
                    describe_exitcode(code)
                ),
                None => format!(
                    "worker {pid} {} before its handshake (does its main call \
                     procpool::init() first thing? a test binary needs \
                     procpool::test_harness!() at its crate root instead)",
                    describe_exitcode(code)
                ),
            };
            self.start_failed(message);
        }
        if lost.started.is_empty() {
            match w.fail_with.take() {
                Some(error) => tracing::warn!(pid, %error, "worker ended"),
                None => tracing::debug!(pid, exitcode = code, "worker exited"),
            }
        }
        // Tasks it started and never answered. The arguments of one that finished keep
        // their outcomes (from the worker's journal); the one that was running counts
        // as an attempt; the ones after it never started.
        let mut partial = lost.partial;
        let mut retried = Vec::new();
        for mut task in lost.started {
            if let Some(error) = &w.fail_with {
                // Ended on purpose (it broke the protocol): that is the task's error.
                tracing::warn!(task = task.id, %error, "worker ended with a task");
                task.fail(&self.completions, error.clone());
                continue;
            }
            // Whether it is known which argument was running (the journal was read);
            // if not, the whole task counts as started and lost.
            let finished = partial
                .take_if(|(id, _)| *id == task.id)
                .and_then(|(_, journaled)| keep_finished(&mut task, journaled));
            let known = finished.is_some();
            if finished.is_some_and(|n| n > 0) {
                // The argument that was running is not the one earlier losses were of:
                // retries (and attempts) are counted for it afresh.
                task.lost_runs = 0;
            }
            if task.arguments == 0 {
                // All of it had finished: its reply was lost with the worker.
                task.resolve(&self.completions, Delivery::Items(Vec::new()));
                continue;
            }
            task.lost_runs += 1;
            if task.lost_runs <= task.options.retries {
                tracing::warn!(
                    task = task.id,
                    exitcode = code,
                    attempt = task.lost_runs,
                    "worker lost with a task; retrying it"
                );
                retried.push(task);
                continue;
            }
            let error = JobError::WorkerLost {
                pid,
                exitcode: code,
                attempts: task.lost_runs,
                cause: Box::new(cause.clone()),
            };
            tracing::warn!(task = task.id, %error, "worker lost with a task");
            if task.arguments == 1 || !known {
                task.fail(&self.completions, error);
                continue;
            }
            // Only the argument that was running is lost; the rest run elsewhere.
            task.prefix.push(Delivery::Items(vec![Err(error)]));
            match resume::skip(&mut task, 1) {
                Ok(()) => {
                    task.lost_runs = 0;
                    retried.push(task);
                }
                Err(message) => task.fail(&self.completions, JobError::Protocol { message }),
            }
        }
        for task in retried.into_iter().rev() {
            self.queue.push_front(task);
        }
    }

    /// Once workers cannot be started and none is left, queued tasks would wait forever:
    /// they fail with the start failure instead.
    fn fail_stranded_tasks(&mut self) {
        let Some(message) = &self.broken else {
            return;
        };
        if self.live_workers() > 0 {
            return;
        }
        for t in self.queue.drain(..) {
            t.fail(
                &self.completions,
                JobError::StartFailed {
                    message: message.clone(),
                },
            );
        }
    }

    // ----- dispatch and shutdown -----

    fn dispatch(&mut self) {
        let per_worker = self.config.tasks_per_worker;
        let max_tasks = self.config.max_tasks_per_child;
        let now = Instant::now();
        let mut touched = Vec::new();
        while !self.queue.is_empty() {
            let Some((&token, w)) = self
                .workers
                .iter_mut()
                .filter(|(_, w)| {
                    let room = if w.pipelining(now) { per_worker } else { 1 };
                    w.phase == Phase::Ready
                        && w.conn.is_some()
                        && !w.retire
                        && w.ledger.len() < room
                        && w.ledger.can_send()
                })
                .min_by_key(|(_, w)| w.ledger.len())
            else {
                break;
            };
            let Some(mut task) = self.queue.pop_front() else {
                break;
            };
            let fds = match task.regions.as_mut().map(Regions::fds).transpose() {
                Ok(fds) => fds.unwrap_or_default(),
                Err(e) => {
                    task.fail(
                        &self.completions,
                        JobError::Protocol {
                            message: format!("the task's shared memory cannot be sent: {e}"),
                        },
                    );
                    continue;
                }
            };
            let Some(conn) = w.conn.as_mut() else { break };
            let frame = w.ledger.send(task, now);
            conn.queue(frame, fds);
            w.dispatched += 1;
            if max_tasks.is_some_and(|m| w.dispatched >= m) {
                w.retire = true;
            }
            touched.push(token);
        }
        touched.dedup();
        for token in touched {
            self.flush(token);
        }
    }

    /// Takes back the tasks sent ahead to workers whose running task has run past
    /// [`REVOKE_AFTER`], so that they run on a free worker instead of waiting. A task
    /// the worker has already started stays (the slots settle which; see
    /// `pool_worker::slots`).
    fn revoke_waiting(&mut self) {
        let now = Instant::now();
        let mut back = Vec::new();
        for w in self.workers.values_mut() {
            if w.phase != Phase::Ready || w.revoke_at(now).is_none_or(|at| now < at) {
                continue;
            }
            let taken = w.ledger.take_back(true);
            if !taken.is_empty() {
                tracing::debug!(pid = w.pid, tasks = taken.len(), "tasks taken back");
            }
            back.extend(taken);
        }
        for t in back.into_iter().rev() {
            self.queue.push_front(t);
        }
    }

    fn close_if_drained(&mut self) {
        if self.phase != PoolPhase::Closing || !self.queue.is_empty() {
            return;
        }
        if self.workers.values().any(|w| !w.ledger.is_empty()) {
            return;
        }
        let open: Vec<Token> = self
            .workers
            .iter()
            .filter(|(_, w)| !matches!(w.phase, Phase::Exiting { .. }))
            .map(|(t, _)| *t)
            .collect();
        for token in open {
            self.close_conn(token, EXIT_GRACE);
            if let Some(w) = self.workers.get_mut(&token) {
                w.ended = true;
            }
        }
    }

    /// Fails every pending task with `error`, and ends every worker: SIGTERM now,
    /// SIGKILL after the grace period.
    fn begin_terminate(&mut self, error: JobError) {
        if self.phase == PoolPhase::Terminating {
            return;
        }
        tracing::debug!(%error, "terminating");
        self.phase = PoolPhase::Terminating;
        self.shared.set_accepting(Accepting::Closed);
        for t in self.queue.drain(..) {
            t.fail(&self.completions, error.clone());
        }
        let grace = self.config.terminate_grace;
        let tokens: Vec<Token> = self.workers.keys().copied().collect();
        for token in tokens {
            let Some(w) = self.workers.get_mut(&token) else {
                continue;
            };
            for t in w.ledger.drain_tasks() {
                t.fail(&self.completions, error.clone());
            }
            self.end(token, "the pool is terminating", grace);
        }
    }

    /// The end of the loop, and the backstop if it unwinds: no worker is left
    /// running or unreaped, no task unresolved.
    fn kill_all_and_reap(&mut self) {
        // Submissions that raced with the end still resolve.
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Submit(tasks) = command {
                self.queue.extend(tasks);
            }
        }
        for t in self.queue.drain(..) {
            t.fail(&self.completions, JobError::Terminated);
        }
        let tokens: Vec<Token> = self.workers.keys().copied().collect();
        for token in tokens {
            self.signal(token, Signal::SIGKILL);
        }
        for (_, mut w) in self.workers.drain() {
            for t in w.ledger.drain_tasks() {
                t.fail(&self.completions, JobError::Terminated);
            }
            // The fork server reaps its own workers; closing its channel below ends it.
            if w.zygote.is_none() {
                let _ = os::reap(Some(w.pid), true);
            }
        }
        if let Some(z) = self.zygote.take() {
            let pid = z.pid;
            drop(z);
            let _ = os::reap(Some(pid), true);
        }
        for pid in self.dead_zygotes.drain(..) {
            let _ = os::reap(Some(pid), true);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(Error::WorkerStart {
                message: "the pool was shut down before its workers were ready".into(),
            }));
        }
    }

    fn publish_pids(&self) {
        let mut pids: Vec<u32> = self
            .workers
            .values()
            .filter(|w| !matches!(w.phase, Phase::Exiting { .. }))
            .map(|w| w.pid)
            .collect();
        pids.sort_unstable();
        self.shared.set_pids(pids);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill_all_and_reap();
        self.shared.set_finished();
    }
}

/// Keeps the outcomes of the arguments of `task` that finished on a worker that died
/// (as its journal says), and makes the task run only the arguments after them; how
/// many finished, or `None` if the journal could not be read (then nothing is known
/// of the task's arguments).
fn keep_finished(task: &mut Task, journaled: Partial) -> Option<usize> {
    let finished = journaled.items;
    if finished == 0 {
        return Some(0);
    }
    let kept = resume::finished(task, journaled).and_then(|delivery| {
        resume::skip(task, finished)?;
        task.prefix.push(delivery);
        Ok(())
    });
    if let Err(e) = &kept {
        tracing::warn!(task = task.id, error = %e, "a dead worker's journal is unreadable");
    }
    kept.ok().map(|()| finished)
}

/// What is known of why `w` died, for its `WorkerLost`.
fn lost_cause(w: &Worker, reaped: &Reaped) -> LostCause {
    let oom_killed = if reaped.exitcode == -(Signal::SIGKILL as i32) {
        match (w.oom_kills_at_start, launch::cgroup_oom_kills()) {
            (Some(before), Some(after)) => Some(after > before),
            _ => None,
        }
    } else {
        None
    };
    LostCause {
        oom_killed,
        peak_rss: Some(reaped.peak_rss).filter(|r| *r > 0),
        stderr_tail: w.stderr.as_ref().map(StderrTap::tail).unwrap_or_default(),
    }
}

/// The frame that gives a worker its start-or-revoke slots and its journal (their
/// memfds go with it).
fn use_slots_frame() -> Arc<[u8]> {
    // A unit variant always encodes.
    protocol::frame(&Request::UseSlots)
        .unwrap_or_default()
        .into()
}

fn start_error(message: String) -> JobError {
    JobError::StartFailed { message }
}
