//! The supervisor's system calls that need `unsafe`, each behind a safe function.
//! Shared memory for the `sync` primitives is in [`shm`].

pub(crate) mod shm;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
/// supervisor guarantees by reaping on the same thread and forgetting the pid then
/// (unless the kernel reaps children itself: see [`signal_process`]).
pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// A descriptor that refers to process `pid` for as long as it is held, whatever
/// becomes of the pid (`pidfd_open`, Linux 5.3); `None` where the kernel lacks it.
///
/// Open it right after the child is started, while the pid is surely the child's: a
/// child is a zombie until reaped, unless SIGCHLD is ignored, when the kernel reaps
/// it at once; even then its pid would have to be reused within the moment between
/// its start and this call.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just created this descriptor for this process; it is ours.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to process `pid`, through `pidfd` when there is one: then a process
/// that has ended (even one the kernel reaped itself, its pid already reused: SIGCHLD
/// set to SIG_IGN, or a `waitpid(-1)` elsewhere in the program) is never confused with
/// another. Without a pidfd, as [`signal`].
pub(crate) fn signal_process(pid: u32, pidfd: Option<&OwnedFd>, signal: nix::sys::signal::Signal) {
    let Some(pidfd) = pidfd else {
        return self::signal(pid, signal);
    };
    // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number, a null
    // siginfo (the kernel fills in a default one) and flags 0; it touches no memory of
    // ours. On a process that has ended it fails with ESRCH and does nothing.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}
