//! The supervisor's system calls that need `unsafe`, each behind a safe function.

use std::io;
use std::os::fd::RawFd;
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
