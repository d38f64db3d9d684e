//! The supervisor's system calls that need `unsafe`, each behind a safe function.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `command` start a worker that dies with this process and owns `fd`.
///
/// Between fork and exec the child: asks for SIGKILL when the thread that forked it
/// exits (PR_SET_PDEATHSIG; the supervisor thread forks every worker and lives as long
/// as the pool), fails the spawn if the supervisor already died before that took
/// effect, clears close-on-exec on its copy of `fd` only (other workers spawned at the
/// same time must not inherit this worker's channel), ignores SIGINT, and caps its
/// address space at `address_space` bytes if given (RLIMIT_AS: allocations past it
/// fail, which in Rust aborts the worker).
pub(crate) fn prepare_worker(
    command: &mut Command,
    fd: RawFd,
    supervisor_pid: i32,
    address_space: Option<u64>,
) {
    // SAFETY: the closure runs in the forked child before exec. It calls only
    // async-signal-safe functions (prctl, getppid, fcntl, signal, setrlimit), allocates nothing
    // (io::Error::from_raw_os_error does not allocate) and touches no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != supervisor_pid {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
            if let Some(bytes) = address_space {
                let limit = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// How a reaped worker ended.
pub(crate) struct Reaped {
    /// `multiprocessing`'s exitcode: the exit status, or minus the signal.
    pub exitcode: i32,
    /// Peak resident memory in bytes (the kernel's `ru_maxrss`).
    pub peak_rss: u64,
}

/// Reaps child `pid` if it has ended (or waits for it when `block`), with its resource
/// usage. Only the supervisor thread reaps, and it forgets the pid right after, so the
/// pid cannot be signalled after the kernel has reused it.
pub(crate) fn reap(pid: u32, block: bool) -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: wait4 writes only into the two locals passed by pointer, which
        // outlive the call.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut usage) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let exitcode = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            -libc::WTERMSIG(status)
        } else {
            // Stopped or continued: not an end; WUNTRACED/WCONTINUED are not asked for.
            return Ok(None);
        };
        return Ok(Some(Reaped {
            exitcode,
            peak_rss: (usage.ru_maxrss.max(0) as u64) * 1024,
        }));
    }
}

/// How a forked worker's standard streams are set up.
pub(crate) struct ForkStdio<'a> {
    /// Write end of the pipe that becomes its stderr (capture), if any.
    pub stderr: Option<&'a OwnedFd>,
    /// Send its stdout to /dev/null.
    pub quiet_stdout: bool,
}

/// Forks this process into a worker that serves on `fd` (the `Fork` start method) and
/// returns its pid. Must be called on the supervisor thread (see `prepare_worker`).
///
/// The child is a copy of a multithreaded process, so up to `serve_forked` it makes only
/// async-signal-safe calls: it asks for SIGKILL at its parent's death and checks the
/// parent is still there, moves its stream to descriptor 3 and closes every other one
/// above stderr (so it holds no other worker's stream or the supervisor's poller),
/// points stdin (and stdout if asked) at /dev/null, ignores SIGINT and applies the
/// address-space cap. What runs after (the serve loop) allocates; glibc's malloc is
/// fork-safe, and the loop takes no lock another thread could have held.
pub(crate) fn fork_worker(
    fd: &OwnedFd,
    supervisor_pid: i32,
    address_space: Option<u64>,
    stdio: ForkStdio<'_>,
) -> io::Result<u32> {
    let (sock, stderr) = (fd.as_raw_fd(), stdio.stderr.map(AsRawFd::as_raw_fd));
    // SAFETY: fork itself is sound to call; the child side below keeps to
    // async-signal-safe calls until it hands over to the serve loop, as documented.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: each call is an async-signal-safe system call on descriptors and
            // settings of this (child) process only; nothing here allocates.
            unsafe {
                let fail = || libc::_exit(127);
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                    || libc::getppid() != supervisor_pid
                {
                    fail();
                }
                // Park the descriptors we keep above the ones we are about to set.
                let sock_high = libc::fcntl(sock, libc::F_DUPFD, 10);
                let stderr_high = stderr.map(|e| libc::fcntl(e, libc::F_DUPFD, 10));
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if sock_high < 0 || stderr_high.is_some_and(|e| e < 0) || null < 0 {
                    fail();
                }
                libc::dup2(null, 0);
                if stdio.quiet_stdout {
                    libc::dup2(null, 1);
                }
                if let Some(e) = stderr_high {
                    libc::dup2(e, 2);
                }
                if libc::dup2(sock_high, 3) != 3 || libc::close_range(4, libc::c_uint::MAX, 0) != 0
                {
                    fail();
                }
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                if let Some(bytes) = address_space {
                    let limit = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    libc::setrlimit(libc::RLIMIT_AS, &limit);
                }
            }
            pool_worker::serve_forked(3)
        }
        pid => Ok(pid as u32),
    }
}

/// Sends `signal` to worker `pid`. Sound only for a pid not yet reaped, which the
/// supervisor guarantees by reaping on the same thread and forgetting the pid then.
pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}
