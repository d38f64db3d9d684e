//! Large payloads through shared memory instead of the stream: a sealed memfd.
//!
//! The sender writes the bytes into a fresh memfd and seals it against writes and
//! resizing; the receiver checks the seals and maps it read-only, so the bytes it
//! decodes cannot change under it, and decodes straight from the mapping. Arguments
//! go supervisor to worker by reference (`/proc/<supervisor>/fd/<n>`, kept open until
//! the task resolves); results go back with the descriptor itself attached to the
//! reply (`SCM_RIGHTS`), since a worker cannot know when the supervisor has opened it.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::protocol::ProtocolError;
use crate::sys;
pub use crate::sys::SealedBytes;

/// Payloads above this many bytes travel in shared memory.
pub const SHARED_ABOVE: usize = 256 * 1024;

/// An encoded payload: in memory while small, in a sealed memfd past
/// [`SHARED_ABOVE`] bytes.
#[derive(Debug)]
pub enum Encoded {
    Inline(Vec<u8>),
    Shared { fd: OwnedFd, len: usize },
}

impl Encoded {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Inline(bytes) => bytes.len(),
            Encoded::Shared { len, .. } => *len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an encoder writes: a vector until the payload passes [`SHARED_ABOVE`] bytes,
/// then a memfd (what was written so far is moved there), so a large payload is
/// written once, into the shared memory, not into a vector first and copied. Past
/// the spill the vector is the memfd's write buffer; a large write goes straight
/// through.
pub(crate) struct SpillWriter {
    bytes: Vec<u8>,
    file: Option<File>,
    len: usize,
}

/// The write buffer in front of a spilled payload's memfd.
const SPILL_BUFFER: usize = 256 * 1024;

impl SpillWriter {
    pub fn new() -> SpillWriter {
        SpillWriter {
            bytes: Vec::new(),
            file: None,
            len: 0,
        }
    }

    #[inline(always)]
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.len += bytes.len();
        if self.bytes.len() + bytes.len() <= self.bytes.capacity() {
            // The hot path: room in the buffer (which grows only in `write_more`).
            self.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        self.write_more(bytes)
    }

    #[cold]
    fn write_more(&mut self, bytes: &[u8]) -> io::Result<()> {
        let limit = if self.file.is_some() {
            SPILL_BUFFER
        } else {
            SHARED_ABOVE
        };
        if self.bytes.len() + bytes.len() <= limit {
            self.bytes.extend_from_slice(bytes);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(new_memfd()?),
        };
        file.write_all(&self.bytes)?;
        self.bytes.clear();
        if bytes.len() >= SPILL_BUFFER {
            file.write_all(bytes)
        } else {
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    pub fn finish(self) -> io::Result<Encoded> {
        let Some(mut file) = self.file else {
            return Ok(Encoded::Inline(self.bytes));
        };
        file.write_all(&self.bytes)?;
        Ok(Encoded::Shared {
            fd: seal(file)?,
            len: self.len,
        })
    }
}

/// A new memfd that can be sealed, for a payload.
fn new_memfd() -> io::Result<File> {
    let fd = memfd_create(
        "procpool-payload",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    Ok(File::from(fd))
}

/// Seals a written payload memfd against writes and resizing: its contents are final.
fn seal(file: File) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(file);
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// A new sealed memfd holding `bytes`, whatever their size.
#[cfg(test)]
fn sealed(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut file = new_memfd()?;
    file.write_all(bytes)?;
    seal(file)
}

/// Maps the sealed memfd of a payload of `len` bytes read-only, refusing one whose
/// contents could still change or that holds another number of bytes.
pub fn map(fd: &OwnedFd, len: u64) -> io::Result<SealedBytes> {
    let have = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|e| io::Error::other(format!("not a sealed memfd: {e}")))?;
    let need = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK;
    if !SealFlag::from_bits_truncate(have).contains(need) {
        return Err(io::Error::other(
            "shared payload is not sealed against writes",
        ));
    }
    let size = File::from(fd.try_clone()?).metadata()?.len();
    if size != len {
        return Err(io::Error::other(format!(
            "shared payload has {size} bytes where {len} were announced"
        )));
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
    sys::map_sealed(fd.as_fd(), len)
}

/// Opens descriptor `fd` of process `pid` (which keeps it open while we need it).
pub fn open_remote(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    Ok(File::open(format!("/proc/{pid}/fd/{fd}"))?.into())
}

/// Writes all of `bytes` to `stream`, with `fd` attached to the first byte.
pub fn send_with_fd(stream: &impl AsFd, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let mut sent = loop {
        match sendmsg::<()>(
            stream.as_fd().as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsg,
            MsgFlags::empty(),
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    while sent < bytes.len() {
        match nix::unistd::write(stream.as_fd(), &bytes[sent..]) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads what is available into `buf` (blocking or not, as the socket is), keeping any
/// descriptors that arrive with it in `fds`. `Ok(0)` at end of stream.
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    loop {
        match recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received.into_iter().map(sys::own_received));
                    }
                }
                return Ok(msg.bytes);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A frame's body and the descriptors that came with it.
pub type FrameWithFds = (Vec<u8>, Vec<OwnedFd>);

/// Reads one frame from a blocking stream, with the descriptors that came with it.
/// `Ok(None)` at a clean end of stream.
pub fn read_frame_with_fds(
    stream: &impl AsRawFd,
    max: usize,
) -> Result<Option<FrameWithFds>, ProtocolError> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    if !fill(stream.as_raw_fd(), &mut len, &mut fds)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    if !fill(stream.as_raw_fd(), &mut body, &mut fds)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some((body, fds)))
}

/// Fills `buf` completely; false if the stream ended before the first byte.
fn fill(socket: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match recv_with_fds(socket, &mut buf[got..], fds)? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payloads_round_trip_and_unsealed_ones_are_refused() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let len = bytes.len() as u64;
        let fd = sealed(&bytes).unwrap();
        assert_eq!(&*map(&fd, len).unwrap(), &bytes[..]);
        let again = open_remote(std::process::id(), fd.as_raw_fd()).unwrap();
        assert_eq!(&*map(&again, len).unwrap(), &bytes[..]);
        assert_eq!(map(&sealed(&[]).unwrap(), 0).unwrap().len(), 0);
        assert!(map(&fd, len + 1).is_err(), "a length other than announced");

        let open = memfd_create("procpool-test", MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(
            map(&open, 0).is_err(),
            "an unsealed memfd could change while mapped"
        );
    }

    #[test]
    fn payloads_past_the_threshold_are_encoded_into_a_sealed_memfd() {
        use crate::Codec;
        let small: Vec<u64> = (0..1000).collect();
        match Codec::encode_payload(&small).unwrap() {
            Encoded::Inline(bytes) => {
                assert_eq!(Codec::Bincode.decode::<Vec<u64>>(&bytes).unwrap(), small)
            }
            other => panic!("a small payload went to shared memory: {other:?}"),
        }
        // Many small writes (one per integer) and one large one (a byte string).
        let many: Vec<u64> = (0..(3 * SHARED_ABOVE as u64 / 8)).collect();
        let large = serde_bytes::ByteBuf::from(vec![9u8; 2 * SHARED_ABOVE]);
        for (encoded, check) in [
            (
                Codec::encode_payload(&many).unwrap(),
                Box::new(|b: &[u8]| Codec::Bincode.decode::<Vec<u64>>(b).unwrap() == many)
                    as Box<dyn Fn(&[u8]) -> bool>,
            ),
            (
                Codec::encode_payload(&large).unwrap(),
                Box::new(|b: &[u8]| {
                    Codec::Bincode.decode::<serde_bytes::ByteBuf>(b).unwrap() == large
                }),
            ),
        ] {
            let Encoded::Shared { fd, len } = encoded else {
                panic!("a large payload stayed in memory");
            };
            let mapped = map(&fd, len as u64).unwrap();
            assert_eq!(mapped.len(), len);
            assert!(check(&mapped), "the payload decodes to what was encoded");
        }
    }

    #[test]
    fn a_descriptor_rides_with_its_bytes() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = sealed(b"shared").unwrap();
        send_with_fd(&a, b"frame", fd.as_raw_fd()).unwrap();
        let (mut buf, mut fds) = ([0u8; 16], Vec::new());
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"frame");
        assert_eq!(fds.len(), 1);
        assert_eq!(&*map(&fds[0], 6).unwrap(), b"shared");
    }
}
