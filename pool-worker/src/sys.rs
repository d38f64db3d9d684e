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

/// Ends the process at once, running no exit handlers and flushing nothing.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping exit handlers is the
    // point (see `serve::leave`).
    unsafe { libc::_exit(code) }
}

/// How a process just forked from a supervisor or zygote becomes a worker.
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
/// applies the address-space cap. The serve loop allocates after that; glibc's malloc is
/// fork-safe, and the loop takes no lock another thread of the parent could have held.
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
        if libc::dup2(stream, 3) != 3 || libc::close_range(4, libc::c_uint::MAX, 0) != 0 {
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
    SharedMemory::map(std::os::fd::AsFd::as_fd(fd), len, true).map(SharedPage)
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
