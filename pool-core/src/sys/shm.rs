//! Shared memory for the cross-process primitives in `crate::sync`: memfd mappings,
//! futex waits and wakes, the robust lock every region carries, and byte copies that
//! prove they hold it. Every `unsafe` block of `sync` is in this file.
//!
//! A region is a memfd, so it lives exactly as long as some process holds its
//! descriptor or mapping: no file in `/dev/shm` to leak when a process is SIGKILLed.
//! Another process opens it through `/proc/<pid>/fd/<fd>` of a process that holds it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use pool_worker::os::SharedMemory;

/// The prefix of every procpool memfd's name (`/proc/<pid>/fd/<n>` shows
/// `/memfd:procpool-<kind> (deleted)`); a region is only opened if its link says so.
const MEMFD_PREFIX: &str = "procpool-";
/// Where each region keeps its lock word.
const LOCK_OFFSET: usize = 4;
/// Set in the lock word while some thread may be asleep on it.
const WAITERS: u32 = 1 << 31;
/// How often a waiter looks whether the lock's holder is still alive.
const LIVENESS_TICK: Duration = Duration::from_millis(50);

/// One shared memory region, mapped read-write into this process.
///
/// It is shared between threads as it is between processes: this process touches it
/// only through atomics and through `read`/`write`, which require the region's lock.
pub(crate) struct Mapping {
    mem: SharedMemory,
    fd: OwnedFd,
}

impl Mapping {
    /// A new zeroed region of `len` bytes, named for `kind`, sealed at that size: any
    /// process may open it read-write (through `/proc`), and none may cut it from
    /// under another's mapping (which would fault that process with SIGBUS).
    pub fn create(kind: &str, len: usize) -> io::Result<Mapping> {
        let fd = memfd_create(
            format!("{MEMFD_PREFIX}{kind}").as_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let size = i64::try_from(len).map_err(|_| io::Error::other("region too large"))?;
        nix::unistd::ftruncate(&fd, size)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
        Mapping::map(fd, len)
    }

    /// Opens the region that process `pid` holds as descriptor `fd` (this process
    /// included). Fails if that descriptor is gone or is not a procpool region of
    /// `len` bytes sealed against shrinking (a memfd any process can make and name
    /// like one, and then cut under this one's mapping).
    pub fn open(pid: u32, fd: RawFd, len: usize) -> io::Result<Mapping> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let target = std::fs::read_link(&path)?;
        if !target
            .to_string_lossy()
            .starts_with(&format!("/memfd:{MEMFD_PREFIX}"))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is {}, not a procpool region", target.display()),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let sealed = fcntl(&file, FcntlArg::F_GET_SEALS).is_ok_and(|seals| {
            SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK)
        });
        if !sealed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("region {path} is not sealed against shrinking"),
            ));
        }
        // Checked after the seal: the size can no longer go down.
        let size = file.metadata()?.len();
        if size != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("region {path} has {size} bytes, not {len}"),
            ));
        }
        Mapping::map(file.into(), len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        if len < 64 {
            return Err(io::Error::other("a region has at least 64 bytes"));
        }
        let mem = SharedMemory::map(fd.as_fd(), len, true)?;
        Ok(Mapping { mem, fd })
    }

    /// This process's descriptor of the region.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    fn checked(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            offset % align == 0
                && offset
                    .checked_add(size)
                    .is_some_and(|end| end <= self.len()),
            "offset {offset}+{size} outside a region of {} bytes",
            self.len()
        );
        // SAFETY: `offset + size <= len` (asserted), so the pointer stays inside the
        // mapping.
        unsafe { self.mem.as_ptr().add(offset) }
    }

    /// The 32-bit word at `offset`, shared with every process that maps the region.
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        let p = self.checked(offset, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked; the mapping is page-aligned), valid
        // for as long as `&self`; any bit pattern is a valid u32, and every access to
        // the region's words, here and in other processes, is atomic.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    /// The 64-bit word at `offset`.
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        let p = self.checked(offset, 8, 8);
        // SAFETY: as in `u32_at`, for 8 aligned bytes.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// Atomically loads the `size`-byte (1, 2, 4 or 8) number at `offset`, as bits.
    pub fn load_bits(&self, offset: usize, size: usize) -> u64 {
        match size {
            1 => self.u8_at(offset).load(Ordering::SeqCst).into(),
            2 => self.u16_at(offset).load(Ordering::SeqCst).into(),
            4 => self.u32_at(offset).load(Ordering::SeqCst).into(),
            _ => self.u64_at(offset).load(Ordering::SeqCst),
        }
    }

    /// Atomically stores the low `size` bytes of `bits` at `offset`.
    pub fn store_bits(&self, offset: usize, size: usize, bits: u64) {
        match size {
            1 => self.u8_at(offset).store(bits as u8, Ordering::SeqCst),
            2 => self.u16_at(offset).store(bits as u16, Ordering::SeqCst),
            4 => self.u32_at(offset).store(bits as u32, Ordering::SeqCst),
            _ => self.u64_at(offset).store(bits, Ordering::SeqCst),
        }
    }

    /// Atomically adds `bits` (wrapping, two's complement) to the `size`-byte number at
    /// `offset`; returns the previous bits.
    pub fn fetch_add_bits(&self, offset: usize, size: usize, bits: u64) -> u64 {
        match size {
            1 => self
                .u8_at(offset)
                .fetch_add(bits as u8, Ordering::SeqCst)
                .into(),
            2 => self
                .u16_at(offset)
                .fetch_add(bits as u16, Ordering::SeqCst)
                .into(),
            4 => self
                .u32_at(offset)
                .fetch_add(bits as u32, Ordering::SeqCst)
                .into(),
            _ => self.u64_at(offset).fetch_add(bits, Ordering::SeqCst),
        }
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        let p = self.checked(offset, 1, 1);
        // SAFETY: as in `u32_at`, for one byte.
        unsafe { AtomicU8::from_ptr(p) }
    }

    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        let p = self.checked(offset, 2, 2);
        // SAFETY: as in `u32_at`, for 2 aligned bytes.
        unsafe { AtomicU16::from_ptr(p.cast()) }
    }

    /// Copies `src` into the region at `offset`. `held` proves this region's lock is
    /// held, so no other thread of this process touches these bytes meanwhile.
    pub fn write(&self, held: &Held<'_>, offset: usize, src: &[u8]) {
        assert!(std::ptr::eq(held.mapping, self), "lock of another region");
        let p = self.checked(offset, src.len(), 1);
        // SAFETY: `p..p+len` is inside the mapping (checked); `src` is ordinary memory,
        // which never overlaps a shared mapping; the lock is held (asserted above), so
        // no other thread of this process reads or writes these bytes concurrently.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }

    /// Copies bytes at `offset` of the region into `dst`, with the lock held.
    pub fn read(&self, held: &Held<'_>, offset: usize, dst: &mut [u8]) {
        assert!(std::ptr::eq(held.mapping, self), "lock of another region");
        let p = self.checked(offset, dst.len(), 1);
        // SAFETY: as in `write`, copying the other way.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }

    /// Takes the region's lock, waiting as long as it takes.
    ///
    /// The lock word holds the holder's pid. A waiter wakes at least every 50 ms, and
    /// if the holder's process has ended (exited, killed, or a zombie), takes the lock
    /// over: [`Held::previous_owner_died`] then names the dead holder.
    pub fn lock(&self) -> Held<'_> {
        loop {
            if let Some(held) = self.acquire(None) {
                return held;
            }
        }
    }

    /// Takes the region's lock if that happens before `deadline`.
    pub fn lock_until(&self, deadline: Instant) -> Option<Held<'_>> {
        self.acquire(Some(deadline))
    }

    fn acquire(&self, deadline: Option<Instant>) -> Option<Held<'_>> {
        let word = self.u32_at(LOCK_OFFSET);
        let me = std::process::id();
        if word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(self.held(None));
        }
        let mut check_holder = false;
        loop {
            let current = word.load(Ordering::Relaxed);
            if current == 0 {
                // Others may still sleep on the word: keep the flag so unlock wakes one.
                if word
                    .compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(self.held(None));
                }
                continue;
            }
            let holder = current & !WAITERS;
            if check_holder && holder != me && !process_alive(holder) {
                if word
                    .compare_exchange(current, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(self.held(Some(holder)));
                }
                continue;
            }
            if current & WAITERS == 0
                && word
                    .compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            let tick = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left.min(LIVENESS_TICK)
                }
                None => LIVENESS_TICK,
            };
            check_holder = futex_wait(word, current | WAITERS, Some(tick)) == Wake::TimedOut;
        }
    }

    fn held(&self, previous_owner_died: Option<u32>) -> Held<'_> {
        Held {
            mapping: self,
            previous_owner_died,
        }
    }
}

/// The region's lock, held; released on drop (also while unwinding from a panic).
pub(crate) struct Held<'a> {
    mapping: &'a Mapping,
    previous_owner_died: Option<u32>,
}

impl Held<'_> {
    /// The pid of a holder that died holding the lock, if this acquisition took it over.
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.previous_owner_died
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let word = self.mapping.u32_at(LOCK_OFFSET);
        if word.swap(0, Ordering::Release) & WAITERS != 0 {
            futex_wake(word, 1);
        }
    }
}

/// How a futex wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken, or the word no longer held the expected value, or a signal.
    Woken,
    TimedOut,
}

/// Sleeps while `word` holds `expected`, at most `timeout`. A shared (not private)
/// futex: the sleeper and the waker may be different processes.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the aligned word `word` points to (valid for this
    // borrow) and the optional timespec local, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
    if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wake::TimedOut
    } else {
        Wake::Woken
    }
}

/// Wakes up to `n` sleepers on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the word's address as a key; it reads no memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

/// Whether process `pid` is alive: it exists and is not a zombie. A pid reused by a
/// new process reads as alive; pids wrap slowly enough that waiters that look every
/// 50 ms see the death first.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw == 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // A zombie still answers kill(0): its state in /proc/<pid>/stat (after the
    // parenthesised name, which may itself contain spaces or parentheses) tells.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_process_can_shrink_a_region_and_an_unsealed_one_is_refused() {
        let map = Mapping::create("queue", 4096).expect("a region");
        let pid = std::process::id();
        let other = Mapping::open(pid, map.raw_fd(), 4096).expect("opened again");
        let path = format!("/proc/self/fd/{}", other.raw_fd());
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("read-write");
        assert!(file.set_len(0).is_err(), "sealed against shrinking");
        assert!(file.set_len(8192).is_err(), "and growing");

        // A memfd named like a region, that its maker could cut under a mapping.
        let fake = memfd_create("procpool-queue", MFdFlags::MFD_CLOEXEC).expect("a memfd");
        nix::unistd::ftruncate(&fake, 4096).expect("sized");
        let refused = Mapping::open(pid, fake.as_raw_fd(), 4096)
            .err()
            .expect("refused");
        assert!(refused.to_string().contains("not sealed"), "{refused}");
    }
}
