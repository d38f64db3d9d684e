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
    let owned = adopt_fd(fd)?;
    let stat = fstat(&owned).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        // Do not close a descriptor that turned out not to be ours.
        std::mem::forget(owned);
        return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
    }
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(UnixStream::from(owned))
}

/// Takes ownership of descriptor `fd`, which the process that started this one handed
/// over (its number in the environment): checks it is open, marks it close-on-exec.
pub(crate) fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor table; an unused number yields EBADF.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!("descriptor {fd} is not open")));
    }
    // SAFETY: `fd` is open (checked above) and was created for this process alone by
    // its parent, which passed its number in the environment; nothing else in this
    // process knows about it, so taking sole ownership cannot double-close anything.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(owned)
}

/// Takes ownership of a descriptor just received with SCM_RIGHTS.
pub(crate) fn own_received(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process while delivering the message;
    // nothing else refers to it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Ignores SIGINT: Ctrl-C reaches the whole foreground process group, and it is the
/// supervisor that decides what an interrupt means for the work in flight.
pub(crate) fn ignore_sigint() {
    // SAFETY: installing SIG_IGN involves no handler code, so no async-signal-safety
    // requirement applies, and it does not race with any handler of ours.
    let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
}

/// Restores SIGCHLD's default action (and clears SA_NOCLDWAIT) in the fork server: an
/// ignored SIGCHLD is inherited through exec, and with it the kernel would reap the
/// workers itself, so their exits could not be reported.
pub(crate) fn default_sigchld() {
    // SAFETY: installing SIG_DFL involves no handler code, so no async-signal-safety
    // requirement applies, and it does not race with any handler of ours.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
}

/// Writes `bytes` to descriptor 2 with write(2) itself: no lock of std's stderr,
/// which a forked worker may have inherited held. Errors are dropped (there is nowhere
/// left to report them).
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice of `bytes.len()` bytes.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return;
        }
    }
}

/// Ends the process at once, running no exit handlers and flushing nothing.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping exit handlers is the
    // point (see `serve::leave`).
    unsafe { libc::_exit(code) }
}

/// How a process just forked from a supervisor or zygote becomes a worker.
#[derive(Clone, Copy, Debug)]
pub struct ForkedWorker {
    /// Its end of its stream to the supervisor.
    pub stream: RawFd,
    /// Write end of a pipe to become its stderr (captured stderr), if any.
    pub stderr: Option<RawFd>,
    /// Send its stdout to /dev/null.
    pub quiet_stdout: bool,
    /// Cap its address space (RLIMIT_AS), in bytes.
    pub address_space: Option<u64>,
    /// The pid of the process that forked it, which must still be its parent.
    pub parent: i32,
}

/// In a process just forked from a multithreaded parent: sets the worker up and serves,
/// never returning.
///
/// Until it hands over to the serve loop it makes only async-signal-safe calls: it asks
/// for SIGKILL at its parent's death and checks the parent is still there, moves its
/// stream to descriptor 3 and closes every other one above stderr (so it holds no other
/// worker's stream, nor the parent's poller or control socket), points stdin (and stdout
/// if asked) at /dev/null, routes stderr to the capture pipe if any, ignores SIGINT and
/// applies the address-space cap. The serve loop allocates after that (glibc's malloc is
/// fork-safe) and takes no lock of std's that another thread of the parent could have
/// held: a panic is reported by this crate's own hook, which the parent set before
/// forking (`prepare_fork`), and std's stderr lock was held across the fork by the
/// forking thread, so the child has it free. What a job itself locks (std's stdout lock
/// included) is the job's business: see `StartMethod::Fork`.
pub fn become_forked_worker(w: &ForkedWorker) -> ! {
    // SAFETY: each call is an async-signal-safe system call on descriptors and settings
    // of this (child) process only; nothing here allocates or takes a lock.
    unsafe {
        let fail = || libc::_exit(127);
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
            || libc::getppid() != w.parent
        {
            fail();
        }
        // Park the descriptors we keep above the ones we are about to set.
        let stream = libc::fcntl(w.stream, libc::F_DUPFD, 10);
        let stderr = w.stderr.map(|e| libc::fcntl(e, libc::F_DUPFD, 10));
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if stream < 0 || stderr.is_some_and(|e| e < 0) || null < 0 {
            fail();
        }
        libc::dup2(null, 0);
        if w.quiet_stdout {
            libc::dup2(null, 1);
        }
        if let Some(e) = stderr {
            libc::dup2(e, 2);
        }
        if libc::dup2(stream, 3) != 3 || !close_from(4) {
            fail();
        }
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        if let Some(bytes) = w.address_space {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
        }
    }
    crate::serve::serve_forked(3)
}

/// Closes every descriptor numbered `lowest` or above; whether it could. Only system
/// calls, into a buffer on the stack: sound between fork and exec, and in a forked
/// child of a multithreaded process.
///
/// `close_range` needs Linux 5.9; before it, the descriptors listed in
/// `/proc/self/fd` are closed (as CPython's `_posixsubprocess` does), and without
/// `/proc` every number up to the descriptor limit.
pub(crate) fn close_from(lowest: libc::c_int) -> bool {
    // SAFETY: close_range takes three integers and touches no memory of ours.
    let closed = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lowest as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    closed == 0 || close_listed(lowest) || close_counting(lowest)
}

/// [`close_from`] by the entries of `/proc/self/fd`; false if it cannot be read.
fn close_listed(lowest: libc::c_int) -> bool {
    // SAFETY: a C string literal and flags; a new descriptor or -1.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    // linux_dirent64 records, 8-aligned: d_ino (8), d_off (8), d_reclen (2),
    // d_type (1), then the name, NUL-terminated.
    let mut buf = [0u64; 256];
    let mut complete = true;
    loop {
        // SAFETY: getdents64 writes at most the buffer's size into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n == 0 {
            break;
        }
        if n < 0 {
            complete = false;
            break;
        }
        // SAFETY: the kernel filled the first `n` bytes of `buf`; they are read as
        // bytes only.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        while at + 19 < bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen == 0 || at + reclen > bytes.len() {
                break;
            }
            let name = &bytes[at + 19..at + reclen];
            // The name's digits, up to its NUL; "." and ".." are no number.
            let mut fd: libc::c_int = 0;
            let mut digits = 0;
            for &b in name.iter().take_while(|&&b| b != 0) {
                if !b.is_ascii_digit() || digits > 9 {
                    digits = 0;
                    break;
                }
                fd = fd * 10 + libc::c_int::from(b - b'0');
                digits += 1;
            }
            if digits > 0 && fd >= lowest && fd != dir {
                // SAFETY: closing a descriptor of this process; the kernel keeps the
                // directory's listing consistent while entries go.
                unsafe { libc::close(fd) };
            }
            at += reclen;
        }
    }
    // SAFETY: our own descriptor, opened above.
    unsafe { libc::close(dir) };
    complete
}

/// [`close_from`] by every number below the descriptor limit.
fn close_counting(lowest: libc::c_int) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct passed, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return false;
    }
    // No descriptor is numbered at or above the soft limit; bounded all the same.
    let end = limit.rlim_cur.min(1 << 20) as libc::c_int;
    for fd in lowest..end {
        // SAFETY: closing a number that may or may not be open: EBADF at worst.
        unsafe { libc::close(fd) };
    }
    true
}

/// Forks this process; `Ok(None)` in the child, `Ok(Some(pid))` in the parent. The child
/// of a multithreaded process must go straight to [`become_forked_worker`].
pub fn fork() -> io::Result<Option<u32>> {
    // SAFETY: fork itself is sound; what the child may do afterwards is restricted as
    // documented on this function and on `become_forked_worker`.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub pid: u32,
    /// `multiprocessing`'s exitcode: the exit status, or minus the signal.
    pub exitcode: i32,
    /// Peak resident memory in bytes (the kernel's `ru_maxrss`).
    pub peak_rss: u64,
}

/// Reaps child `pid` (`None`: any child) if it has ended, or waits for it when `block`,
/// with its resource usage. `Ok(None)`: nothing ended (or no child at all, for any).
pub fn reap(pid: Option<u32>, block: bool) -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    let target = pid.map_or(-1, |p| p as libc::pid_t);
    loop {
        // SAFETY: wait4 writes only into the two locals passed by pointer, which outlive
        // the call.
        let r = unsafe { libc::wait4(target, &mut status, flags, &mut usage) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) if pid.is_none() => return Ok(None),
                _ => return Err(e),
            }
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
            pid: r as u32,
            exitcode,
            peak_rss: (usage.ru_maxrss.max(0) as u64) * 1024,
        }));
    }
}

/// A descriptor that becomes readable when process `pid` (a child of ours) exits
/// (`pidfd_open`, Linux 5.3). `None` where the kernel lacks it.
pub(crate) fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just created this descriptor for this process; it is ours.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A shared mapping of the first `len` bytes of a file, unmapped on drop. It hands out
/// only a raw pointer: its owner decides what access is sound (atomics, copies under a
/// lock, or reads of sealed bytes).
pub struct SharedMemory {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a pointer and a length; the memory is shared with other processes anyway, and
// nothing here dereferences it: the rules for that are the owner's.
unsafe impl Send for SharedMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Maps `len` bytes of `fd`: read-write, or read-only with the pages faulted in at
    /// once (they are read front to back next). `len` 0 maps nothing.
    pub fn map(
        fd: std::os::fd::BorrowedFd<'_>,
        len: usize,
        writable: bool,
    ) -> io::Result<SharedMemory> {
        if len == 0 {
            return Ok(SharedMemory {
                ptr: std::ptr::NonNull::dangling(),
                len,
            });
        }
        let (prot, flags) = if writable {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE)
        };
        // SAFETY: a new shared mapping of `len` bytes of `fd` at an address the kernel
        // picks; it aliases no memory of this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(SharedMemory { ptr, len })
    }

    /// The first byte (dangling when the length is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Leaves this mapping out of children this process forks: a `Fork` worker (a
    /// copy of its supervisor) must not see its siblings' slots, journals and
    /// payloads, which it could otherwise write.
    fn dont_fork(&self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: exactly the range mmap returned, still mapped (this value owns it);
        // the advice changes only what a future fork copies, not this process's view.
        let done =
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTFORK) };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it maps nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: exactly the range mmap returned; the owner lets no reference into
            // it outlive this value.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
    }
}

/// A mapping of a payload region (`payload::Region`), read-write or read-only. It
/// hands out no reference into the memory, which other processes may write whenever
/// they like (a worker that has the region's descriptor, even one that should have let
/// go of it): bytes only go in and out by copy. Its owner maps only a memfd that nobody
/// else can shrink (sealed against it, or not shared yet), so every page in range stays
/// backed.
pub(crate) struct RegionMap {
    map: SharedMemory,
    writable: bool,
}

impl RegionMap {
    /// Maps the first `len` bytes of `fd` read-write.
    pub(crate) fn map(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<RegionMap> {
        let map = SharedMemory::map(fd, len, true)?;
        map.dont_fork()?;
        Ok(RegionMap {
            map,
            writable: true,
        })
    }

    /// Maps the first `len` bytes of `fd` read-only, faulting the pages in at once (a
    /// task's arguments in a worker).
    pub(crate) fn map_read_only(
        fd: std::os::fd::BorrowedFd<'_>,
        len: usize,
    ) -> io::Result<RegionMap> {
        let map = SharedMemory::map(fd, len, false)?;
        Ok(RegionMap {
            map,
            writable: false,
        })
    }

    /// Copies the bytes at `offset` into `out`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) {
        let end = offset.checked_add(out.len());
        assert!(
            end.is_some_and(|end| end <= self.map.len()),
            "{} bytes at {offset} of a region of {}",
            out.len(),
            self.map.len()
        );
        if out.is_empty() {
            return;
        }
        // SAFETY: in bounds (asserted) of a live mapping, whose pages stay backed (the
        // memfd cannot shrink: see the type's doc). Another process may be writing
        // these bytes right now: the copy goes through raw pointers into `out`, which
        // is private memory, and no reference to the shared bytes exists in this
        // process (this type hands out none), so a concurrent writer can only leave
        // arbitrary bytes in `out`, which every caller decodes as hostile input; it
        // cannot change anything this process holds a reference to.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Copies `bytes` in at `offset`.
    ///
    /// # Panics
    /// If the mapping is read-only or the range is out of bounds.
    pub(crate) fn copy_in(&mut self, offset: usize, bytes: &[u8]) {
        assert!(self.writable, "a write to a read-only region");
        let end = offset.checked_add(bytes.len());
        assert!(
            end.is_some_and(|end| end <= self.map.len()),
            "{} bytes at {offset} in a region of {}",
            bytes.len(),
            self.map.len()
        );
        if bytes.is_empty() {
            return;
        }
        // SAFETY: in bounds (asserted) of a live mapping, whose pages stay backed (the
        // memfd cannot shrink: see the type's doc). No reference into the mapping
        // exists in this process (this type hands out none), and `bytes` is private
        // memory, so the copy aliases nothing Rust knows of; another process writing
        // the same bytes meanwhile can only leave them garbage, and whoever reads
        // them treats them as hostile input.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_ptr().add(offset),
                bytes.len(),
            )
        }
    }
}

/// Seals that make a memfd's contents final: no write, and no shrinking, by anyone,
/// ever (seals cannot be removed).
fn sealed_for_good(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)?;
    let need = nix::fcntl::SealFlag::F_SEAL_WRITE | nix::fcntl::SealFlag::F_SEAL_SHRINK;
    Ok(nix::fcntl::SealFlag::from_bits_truncate(seals).contains(need))
}

/// A read-only mapping of a memfd that is sealed against writes and shrinking (a
/// worker's large result). Its bytes cannot change and its pages cannot go while it is
/// mapped, so, alone of the shared mappings here, it hands out a plain slice.
pub struct SealedMap {
    map: SharedMemory,
}

impl SealedMap {
    /// Maps all of `fd`, which must be a memfd of `len` bytes sealed against writes and
    /// shrinking; anything else is refused.
    pub(crate) fn open(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> io::Result<SealedMap> {
        if !sealed_for_good(fd).map_err(|e| io::Error::other(format!("not a sealed memfd: {e}")))? {
            return Err(io::Error::other(
                "shared payload is not sealed against writes",
            ));
        }
        // Checked after the seals: the size can no longer go down.
        let size = fstat(fd)?.st_size;
        if u64::try_from(size).ok() != Some(len) {
            return Err(io::Error::other(format!(
                "shared payload has {size} bytes where {len} were announced"
            )));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
        Ok(SealedMap {
            map: SharedMemory::map(fd, len, false)?,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it maps nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All its bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the whole live mapping (a length of 0 gives an empty slice at a
        // dangling, aligned pointer), which lives as long as the borrow. `open` checked
        // that the memfd is sealed against writes and shrinking, seals are never
        // removed, and a write seal means no writable mapping of it exists anywhere:
        // nothing, in any process, can change or unback these bytes while the slice
        // lives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }
}

/// A small read-write shared mapping of words (the start-or-revoke slots).
pub struct SharedPage(SharedMemory);

/// Maps the first `len` bytes of `fd` read-write and shared (`len` a multiple of 8).
pub(crate) fn map_shared_page(fd: &OwnedFd, len: usize) -> io::Result<SharedPage> {
    let map = SharedMemory::map(std::os::fd::AsFd::as_fd(fd), len, true)?;
    map.dont_fork()?;
    Ok(SharedPage(map))
}

impl SharedPage {
    /// Word `i`, shared with the other process.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        let words = self.0.len() / 8;
        assert!(i < words, "word {i} of {words}");
        // SAFETY: in bounds (asserted) and 8-aligned (page-aligned base); the mapping
        // lives as long as `self`; every access, in both processes, is atomic.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.0.as_ptr().cast::<u64>().add(i)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child, opens descriptors up high, runs `close`, and exits 0 if
    /// every descriptor from 4 up to 1024 is closed after it.
    fn closes_all_from_4(close: fn(libc::c_int) -> bool) {
        // SAFETY: the child only makes system calls (the functions under test make
        // only those too) and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => unsafe {
                for at in [4, 9, 100, 1000] {
                    libc::fcntl(2, libc::F_DUPFD, at);
                }
                let ok = close(4) && (4..1024).all(|fd| libc::fcntl(fd, libc::F_GETFD) == -1);
                let open_low = (0..3).all(|fd| libc::fcntl(fd, libc::F_GETFD) != -1);
                libc::_exit(if ok && open_low { 0 } else { 1 })
            },
            -1 => panic!("fork failed"),
            pid => {
                let reaped = reap(Some(pid as u32), true).unwrap().unwrap();
                assert_eq!(reaped.exitcode, 0, "descriptors were left open");
            }
        }
    }

    #[test]
    fn descriptors_are_closed_without_close_range() {
        // Linux before 5.9 has no close_range: the fallbacks must do its work.
        closes_all_from_4(close_listed);
        closes_all_from_4(close_counting);
        closes_all_from_4(close_from);
    }
}
