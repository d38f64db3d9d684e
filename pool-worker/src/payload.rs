//! Large payloads through shared memory instead of the stream.
//!
//! Past [`SHARED_ABOVE`] bytes a payload is written into a memfd, and the descriptor
//! travels with the frame that needs it (`SCM_RIGHTS`). There are two kinds:
//!
//! - **Regions** ([`Region`]), the supervisor's, reused: a region is written, read, and
//!   put back on a process-wide spare list ([`recycle`]), so its pages are there for
//!   the next payload (fresh shared pages cost more here than the copy into them). A
//!   task's large arguments go in one, sent read-only. Such a task carries a second
//!   region, writable, its *scratch*, where the worker writes large outcomes. One
//!   process at a time is meant to write a region: the supervisor before it sends the
//!   request, the worker before it replies. The supervisor reuses a scratch only after
//!   the reply; the scratch of a task that got none is freed, never reused.
//! - **Sealed memfds**: a worker's large result to a request without a scratch (small
//!   arguments). Written once, sealed against writes and resizing, and checked by the
//!   receiver, which then decodes from a read-only mapping that cannot change
//!   ([`SealedMap`]).
//!
//! A region is never trusted, by either side. A worker can write any region it was
//! ever sent, whenever it likes (a read-only descriptor of a memfd opens again
//! read-write through `/proc/self/fd`), so what is read from a region is copied out
//! as it is read (no reference into shared memory is ever handed out: a worker copies
//! its arguments into a buffer of its own, the supervisor decodes outcomes by copies
//! out of the scratch) and decoded as hostile input, its length checked against the
//! memfd's size at that moment. And no process can shrink a region under another's
//! mapping (which would fault that process with SIGBUS): every region is sealed
//! against shrinking when it is made, and one that is not is refused; it may still
//! grow. What a misbehaving worker can still do is garble a region it once had; a
//! later task's arguments or outcomes in it then fail to decode (or decode as other
//! values), which is that task's `Codec` error, never the supervisor's fault.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, TryLockError};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use serde::de::DeserializeOwned;

use crate::bounded::{self, Ints};
use crate::protocol::{self, ProtocolError};
use crate::sys::RegionMap;
pub use crate::sys::SealedMap;

/// Payloads above this many bytes travel in shared memory.
pub const SHARED_ABOVE: usize = 256 * 1024;
/// Capacity the spare list keeps for reuse, in bytes at most. Only pages that were
/// written hold memory.
pub const SPARE_BYTES: usize = 128 << 20;
/// Regions on the spare list, at most.
const SPARE_REGIONS: usize = 32;
/// A new region's capacity, and the step it grows by.
const REGION_STEP: usize = 1 << 20;

/// An encoded payload: in memory while small, in shared memory past [`SHARED_ABOVE`]
/// bytes.
#[derive(Debug)]
pub enum Encoded {
    Inline(Vec<u8>),
    /// The first `len` bytes of a sealed memfd.
    Sealed {
        fd: OwnedFd,
        len: usize,
    },
    /// The first `len` bytes of a region.
    InRegion {
        region: Region,
        len: usize,
    },
}

impl Encoded {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Inline(bytes) => bytes.len(),
            Encoded::Sealed { len, .. } | Encoded::InRegion { len, .. } => *len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A memfd mapped read-write in this process, reused for payload after payload.
///
/// It gives no view of its bytes: other processes can write them at any time, so a
/// slice over them could change while it lives. What is read from it is copied out:
///
/// ```compile_fail
/// let region = pool_worker::payload::Region::new(4096).unwrap();
/// let view: &[u8] = region.bytes(16).unwrap();
/// ```
///
/// ```
/// let region = pool_worker::payload::Region::new(4096).unwrap();
/// let copy: Vec<u8> = region.copy_out(16).unwrap();
/// assert_eq!(copy, [0; 16]);
/// ```
pub struct Region {
    file: File,
    map: RegionMap,
    /// A read-only descriptor of the same memfd, opened the first time it is asked for.
    read_only: Option<OwnedFd>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("fd", &self.file.as_raw_fd())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Region {
    /// A new region of `capacity` bytes, sealed against shrinking (so no process it is
    /// sent to can cut it under another's mapping) and against further seals (so none
    /// can stop it from growing, or lock its writers out).
    pub fn new(capacity: usize) -> io::Result<Region> {
        let fd = memfd_create(
            "procpool-payload",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(capacity as u64)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL),
        )?;
        Region::adopt(file.into())
    }

    /// A new region that [`Region::seal`] can seal.
    fn sealable(capacity: usize) -> io::Result<Region> {
        let fd = memfd_create(
            "procpool-payload",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        Region::sized(File::from(fd), capacity)
    }

    fn sized(file: File, capacity: usize) -> io::Result<Region> {
        file.set_len(capacity as u64)?;
        // Not sealed yet, but not shared either until it is.
        Region::map(file)
    }

    /// The region behind a received descriptor (a worker's scratch), all of it mapped;
    /// refused unless it is sealed against shrinking.
    pub fn adopt(fd: OwnedFd) -> io::Result<Region> {
        if !cannot_shrink(fd.as_fd())? {
            return Err(io::Error::other("a region not sealed against shrinking"));
        }
        Region::map(File::from(fd))
    }

    /// Maps all of `file`, a memfd nobody else can shrink (sealed, or not shared).
    fn map(file: File) -> io::Result<Region> {
        let map = RegionMap::map(file.as_fd(), size(&file)?)?;
        Ok(Region {
            file,
            map,
            read_only: None,
        })
    }

    /// Its size in bytes (all of it mapped here).
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Maps what it has grown to (here, or in another process).
    pub fn refresh(&mut self) -> io::Result<()> {
        let len = size(&self.file)?;
        if len > self.capacity() {
            self.map = RegionMap::map(self.file.as_fd(), len)?;
        }
        Ok(())
    }

    /// A copy of its first `len` bytes, which the last writer announced: checked
    /// against the memfd's size now (whatever the mapping here says), and read with
    /// `pread`, so the copy is private memory that nobody else can change.
    pub fn copy_out(&self, len: usize) -> io::Result<Vec<u8>> {
        let size = size(&self.file)?;
        if len > size {
            return Err(io::Error::other(format!(
                "{len} bytes announced in a region of {size}"
            )));
        }
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// Maps at least its first `len` bytes, which the last writer announced (another
    /// process may have grown it): checked against the memfd's size now.
    pub fn map_to(&mut self, len: usize) -> io::Result<()> {
        let size = size(&self.file)?;
        if len > size {
            return Err(io::Error::other(format!(
                "{len} bytes announced in a region of {size}"
            )));
        }
        if len > self.capacity() {
            // What was announced, not all a peer grew it to.
            let mapped = len.next_multiple_of(REGION_STEP).min(size);
            self.map = RegionMap::map(self.file.as_fd(), mapped)?;
        }
        Ok(())
    }

    /// Decodes the [`Codec::Bincode`](crate::Codec) value in its first `len` bytes
    /// (a task's outcomes in its scratch; [`Region::map_to`] first), copying them out
    /// as decoding goes: no reference to them is made, since their writer can still
    /// change them, and each is read once. Each length in them is bounded by the bytes
    /// left, as [`Codec::decode`](crate::Codec::decode) does; trailing bytes are an
    /// error.
    pub fn decode<T: DeserializeOwned>(&self, len: usize) -> Result<T, String> {
        let (value, used) = bounded::decode_shared(&self.map, len, Ints::Fixed)?;
        if used != len {
            return Err(format!("{} trailing bytes after the value", len - used));
        }
        Ok(value)
    }

    /// Writes `bytes` at `offset`, growing the region if they do not fit.
    pub(crate) fn write_at(&mut self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(bytes.len())
            .ok_or_else(|| io::Error::other("payload too large"))?;
        if end > self.capacity() {
            let grown = end.max(2 * self.capacity()).next_multiple_of(REGION_STEP);
            // Another process may have grown it already (never shrunk: sealed).
            if size(&self.file)? < grown {
                self.file.set_len(grown as u64)?;
            }
            self.map = RegionMap::map(self.file.as_fd(), grown)?;
        }
        self.map.copy_in(offset, bytes);
        Ok(())
    }

    /// A new descriptor of it, read-write (to send).
    pub fn fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    /// A new read-only descriptor of it (to send): the receiver can neither write nor
    /// resize it.
    pub fn read_only_fd(&mut self) -> io::Result<OwnedFd> {
        let fd = match &self.read_only {
            Some(fd) => fd,
            None => {
                let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                self.read_only.insert(File::open(path)?.into())
            }
        };
        fd.try_clone()
    }

    /// Cuts it to its first `len` bytes and seals it against any change: its contents
    /// are final, and the receiver can check that.
    fn seal(self, len: usize) -> io::Result<OwnedFd> {
        let Region { file, map, .. } = self;
        // Sealing against writes needs every writable mapping gone.
        drop(map);
        file.set_len(len as u64)?;
        let fd = OwnedFd::from(file);
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
        Ok(fd)
    }
}

/// Whether `fd` is a memfd sealed against shrinking.
fn cannot_shrink(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(seals) => Ok(SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK)),
        // Not a memfd, or one made without MFD_ALLOW_SEALING.
        Err(nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A memfd's size in bytes.
fn size(fd: impl AsFd) -> io::Result<usize> {
    identity(fd).map(|(_, size)| size)
}

/// A memfd's identity (device, inode) and size.
fn identity(fd: impl AsFd) -> io::Result<((u64, u64), usize)> {
    let stat = nix::sys::stat::fstat(fd)?;
    let size = usize::try_from(stat.st_size).map_err(|_| io::Error::other("bad memfd size"))?;
    Ok(((stat.st_dev as u64, stat.st_ino as u64), size))
}

/// Regions put back for reuse, owned by process `pid` (a forked child inherits the
/// list, and must not use its parent's regions).
struct Spare {
    pid: u32,
    regions: Vec<Region>,
}

static SPARE: Mutex<Spare> = Mutex::new(Spare {
    pid: 0,
    regions: Vec::new(),
});

/// Runs `f` on this process's spare list; `None` when the list is busy, which also
/// covers a child forked while another thread of its parent held it (that lock is
/// never released there). Without the list, a caller makes a new region or frees one.
fn with_spare<R>(f: impl FnOnce(&mut Vec<Region>) -> R) -> Option<R> {
    let mut spare = match SPARE.try_lock() {
        Ok(spare) => spare,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    let pid = std::process::id();
    if spare.pid != pid {
        // Inherited from the parent: unmap and close this process's copies.
        spare.regions.clear();
        spare.pid = pid;
    }
    Some(f(&mut spare.regions))
}

/// A region from the spare list, or a new one.
pub fn spare_region() -> io::Result<Region> {
    match with_spare(Vec::pop).flatten() {
        Some(region) => Ok(region),
        None => Region::new(REGION_STEP),
    }
}

/// Puts `region` on the spare list, or frees it if the list is full. Only for a region
/// no other process should write again (one that does anyway can only garble a later
/// payload, which its reader decodes as hostile input). A region another process grew
/// past the budget is freed: its size is looked at now.
pub fn recycle(region: Region) {
    let Ok(size) = size(&region.file) else {
        return;
    };
    let refused = with_spare(|regions| {
        let held: usize = regions.iter().map(Region::capacity).sum();
        if regions.len() < SPARE_REGIONS
            && size <= SPARE_BYTES
            && held + region.capacity() <= SPARE_BYTES
        {
            regions.push(region);
            None
        } else {
            Some(region)
        }
    });
    // Freed outside the lock.
    drop(refused);
}

/// Frees the regions on the spare list (`procpool` does when its last pool ends).
pub fn free_spare() {
    let regions = with_spare(std::mem::take);
    // Freed outside the lock.
    drop(regions);
}

/// Where a payload goes once it passes [`SHARED_ABOVE`] bytes.
#[derive(Debug)]
pub enum SpillTo {
    /// A new memfd, sealed when complete (a worker's result without a scratch).
    Sealed,
    /// A region from the spare list (the supervisor's arguments).
    Spare,
    /// This region (a worker's scratch).
    Scratch(Region),
}

/// Where an encoder writes: a vector until the payload passes [`SHARED_ABOVE`] bytes,
/// then shared memory (what was written so far is moved there), so a large payload is
/// written once, into the shared memory, not into a vector first and copied. Past the
/// spill the vector is a write buffer in front of the region; a large write goes
/// straight through.
pub(crate) struct SpillWriter {
    bytes: Vec<u8>,
    to: SpillTo,
    /// The region once spilled, and how many bytes of it are written.
    region: Option<(Region, usize)>,
}

/// The write buffer in front of a spilled payload's region.
const SPILL_BUFFER: usize = 256 * 1024;

impl SpillWriter {
    pub fn new(to: SpillTo) -> SpillWriter {
        SpillWriter {
            bytes: Vec::new(),
            to,
            region: None,
        }
    }

    #[inline(always)]
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.bytes.len() + bytes.len() <= self.bytes.capacity() {
            // The hot path: room in the buffer (which grows only in `write_more`).
            self.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        self.write_more(bytes)
    }

    #[cold]
    fn write_more(&mut self, bytes: &[u8]) -> io::Result<()> {
        let limit = if self.region.is_some() {
            SPILL_BUFFER
        } else {
            SHARED_ABOVE
        };
        if self.bytes.len() + bytes.len() <= limit {
            self.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        let (region, at) = match &mut self.region {
            Some(spilled) => spilled,
            None => {
                let region = match std::mem::replace(&mut self.to, SpillTo::Spare) {
                    SpillTo::Sealed => {
                        // Remembered for `finish`.
                        self.to = SpillTo::Sealed;
                        Region::sealable(REGION_STEP)?
                    }
                    SpillTo::Spare => spare_region()?,
                    SpillTo::Scratch(region) => region,
                };
                self.region.insert((region, 0))
            }
        };
        region.write_at(*at, &self.bytes)?;
        *at += self.bytes.len();
        self.bytes.clear();
        if bytes.len() >= SPILL_BUFFER {
            region.write_at(*at, bytes)?;
            *at += bytes.len();
        } else {
            self.bytes.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Overwrites bytes already written at `offset`.
    pub fn patch(&mut self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len();
        match &mut self.region {
            Some((region, at)) if end <= *at => region.write_at(offset, bytes),
            None if end <= self.bytes.len() => {
                self.bytes[offset..end].copy_from_slice(bytes);
                Ok(())
            }
            _ => Err(io::Error::other("a patch of bytes not written yet")),
        }
    }

    /// Everything written so far, while it is all in memory here (not spilled).
    pub(crate) fn inline(&self) -> Option<&[u8]> {
        self.region.is_none().then_some(&self.bytes[..])
    }

    pub fn finish(self) -> io::Result<Encoded> {
        let Some((mut region, at)) = self.region else {
            return Ok(Encoded::Inline(self.bytes));
        };
        region.write_at(at, &self.bytes)?;
        let len = at + self.bytes.len();
        match self.to {
            SpillTo::Sealed => Ok(Encoded::Sealed {
                fd: region.seal(len)?,
                len,
            }),
            _ => Ok(Encoded::InRegion { region, len }),
        }
    }
}

/// A new sealed memfd holding `bytes`, whatever their size.
#[cfg(test)]
fn sealed(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut region = Region::sealable(bytes.len())?;
    region.write_at(0, bytes)?;
    region.seal(bytes.len())
}

/// Maps the sealed memfd of a payload of `len` bytes read-only, refusing one whose
/// contents could still change or that holds another number of bytes.
pub fn map(fd: &OwnedFd, len: u64) -> io::Result<SealedMap> {
    SealedMap::open(fd.as_fd(), len)
}

/// A worker's mappings of the supervisor's regions, kept from task to task. The
/// supervisor reuses its regions, so the next time a kept region comes, its pages are
/// mapped already (no page faults), and nothing is unmapped per task. A kept mapping
/// keeps its memfd's memory alive after the supervisor lets it go, so a worker keeps
/// what the spare list would: at most 32 mappings of [`SPARE_BYTES`] in all, the
/// least recently used dropped first, and none of 64 MiB or more. Arguments are copied
/// out of their mapping (into a buffer kept too, within the same bound) before they
/// are decoded: any worker that was ever sent a region can still write it.
#[derive(Default)]
pub struct Mappings {
    kept: Vec<Kept>,
    clock: u64,
    /// The last arguments, copied out of their region.
    arguments: Vec<u8>,
}

struct Kept {
    /// The memfd's device and inode.
    file: (u64, u64),
    used: u64,
    map: KeptMap,
}

enum KeptMap {
    /// Read-only: a task's arguments.
    Arguments(RegionMap),
    /// Read-write: a task's scratch.
    Scratch(Region),
}

/// Regions a worker keeps mapped (none this large or larger).
const KEEP_BELOW: usize = 64 << 20;

impl Mappings {
    /// A copy of the first `len` bytes of a task's arguments: a region of the
    /// supervisor's, sent read-only, which it does not write while the task is in
    /// flight (but another worker could).
    pub fn arguments(&mut self, fd: &OwnedFd, len: u64) -> io::Result<&[u8]> {
        let (file, size) = identity(fd)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
        if size < len {
            return Err(io::Error::other(format!(
                "arguments of {len} bytes announced in a region of {size}"
            )));
        }
        let found = self.kept.iter().position(|k| {
            k.file == file && matches!(&k.map, KeptMap::Arguments(m) if m.len() >= len)
        });
        let at = match found {
            Some(at) => at,
            None => {
                // Not kept, or kept shorter than the region has grown since.
                self.kept
                    .retain(|k| !(k.file == file && matches!(k.map, KeptMap::Arguments(_))));
                if !cannot_shrink(fd.as_fd())? {
                    return Err(io::Error::other("arguments not sealed against shrinking"));
                }
                let map = RegionMap::map_read_only(fd.as_fd(), size)?;
                self.insert(file, KeptMap::Arguments(map))
            }
        };
        self.clock += 1;
        let kept = &mut self.kept[at];
        kept.used = self.clock;
        let KeptMap::Arguments(map) = &kept.map else {
            return Err(io::Error::other("a scratch kept as arguments"));
        };
        if self.arguments.len() >= KEEP_BELOW && len < KEEP_BELOW {
            self.arguments = Vec::new();
        }
        // Only growth is zeroed: the bytes kept from last time are overwritten.
        if self.arguments.len() < len {
            self.arguments.resize(len, 0);
        }
        let bytes = &mut self.arguments[..len];
        map.copy_out(0, bytes);
        Ok(bytes)
    }

    /// The task's scratch behind `fd`, taken out until [`Mappings::keep`] gives it back.
    pub fn scratch(&mut self, fd: OwnedFd) -> io::Result<Region> {
        let (file, _) = identity(&fd)?;
        let found = self
            .kept
            .iter()
            .position(|k| k.file == file && matches!(k.map, KeptMap::Scratch(_)));
        match found.map(|at| self.kept.swap_remove(at).map) {
            Some(KeptMap::Scratch(mut region)) => {
                // Another worker may have grown it since.
                region.refresh()?;
                Ok(region)
            }
            _ => Region::adopt(fd),
        }
    }

    /// Keeps a scratch mapped for next time.
    pub fn keep(&mut self, region: Region) {
        if let Ok((file, _)) = identity(&region.file) {
            self.clock += 1;
            self.insert(file, KeptMap::Scratch(region));
        }
    }

    /// Adds a mapping, dropping the least recently used past the limits and any too
    /// large to keep (but the new one, which is about to be used); its index.
    fn insert(&mut self, file: (u64, u64), map: KeptMap) -> usize {
        self.kept.retain(|k| k.map.len() < KEEP_BELOW);
        let over = |kept: &[Kept]| {
            let bytes: usize = kept.iter().map(|k| k.map.len()).sum();
            kept.len() >= SPARE_REGIONS || bytes + map.len() > SPARE_BYTES
        };
        while over(&self.kept) {
            let Some(oldest) = (0..self.kept.len()).min_by_key(|&at| self.kept[at].used) else {
                break;
            };
            self.kept.swap_remove(oldest);
        }
        self.kept.push(Kept {
            file,
            used: self.clock,
            map,
        });
        self.kept.len() - 1
    }
}

impl KeptMap {
    fn len(&self) -> usize {
        match self {
            KeptMap::Arguments(map) => map.len(),
            KeptMap::Scratch(region) => region.capacity(),
        }
    }
}

/// Writes all of `bytes` to `stream`, with `fds` attached to the first byte.
pub fn send_with_fds(stream: &impl AsFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = send_slices_with_fds(stream, &[IoSlice::new(bytes)], fds)?;
    while sent < bytes.len() {
        match nix::unistd::write(stream.as_fd(), &bytes[sent..]) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One `sendmsg` of `slices` with `fds` attached to the first byte; how many bytes went.
pub fn send_slices_with_fds(
    stream: &impl AsFd,
    slices: &[IoSlice<'_>],
    fds: &[RawFd],
) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            stream.as_fd().as_raw_fd(),
            slices,
            cmsgs,
            // An EPIPE error, not a SIGPIPE, when the other end is gone.
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A control-message buffer for [`recv_with_fds`], to reuse from read to read.
pub fn fd_space() -> Vec<u8> {
    nix::cmsg_space!([RawFd; 4])
}

/// Reads what is available into `buf` (blocking or not, as the socket is), keeping any
/// descriptors that arrive with it in `fds`; `space` is from [`fd_space`]. `Ok(0)` at
/// end of stream.
pub fn recv_with_fds(
    socket: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    space: &mut [u8],
) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    loop {
        match recvmsg::<()>(socket, &mut iov, Some(space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received.into_iter().map(crate::sys::own_received));
                    }
                }
                return Ok(msg.bytes);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Frames from a blocking stream, read through a buffer, with the descriptors that
/// come with them kept in arrival order (a frame's descriptors arrive with its first
/// byte, so they are here by the time the frame is).
pub struct FrameReader {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    space: Vec<u8>,
}

/// The reader's buffer; a larger frame is read straight into its own vector.
const READ_BUFFER: usize = 64 * 1024;

impl FrameReader {
    pub fn new(stream: UnixStream) -> FrameReader {
        FrameReader {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            space: fd_space(),
        }
    }

    /// The next frame's body; `Ok(None)` at a clean end of stream (between frames).
    pub fn read_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>, ProtocolError> {
        if !self.buffer(4)? {
            return Ok(None);
        }
        let len = protocol::frame_len(&self.buf[self.start..], max)?;
        self.start += 4;
        if len <= READ_BUFFER {
            if !self.buffer(len)? && len > 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            let body = self.buf[self.start..self.start + len].to_vec();
            self.start += len;
            return Ok(Some(body));
        }
        let mut body = vec![0u8; len];
        let have = self.end - self.start;
        body[..have].copy_from_slice(&self.buf[self.start..self.end]);
        self.start = self.end;
        let mut got = have;
        while got < len {
            let socket = self.stream.as_raw_fd();
            match recv_with_fds(socket, &mut body[got..], &mut self.fds, &mut self.space)? {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                n => got += n,
            }
        }
        Ok(Some(body))
    }

    /// Makes sure `n` (at most [`READ_BUFFER`]) bytes are buffered; false if the stream
    /// ended before the first of them.
    fn buffer(&mut self, n: usize) -> io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < n {
            let read = recv_with_fds(
                self.stream.as_raw_fd(),
                &mut self.buf[self.end..],
                &mut self.fds,
                &mut self.space,
            )?;
            match read {
                0 if self.end == self.start => return Ok(false),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.end += n,
            }
        }
        Ok(true)
    }

    /// The oldest descriptor received and not taken yet.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    #[test]
    fn sealed_payloads_round_trip_and_unsealed_ones_are_refused() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let len = bytes.len() as u64;
        let fd = sealed(&bytes).unwrap();
        assert_eq!(map(&fd, len).unwrap().bytes(), &bytes[..]);
        let again: OwnedFd = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .into();
        assert_eq!(map(&again, len).unwrap().bytes(), &bytes[..]);
        assert_eq!(map(&sealed(&[]).unwrap(), 0).unwrap().len(), 0);
        assert!(map(&fd, len + 1).is_err(), "a length other than announced");

        let open = memfd_create("procpool-test", MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(
            map(&open, 0).is_err(),
            "an unsealed memfd could change while mapped"
        );
        let region = Region::new(REGION_STEP).unwrap();
        assert!(map(&region.fd().unwrap(), REGION_STEP as u64).is_err());
    }

    #[test]
    fn payloads_past_the_threshold_go_where_they_are_told_and_regions_are_reused() {
        let small: Vec<u64> = (0..1000).collect();
        match Codec::encode_payload(&small, SpillTo::Spare).unwrap() {
            Encoded::Inline(bytes) => {
                assert_eq!(Codec::Bincode.decode::<Vec<u64>>(&bytes).unwrap(), small)
            }
            other => panic!("a small payload went to shared memory: {other:?}"),
        }
        // Many small writes (one per integer) and one large one (a byte string).
        let many: Vec<u64> = (0..(3 * SHARED_ABOVE as u64 / 8)).collect();
        let large = serde_bytes::ByteBuf::from(vec![9u8; 5 * REGION_STEP / 2]);
        let many_ok = |b: &[u8]| {
            Codec::Bincode
                .decode::<Vec<u64>>(b)
                .is_ok_and(|v| v == many)
        };
        let large_ok = |b: &[u8]| {
            Codec::Bincode
                .decode::<serde_bytes::ByteBuf>(b)
                .is_ok_and(|v| v == large)
        };

        for sealed in [
            Codec::encode_payload(&many, SpillTo::Sealed).unwrap(),
            Codec::encode_payload(&large, SpillTo::Sealed).unwrap(),
        ] {
            let Encoded::Sealed { fd, len } = sealed else {
                panic!("not sealed: {sealed:?}");
            };
            let mapped = map(&fd, len as u64).unwrap();
            assert!(many_ok(mapped.bytes()) || large_ok(mapped.bytes()));
        }
        for lent in [
            Codec::encode_payload(&many, SpillTo::Spare).unwrap(),
            Codec::encode_payload(&large, SpillTo::Spare).unwrap(),
        ] {
            let Encoded::InRegion { mut region, len } = lent else {
                panic!("not in a region: {lent:?}");
            };
            // What a worker maps through the read-only descriptor is the same.
            let read_only = region.read_only_fd().unwrap();
            let mut mappings = Mappings::default();
            let mapped = mappings.arguments(&read_only, len as u64).unwrap();
            let bytes = region.copy_out(len).unwrap();
            assert!(many_ok(&bytes) || large_ok(&bytes));
            assert_eq!(mapped, bytes);
        }
        // The spare list: what is put back within its budget is kept for reuse. (The
        // only test of this crate that uses the list, so nothing else takes from it.)
        let holds = |file: (u64, u64)| loop {
            let found = with_spare(|regions| {
                regions
                    .iter()
                    .any(|r| identity(&r.file).is_ok_and(|(f, _)| f == file))
            });
            match found {
                Some(found) => break found,
                None => std::thread::yield_now(),
            }
        };
        let small = Region::new(REGION_STEP).unwrap();
        let small_file = identity(&small.file).unwrap().0;
        recycle(small);
        assert!(holds(small_file), "a region within the budget is kept");
        let huge = Region::new(SPARE_BYTES + REGION_STEP).unwrap();
        let huge_file = identity(&huge.file).unwrap().0;
        recycle(huge);
        assert!(!holds(huge_file), "a region past the budget is freed");
        let next = spare_region().unwrap();
        assert_eq!(identity(&next.file).unwrap().0, small_file, "and reused");
    }

    #[test]
    fn a_scratch_is_written_in_place_and_grown_for_its_owner_to_see() {
        let mut owner = Region::new(REGION_STEP).unwrap();
        let worker_side = Region::adopt(owner.fd().unwrap()).unwrap();
        let big = serde_bytes::ByteBuf::from(vec![3u8; 3 * REGION_STEP]);
        let Encoded::InRegion { len, .. } =
            Codec::encode_payload(&big, SpillTo::Scratch(worker_side)).unwrap()
        else {
            panic!("the scratch was not used");
        };
        assert!(owner.capacity() < len, "not mapped that far here");
        let back: serde_bytes::ByteBuf = Codec::Bincode
            .decode(&owner.copy_out(len).unwrap())
            .unwrap();
        assert_eq!(back, big);
        owner.map_to(len + 1).unwrap();
        assert!(owner.capacity() > len);
        assert_eq!(owner.decode::<serde_bytes::ByteBuf>(len).unwrap(), big);
        assert!(
            owner.decode::<serde_bytes::ByteBuf>(len - 1).is_err(),
            "cut"
        );
        assert!(
            owner.decode::<serde_bytes::ByteBuf>(len + 1).is_err(),
            "trailing"
        );
        assert!(owner.map_to(4 * REGION_STEP + 1).is_err(), "past its end");
        assert!(owner.copy_out(4 * REGION_STEP + 1).is_err(), "past its end");
        // The owner writes it again (a later task's arguments), within what the other
        // process grew it to.
        owner.write_at(3 * REGION_STEP, b"again").unwrap();
        assert_eq!(
            &owner.copy_out(3 * REGION_STEP + 5).unwrap()[3 * REGION_STEP..],
            b"again"
        );
    }

    #[test]
    fn no_process_can_shrink_a_region_and_one_that_could_is_refused() {
        let region = Region::new(REGION_STEP).unwrap();
        let other = File::from(region.fd().unwrap());
        assert!(other.set_len(0).is_err(), "sealed against shrinking");
        assert!(
            other.set_len(2 * REGION_STEP as u64).is_ok(),
            "but it may grow"
        );
        let seal_more = FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW);
        assert!(fcntl(&other, seal_more).is_err(), "and no more seals");
        let open = memfd_create("procpool-test", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&open, REGION_STEP as i64).unwrap();
        assert!(Region::adopt(open).is_err(), "a region anyone could shrink");
    }

    #[test]
    fn arguments_sent_read_only_cannot_be_written_by_the_worker() {
        let mut region = Region::new(REGION_STEP).unwrap();
        let read_only = region.read_only_fd().unwrap();
        assert!(Region::adopt(read_only).is_err(), "mapped writable");
        let mut mappings = Mappings::default();
        let too_long = 2 * REGION_STEP as u64;
        assert!(
            mappings
                .arguments(&region.read_only_fd().unwrap(), too_long)
                .is_err()
        );
    }

    #[test]
    fn a_worker_keeps_regions_mapped_from_task_to_task_within_bounds() {
        let mut mappings = Mappings::default();
        let mut owner = Region::new(REGION_STEP).unwrap();
        owner.write_at(0, b"first").unwrap();
        let arguments = owner.read_only_fd().unwrap();
        assert_eq!(mappings.arguments(&arguments, 5).unwrap(), b"first");
        // The supervisor writes the region again for a later task (and grows it).
        owner.write_at(0, b"second").unwrap();
        assert_eq!(mappings.arguments(&arguments, 6).unwrap(), b"second");
        owner.write_at(3 * REGION_STEP, b"far").unwrap();
        let len = 3 * REGION_STEP as u64 + 3;
        let far = mappings.arguments(&arguments, len).unwrap();
        assert_eq!(&far[3 * REGION_STEP..], b"far");

        // A scratch comes back as the same mapping, refreshed if another process grew it.
        let mut scratch = mappings.scratch(owner.fd().unwrap()).unwrap();
        scratch.write_at(0, b"out").unwrap();
        mappings.keep(scratch);
        owner.write_at(8 * REGION_STEP, b"grown elsewhere").unwrap();
        let again = mappings.scratch(owner.fd().unwrap()).unwrap();
        assert!(again.capacity() >= 8 * REGION_STEP + 15);
        assert_eq!(again.copy_out(3).unwrap(), b"out");
        mappings.keep(again);

        // Never more than the limit, and nothing too large to keep.
        for _ in 0..2 * SPARE_REGIONS {
            let other = Region::new(REGION_STEP).unwrap();
            mappings.arguments(&other.fd().unwrap(), 1).unwrap();
        }
        assert_eq!(mappings.kept.len(), SPARE_REGIONS);
        let huge = Region::new(KEEP_BELOW).unwrap();
        mappings.arguments(&huge.fd().unwrap(), 1).unwrap();
        mappings.arguments(&owner.fd().unwrap(), 1).unwrap();
        assert!(mappings.kept.iter().all(|k| k.map.len() < KEEP_BELOW));
        // Nor an arguments buffer that large, once smaller arguments come.
        let mut huge = Region::new(REGION_STEP).unwrap();
        huge.write_at(KEEP_BELOW, b"x").unwrap();
        let len = KEEP_BELOW as u64 + 1;
        mappings
            .arguments(&huge.read_only_fd().unwrap(), len)
            .unwrap();
        mappings.arguments(&arguments, 6).unwrap();
        assert!(mappings.arguments.len() < KEEP_BELOW);
    }

    #[test]
    fn descriptors_ride_with_their_frames() {
        let (a, b) = UnixStream::pair().unwrap();
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let fd = sealed(b"shared").unwrap();
        let large = vec![5u8; 3 * READ_BUFFER];
        send_with_fds(&a, &frame(b"first"), &[]).unwrap();
        send_with_fds(&a, &frame(b"second"), &[fd.as_raw_fd()]).unwrap();
        let writer = std::thread::spawn(move || {
            send_with_fds(&a, &frame(&large), &[]).unwrap();
            send_with_fds(&a, &frame(b"last"), &[]).unwrap();
        });
        let mut reader = FrameReader::new(b);
        assert_eq!(reader.read_frame(1 << 20).unwrap().unwrap(), b"first");
        assert_eq!(reader.read_frame(1 << 20).unwrap().unwrap(), b"second");
        let got = reader
            .take_fd()
            .expect("the descriptor came with its frame");
        assert_eq!(map(&got, 6).unwrap().bytes(), b"shared");
        assert!(reader.take_fd().is_none());
        assert_eq!(
            reader.read_frame(1 << 20).unwrap().unwrap().len(),
            3 * READ_BUFFER
        );
        assert_eq!(reader.read_frame(1 << 20).unwrap().unwrap(), b"last");
        writer.join().unwrap();
        assert!(reader.read_frame(1 << 20).unwrap().is_none(), "clean end");
    }
}
