//! The supervisor's system calls that need `unsafe`, each behind a safe function.
//! Shared memory for the `sync` primitives is in [`shm`].

pub(crate) mod shm;

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

/// Sends `signal` to worker `pid`. Sound only for a pid not yet reaped, which the
/// supervisor guarantees by reaping on the same thread and forgetting the pid then.
pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}
