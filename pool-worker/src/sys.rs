//! The worker's few system calls that need `unsafe`, each behind a safe function.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::stat::{SFlag, fstat};

/// Takes ownership of the stream the supervisor handed over as descriptor `fd`.
///
/// Checks that `fd` is an open socket first, and marks it close-on-exec so a job that
/// starts programs does not leak the worker's channel into them (which would keep the
/// supervisor from seeing this worker's end of stream when it dies).
pub(crate) fn adopt_stream(fd: RawFd) -> io::Result<UnixStream> {
    // SAFETY: F_GETFD only reads the descriptor table; an unused number yields EBADF.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!("descriptor {fd} is not open")));
    }
    // SAFETY: `fd` is open (checked above) and was created for this process alone by
    // the supervisor, which passed its number in the environment; nothing else in this
    // process knows about it, so taking sole ownership cannot double-close anything.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stat = fstat(&owned).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        // Do not close a descriptor that turned out not to be ours.
        std::mem::forget(owned);
        return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
    }
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(UnixStream::from(owned))
}

/// Ignores SIGINT: Ctrl-C reaches the whole foreground process group, and it is the
/// supervisor that decides what an interrupt means for the work in flight.
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN involves no handler code, so no async-signal-safety
    // requirement applies, and it does not race with any handler of ours.
    let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
}

/// Ends the process at once, running no exit handlers and flushing nothing.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping exit handlers is the
    // point (see `serve::leave`).
    unsafe { libc::_exit(code) }
}
