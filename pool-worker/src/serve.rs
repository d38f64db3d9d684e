//! The worker's side: announce the jobs, then run requests until the stream ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::job::Registry;
use crate::journal::{Journal, TaskLog};
use crate::payload::{self, Encoded, FrameReader, Region, SpillTo};
use crate::protocol::{
    self, DEFAULT_MAX_FRAME, ENV_SUPERVISOR_PID, ENV_WORKER_FD, Hello, Outcome, ProtocolError,
    Reply, Request,
};
use crate::slots::Slots;
use crate::sys;

/// True while a job runs; the watchdog only ends the process then (when idle, the
/// serve loop sees the end of stream itself and exits cleanly).
static BUSY: AtomicBool = AtomicBool::new(false);
/// Set once this process has started serving, so a pool built by a job is allowed.
static SERVING: AtomicBool = AtomicBool::new(false);
/// Set in a worker forked from its supervisor (no exec): it must leave with `_exit`.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Whether a supervisor started this process as a worker (its environment says so).
pub fn launched_as_worker() -> bool {
    std::env::var_os(ENV_WORKER_FD).is_some()
}

/// True in a process that a supervisor started as a worker but that builds a pool
/// instead of serving: its `main` did not call `procpool::init()` first. Building a
/// pool there would start workers that start workers, without end.
pub fn missing_init() -> bool {
    launched_as_worker() && !SERVING.load(Ordering::SeqCst)
}

/// If a supervisor started this process as a worker (or as a fork server), serve and
/// exit; otherwise return at once. `procpool::init()` calls this first thing in `main`.
pub fn serve_if_worker() {
    if let Some(fd) = std::env::var_os(protocol::ENV_ZYGOTE_FD) {
        SERVING.store(true, Ordering::SeqCst);
        leave(crate::zygote::run(&fd.to_string_lossy()));
    }
    let Some(fd) = std::env::var_os(ENV_WORKER_FD) else {
        return;
    };
    SERVING.store(true, Ordering::SeqCst);
    let code = exit_code(serve(&fd.to_string_lossy()));
    leave(code)
}

/// Serves on `fd` in a worker forked from its supervisor (the `Fork` start method),
/// then exits. The supervisor has already set up the process (parent-death signal,
/// descriptors, SIGINT); `fd` is this worker's end of its stream.
pub(crate) fn serve_forked(fd: RawFd) -> ! {
    FORKED.store(true, Ordering::SeqCst);
    SERVING.store(true, Ordering::SeqCst);
    let served = sys::adopt_stream(fd)
        .map_err(ProtocolError::from)
        .and_then(serve_stream);
    leave(exit_code(served))
}

/// Whether this process is a worker forked from its supervisor or a fork server (no
/// exec): a copy of another process, whose locks it must not rely on.
pub(crate) fn forked() -> bool {
    FORKED.load(Ordering::SeqCst)
}

/// Ends the worker process. A forked worker is a copy of a multithreaded supervisor:
/// `exit` would run handlers that may wait on locks other threads held at the fork.
fn leave(code: i32) -> ! {
    if FORKED.load(Ordering::SeqCst) {
        sys::exit_immediately(code)
    }
    std::process::exit(code)
}

fn exit_code(served: Result<(), ProtocolError>) -> i32 {
    match served {
        Ok(()) => 0,
        // The supervisor went away (closed the pool while this worker was starting,
        // or died): a normal end for a worker, nothing to report.
        Err(ProtocolError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            0
        }
        Err(e) => {
            // A worker has no channel left to report on: stderr is all there is; a
            // forked one writes it itself (std's stderr lock may be held for ever).
            let message = format!("procpool worker {}: {e}\n", std::process::id());
            if forked() {
                sys::write_stderr(message.as_bytes());
            } else {
                eprint!("{message}");
            }
            2
        }
    }
}

fn serve(fd: &str) -> Result<(), ProtocolError> {
    sys::ignore_sigint();
    let fd: i32 = fd
        .parse()
        .map_err(|_| io::Error::other(format!("{ENV_WORKER_FD}={fd:?} is not a number")))?;
    check_supervisor_alive()?;
    serve_stream(sys::adopt_stream(fd)?)
}

fn serve_stream(stream: UnixStream) -> Result<(), ProtocolError> {
    let watchdog = stream.try_clone()?;
    std::thread::Builder::new()
        .name("procpool-watchdog".into())
        .spawn(move || watch_supervisor(&watchdog))?;

    let registry = Registry::global();
    let hello = Hello {
        pid: std::process::id(),
        jobs: registry.entries().iter().map(|e| e.info()).collect(),
    };
    let mut writer = stream.try_clone()?;
    protocol::write_frame(&mut writer, &protocol::hello_frame(&hello)?)?;

    let mut reader = FrameReader::new(stream);
    let mut slots: Option<Slots> = None;
    let mut journal: Option<Journal> = None;
    // Tasks received so far: the supervisor counts the same way.
    let mut seq = 0u64;
    let mut shared = None;
    let mut mappings = payload::Mappings::default();
    while let Some(body) = reader.read_frame(DEFAULT_MAX_FRAME)? {
        let request = protocol::decode::<Request>(&body)?;
        // The request's descriptors came with its frame: take them even for a task
        // skipped below, so descriptors and frames stay paired.
        let missing = || ProtocolError::Decode("a request without its descriptors".into());
        let mut fds = (0..request.descriptors())
            .map(|_| reader.take_fd())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(missing)?
            .into_iter();
        let mut fd = || fds.next().ok_or_else(missing);
        let task = request.task();
        if let Some(task) = task {
            seq += 1;
            if slots.as_ref().is_some_and(|s| !s.start(seq - 1, task)) {
                // Taken back by the supervisor, which runs it elsewhere: skip it.
                continue;
            }
        }
        let reply = match request {
            Request::UseSlots => {
                slots = Some(Slots::adopt(fd()?)?);
                journal = Some(Journal::adopt(fd()?)?);
                continue;
            }
            Request::Init {
                job,
                codec,
                argument,
            } => match registry
                .get(job)
                .map(|e| run_busy(|| e.call(codec, &argument)))
            {
                Some(Outcome::Ok(_)) => Reply::InitDone,
                Some(other) => Reply::InitFailed {
                    message: describe(&other),
                },
                None => Reply::InitFailed {
                    message: format!("no job with index {job}"),
                },
            },
            Request::Run {
                task,
                job,
                codec,
                arguments,
            } => {
                let mut log = task_log(&mut journal, &slots, seq);
                let outcomes = match registry.get(job) {
                    Some(entry) => run_busy(|| {
                        arguments
                            .iter()
                            .map(|a| {
                                let outcome = entry.call(codec, a);
                                if let Some(log) = log.as_mut() {
                                    log.outcome(&outcome);
                                }
                                outcome
                            })
                            .collect::<Vec<_>>()
                    }),
                    None => {
                        vec![Outcome::Protocol(format!("no job with index {job}")); arguments.len()]
                    }
                };
                Reply::Done { task, outcomes }
            }
            Request::Exit { code } => leave(code),
            Request::RunBatch {
                task,
                job,
                count,
                from,
                batch,
            } => {
                let place = Place::new(task, job, count, from);
                let mut log = task_log(&mut journal, &slots, seq);
                run_batch(
                    registry,
                    place,
                    Ok(&batch),
                    SpillTo::Sealed,
                    &mut log,
                    &mut shared,
                )
            }
            Request::RunBatchShared {
                task,
                job,
                count,
                from,
                len,
            } => {
                let (arguments, scratch) = (fd()?, fd()?);
                let out = mappings
                    .scratch(scratch)
                    .map(SpillTo::Scratch)
                    .map_err(|e| format!("cannot map the task's scratch: {e}"));
                let mapped = mappings
                    .arguments(&arguments, len)
                    .map_err(|e| format!("cannot map the shared arguments: {e}"));
                let batch = match (mapped, &out) {
                    (Ok(mapped), Ok(_)) => Ok(mapped),
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(e.clone()),
                };
                let out = out.unwrap_or(SpillTo::Sealed);
                let place = Place::new(task, job, count, from);
                let mut log = task_log(&mut journal, &slots, seq);
                run_batch(registry, place, batch, out, &mut log, &mut shared)
            }
        };
        if let (Some(task), Some(slots)) = (task, &slots) {
            if !slots.finish(seq - 1, task) {
                // The supervisor stopped this task while it ran (a cancel or a time
                // limit) and is killing this worker: start nothing more, say nothing.
                loop {
                    std::thread::park();
                }
            }
        }
        match shared.take() {
            Some(Shared::Sealed(memfd)) => {
                // A large result: its memfd goes with the reply.
                let frame = protocol::frame(&reply)?;
                payload::send_with_fds(&writer, &frame, &[memfd.as_raw_fd()])?;
                continue;
            }
            // The outcomes are in the task's scratch: keep it mapped for next time.
            Some(Shared::Scratch(region)) => mappings.keep(region),
            None => {}
        }
        let failed_init = matches!(reply, Reply::InitFailed { .. });
        protocol::write_frame(&mut writer, &protocol::frame(&reply)?)?;
        if failed_init {
            leave(1);
        }
    }
    Ok(())
}

/// Where a batch's large outcomes went, for what follows its reply.
enum Shared {
    /// A sealed memfd, to attach to the reply.
    Sealed(OwnedFd),
    /// The task's scratch.
    Scratch(Region),
}

/// Runs a batch (`batch` is its encoded arguments, or why they could not be read).
/// Outcomes too large for the stream go where `out` says, and `shared` says where
/// that was.
fn run_batch(
    registry: &Registry,
    place: Place,
    batch: Result<&[u8], String>,
    out: SpillTo,
    log: &mut Option<TaskLog<'_>>,
    shared: &mut Option<Shared>,
) -> Reply {
    let Place {
        task,
        job,
        count,
        from,
    } = place;
    let ran = match (registry.get(job), batch) {
        (Some(entry), Ok(batch)) => run_busy(|| entry.call_batch(batch, from, out, log.as_mut())),
        (None, _) => Err(format!("no job with index {job}")),
        (_, Err(message)) => Err(message),
    };
    match ran {
        Ok(Encoded::Inline(outcomes)) => Reply::DoneBatch {
            task,
            outcomes: outcomes.into(),
        },
        Ok(Encoded::Sealed { fd, len }) => {
            *shared = Some(Shared::Sealed(fd));
            Reply::DoneBatchShared {
                task,
                len: len as u64,
            }
        }
        Ok(Encoded::InRegion { len, region }) => {
            *shared = Some(Shared::Scratch(region));
            Reply::DoneBatchInScratch {
                task,
                len: len as u64,
            }
        }
        Err(message) => Reply::Done {
            task,
            outcomes: vec![Outcome::Codec(message); count.saturating_sub(from) as usize],
        },
    }
}

/// Which batch a request runs, and from which of its arguments on.
struct Place {
    task: u64,
    job: u32,
    count: u32,
    from: u32,
}

impl Place {
    fn new(task: u64, job: u32, count: u32, from: u32) -> Place {
        Place {
            task,
            job,
            count,
            from,
        }
    }
}

/// The log of the task in slot `seq` (the last one received), when there is a journal.
fn task_log<'a>(
    journal: &'a mut Option<Journal>,
    slots: &'a Option<Slots>,
    seq: u64,
) -> Option<TaskLog<'a>> {
    match (journal.as_mut(), slots.as_ref()) {
        (Some(journal), Some(slots)) => Some(journal.task(slots, seq.checked_sub(1)?)),
        _ => None,
    }
}

fn run_busy<R>(f: impl FnOnce() -> R) -> R {
    BUSY.store(true, Ordering::SeqCst);
    let r = f();
    BUSY.store(false, Ordering::SeqCst);
    r
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(_) => "ok".into(),
        Outcome::Failed(m) => format!("returned an error: {m}"),
        Outcome::Panicked(m) => format!("panicked: {m}"),
        Outcome::Codec(m) | Outcome::Protocol(m) => m.clone(),
    }
}

/// The supervisor's pid is in the environment; if our parent is no longer that
/// process, the supervisor died before we got here and PR_SET_PDEATHSIG cannot help.
fn check_supervisor_alive() -> io::Result<()> {
    let Some(expected) = std::env::var(ENV_SUPERVISOR_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return Ok(());
    };
    let parent = nix::unistd::getppid().as_raw();
    if parent != expected {
        return Err(io::Error::other(format!(
            "supervisor {expected} is gone (parent is now {parent})"
        )));
    }
    Ok(())
}

/// Backs PR_SET_PDEATHSIG: when the supervisor's end of the stream closes while a job
/// runs, end the process; nobody is left to take the result.
fn watch_supervisor(stream: &UnixStream) {
    loop {
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let hung_up = fds[0].revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                });
                if hung_up {
                    while !BUSY.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    leave(0);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}
