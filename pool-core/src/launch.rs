//! Starting one worker process with its end of a fresh stream.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use pool_worker::os::{self, ForkedWorker, Reaped};
use pool_worker::protocol::{ENV_SUPERVISOR_PID, ENV_WORKER_FD};

use crate::sys;

/// How a pool starts its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartMethod {
    /// Execute the worker program (this program unless another is given): a fresh
    /// process, always safe. The default.
    #[default]
    Spawn,
    /// Fork the supervisor itself: no exec, so the fastest start, and the worker has
    /// every job this program has. The child is a copy of a multithreaded process: it
    /// only serves jobs, and a job must not rely on locks or threads of the parent
    /// (what Python's `fork` method warns about too). Refuses `worker_executable`,
    /// `worker_args` and `worker_env`, which need an exec.
    ///
    /// What the pool does so that a worker does not wait for ever on a lock another
    /// thread of the caller held at the fork: a panic in the worker is reported by
    /// procpool's own panic hook (set in the caller before its first fork, handing the
    /// caller's own panics to the hook that was there), which writes to descriptor 2
    /// without std's locks and without a backtrace; and std's stderr lock is held
    /// across the fork by the forking thread (waiting at most 1 s for it), so
    /// `eprintln!` works in the worker. Not covered: std's stdout lock (a `println!`
    /// in the worker waits for ever if another thread was inside one at the fork),
    /// a panic hook set after the pool starts (it replaces procpool's), and any lock
    /// of the program's own. Where that matters, use [`ForkServer`](Self::ForkServer).
    /// Under the libtest harness, `print!`/`eprint!` in a forked worker go to the
    /// harness's per-thread capture, not to the descriptors: write to
    /// `io::stdout()`/`io::stderr()` directly there.
    Fork,
    /// Execute the worker program once as a fork server, which forks each worker: as
    /// fast to start as `Fork`, but the workers are copies of a fresh single-purpose
    /// process, not of the supervisor with its threads and locks.
    ForkServer,
}

/// How to start a worker: which program, with which arguments.
#[derive(Clone, Debug)]
pub(crate) struct LaunchSpec {
    pub method: StartMethod,
    pub executable: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment variables for the worker.
    pub env: Vec<(OsString, OsString)>,
    /// Hard cap on the worker's address space (RLIMIT_AS), in bytes.
    pub address_space: Option<u64>,
    /// Send the worker's stdout to /dev/null (a test harness prints its own chatter).
    pub quiet_stdout: bool,
    /// Pipe the worker's stderr to the supervisor (for `capture_stderr`).
    pub capture_stderr: bool,
}

/// A started worker: its pid, the supervisor's end of its stream, and its stderr when
/// captured.
pub(crate) struct Launched {
    pub pid: u32,
    pub stream: UnixStream,
    pub stderr: Option<OwnedFd>,
}

/// Starts one worker. The child end of the stream reaches the worker as an inherited
/// descriptor named in the environment: no listening socket and no `accept` that could
/// wait forever for a worker that died before connecting.
/// Starts a worker by exec (`Spawn`) or by forking this process (`Fork`); `ForkServer`
/// workers come from [`Zygote::fork`](crate::zygote::Zygote::fork) instead.
pub(crate) fn launch(spec: &LaunchSpec) -> io::Result<Launched> {
    match spec.method {
        StartMethod::Fork => fork(spec),
        StartMethod::Spawn | StartMethod::ForkServer => {
            let (ours, theirs) = UnixStream::pair()?;
            let (pid, stderr) = spawn(spec, OwnedFd::from(theirs), ENV_WORKER_FD)?;
            Ok(Launched {
                pid,
                stream: ours,
                stderr,
            })
        }
    }
}

/// The worker's stderr pipe, when it is captured: (read end, write end).
pub(crate) fn stderr_pipe(spec: &LaunchSpec) -> io::Result<Option<(OwnedFd, OwnedFd)>> {
    if !spec.capture_stderr {
        return Ok(None);
    }
    Ok(Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?))
}

fn fork(spec: &LaunchSpec) -> io::Result<Launched> {
    let (ours, theirs) = UnixStream::pair()?;
    let pipe = stderr_pipe(spec)?;
    let worker = ForkedWorker {
        stream: theirs.as_raw_fd(),
        stderr: pipe.as_ref().map(|(_, write)| write.as_raw_fd()),
        quiet_stdout: spec.quiet_stdout,
        address_space: spec.address_space,
        parent: std::process::id() as i32,
    };
    // `theirs` and the pipe stay open until the fork is done.
    let pid = crate::forker::fork_worker(&worker)?;
    Ok(Launched {
        pid,
        stream: ours,
        stderr: pipe.map(|(read, _)| read),
    })
}

/// Executes the worker program with `theirs` inherited and named in `env_var`; returns
/// its pid and its stderr pipe when captured.
pub(crate) fn spawn(
    spec: &LaunchSpec,
    theirs: OwnedFd,
    env_var: &str,
) -> io::Result<(u32, Option<OwnedFd>)> {
    let mut command = Command::new(&spec.executable);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(env_var, theirs.as_raw_fd().to_string())
        .env(ENV_SUPERVISOR_PID, std::process::id().to_string())
        // A worker must never read the supervisor's stdin (the CLI reads its input there).
        .stdin(Stdio::null());
    if spec.quiet_stdout {
        command.stdout(Stdio::null());
    }
    if spec.capture_stderr {
        command.stderr(Stdio::piped());
    }
    sys::prepare_worker(
        &mut command,
        theirs.as_raw_fd(),
        std::process::id() as i32,
        spec.address_space,
    );
    let mut child = command.spawn()?;
    drop(theirs);
    // From here the supervisor handles the process by pid: it alone reaps it (wait4,
    // for the resource usage), and dropping `Child` neither waits nor kills.
    Ok((child.id(), child.stderr.take().map(OwnedFd::from)))
}

/// Reaps worker `pid` (a child of this process) if it has ended.
///
/// ECHILD means that someone else reaped it: the kernel itself when SIGCHLD is
/// ignored (SIG_IGN or SA_NOCLDWAIT), or a `waitpid(-1)` elsewhere in the program. The
/// worker has ended all the same, and its pid may already be another process's: it
/// is reported as ended with an unknown status (`EXIT_UNKNOWN`: CPython's subprocess
/// says 0, bpo-15756, but a lost task's error should not claim a clean exit), and must
/// never be signalled by pid again.
pub(crate) fn reap_worker(pid: u32) -> io::Result<Option<Reaped>> {
    match os::reap(Some(pid), false) {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            tracing::warn!(
                pid,
                "a worker was reaped by someone else (is SIGCHLD ignored?); its exit \
                 status is lost"
            );
            Ok(Some(Reaped {
                pid,
                exitcode: crate::error::EXIT_UNKNOWN,
                peak_rss: 0,
            }))
        }
        reaped => reaped,
    }
}

/// The number of OOM kills in this process's memory cgroup so far: cgroup v2's
/// `memory.events`, or v1's `memory.oom_control`; `None` where neither is readable.
pub(crate) fn cgroup_oom_kills() -> Option<u64> {
    static COUNTER: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let path = COUNTER.get_or_init(|| {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let v1 = cgroups.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            rest.strip_prefix("memory:")
        });
        let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
        [
            v1.map(|d| format!("/sys/fs/cgroup/memory{}/memory.oom_control", d.trim_end())),
            v2.map(|d| format!("/sys/fs/cgroup{}/memory.events", d.trim_end())),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    });
    let counters = std::fs::read_to_string(path.as_ref()?).ok()?;
    counters
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page = *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as u64)
    });
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}
