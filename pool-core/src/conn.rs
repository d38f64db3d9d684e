//! A worker's stream as the supervisor's event loop sees it: non-blocking, with an
//! inbound buffer cut into frames and an outbound queue of frames.
//!
//! Writing never blocks the supervisor: what the socket does not take now stays
//! queued until the socket is writable again, so a stuck or stopped worker cannot
//! stall the other workers.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use mio::net::UnixStream;
use pool_worker::payload;
use pool_worker::protocol::{self, ProtocolError};

const READ_CHUNK: usize = 64 * 1024;
/// Most bytes one [`Conn::fill`] reads.
const READ_BUDGET: usize = 4 * 1024 * 1024;
/// Frames written with one `writev` at most.
const MAX_FRAMES_PER_WRITE: usize = 64;
/// A buffer grown past this by a large message shrinks back once it is read.
const SHRINK_ABOVE: usize = 4 * 1024 * 1024;
/// Descriptors received ahead of the frames that take them, at most.
const MAX_PENDING_FDS: usize = 16;

pub(crate) struct Conn {
    pub stream: UnixStream,
    /// Descriptors received with the stream's bytes (shared results), oldest first.
    fds: VecDeque<OwnedFd>,
    /// Received bytes in `inbox[..filled]`; the rest is room for the next read.
    inbox: Vec<u8>,
    filled: usize,
    /// Start of the first unread byte in `inbox`.
    consumed: usize,
    /// Frames to send, each with the descriptors that go with its first byte.
    outbox: VecDeque<(Arc<[u8]>, Vec<OwnedFd>)>,
    /// Control-message room for received descriptors, reused from read to read.
    fd_space: Vec<u8>,
    /// Bytes of the front frame of `outbox` already written.
    written: usize,
    max_frame: usize,
}

/// What a read found at the end of the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Nothing more for now; the stream is open.
    Open,
    /// The worker closed its end (it exited, or is exiting).
    Closed,
    /// The read budget ran out with data still waiting.
    More,
}

impl Conn {
    pub fn new(stream: UnixStream, max_frame: usize) -> Conn {
        Conn {
            stream,
            fds: VecDeque::new(),
            inbox: Vec::new(),
            filled: 0,
            consumed: 0,
            outbox: VecDeque::new(),
            fd_space: payload::fd_space(),
            written: 0,
            max_frame,
        }
    }

    /// Reads what is available without blocking, at most [`READ_BUDGET`] bytes per
    /// call so a flooding worker cannot grow the buffer without bound: on `More`, take
    /// the frames out and call again (the stream is edge-triggered).
    pub fn fill(&mut self) -> io::Result<ReadEnd> {
        if self.consumed > 0 {
            self.inbox.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
            if self.inbox.len() > SHRINK_ABOVE && self.filled < READ_CHUNK {
                self.inbox.truncate(READ_CHUNK);
                self.inbox.shrink_to_fit();
            }
        }
        let start = self.filled;
        loop {
            let filled = self.filled;
            if filled - start >= READ_BUDGET {
                return Ok(ReadEnd::More);
            }
            // Zeroed once and reused: no clearing of a fresh chunk on every read.
            if self.inbox.len() < filled + READ_CHUNK {
                self.inbox.resize(filled + READ_CHUNK, 0);
            }
            let read = payload::recv_with_fds(
                self.stream.as_raw_fd(),
                &mut self.inbox[filled..],
                &mut self.fds,
                &mut self.fd_space,
            );
            if self.fds.len() > MAX_PENDING_FDS {
                return Err(io::Error::other(
                    "the worker sent descriptors without replies",
                ));
            }
            match read {
                Ok(0) => return Ok(ReadEnd::Closed),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(ReadEnd::Closed);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete frame's body, if one has arrived. A length prefix above the
    /// limit is an error at once, before any of that length is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let pending = &self.inbox[self.consumed..self.filled];
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = protocol::frame_len(pending, self.max_frame)?;
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let body = pending[4..4 + len].to_vec();
        self.consumed += 4 + len;
        Ok(Some(body))
    }

    /// The oldest descriptor received and not taken yet.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Bytes received that do not make a complete frame yet.
    pub fn partial_bytes(&self) -> usize {
        self.filled - self.consumed
    }

    /// Queues a frame, with descriptors to go with it (`SCM_RIGHTS`); call
    /// [`Conn::flush`] to send it.
    pub fn queue(&mut self, frame: Arc<[u8]>, fds: Vec<OwnedFd>) {
        self.outbox.push_back((frame, fds));
    }

    /// Sends nothing more (what is queued is dropped) and tells the worker so: it reads
    /// the end of its stream. What it has written stays readable, to the end.
    pub fn close_write(&mut self) {
        self.outbox.clear();
        self.written = 0;
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Writes queued frames until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some((_, front_fds)) = self.outbox.front() {
            // Several queued frames go in one system call. A frame's descriptors go
            // with its first byte, so a call carries those of its first frame only,
            // and stops before the next frame that has some.
            let fds: Vec<RawFd> = front_fds.iter().map(AsRawFd::as_raw_fd).collect();
            let slices: Vec<IoSlice<'_>> = self
                .outbox
                .iter()
                .take(MAX_FRAMES_PER_WRITE)
                .enumerate()
                .take_while(|(i, (_, fds))| *i == 0 || fds.is_empty())
                .map(|(i, (f, _))| IoSlice::new(if i == 0 { &f[self.written..] } else { f }))
                .collect();
            let sent = if fds.is_empty() {
                self.stream.write_vectored(&slices)
            } else {
                payload::send_slices_with_fds(&self.stream, &slices, &fds)
            };
            match sent {
                Ok(mut n) => {
                    if let Some((_, fds)) = self.outbox.front_mut() {
                        // Gone with the first byte (closed here, open over there).
                        fds.clear();
                    }
                    while let Some((front, _)) = self.outbox.front() {
                        let left = front.len() - self.written;
                        if n < left {
                            self.written += n;
                            break;
                        }
                        n -= left;
                        self.outbox.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
