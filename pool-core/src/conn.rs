//! A worker's stream as the supervisor's event loop sees it: non-blocking, with an
//! inbound buffer cut into frames and an outbound queue of frames.
//!
//! Writing never blocks the supervisor: what the socket does not take now stays
//! queued until the socket is writable again, so a stuck or stopped worker cannot
//! stall the other workers.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use mio::net::UnixStream;
use pool_worker::payload;
use pool_worker::protocol::ProtocolError;

const READ_CHUNK: usize = 64 * 1024;
/// Most bytes one [`Conn::fill`] reads.
const READ_BUDGET: usize = 4 * 1024 * 1024;
/// Descriptors received ahead of the frames that take them, at most.
const MAX_PENDING_FDS: usize = 16;

pub(crate) struct Conn {
    pub stream: UnixStream,
    /// Descriptors received with the stream's bytes (shared results), oldest first.
    fds: VecDeque<OwnedFd>,
    inbox: Vec<u8>,
    /// Start of the first unread byte in `inbox`.
    consumed: usize,
    outbox: VecDeque<Arc<[u8]>>,
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
            consumed: 0,
            outbox: VecDeque::new(),
            written: 0,
            max_frame,
        }
    }

    /// Reads what is available without blocking, at most [`READ_BUDGET`] bytes per
    /// call so a flooding worker cannot grow the buffer without bound: on `More`, take
    /// the frames out and call again (the stream is edge-triggered).
    pub fn fill(&mut self) -> io::Result<ReadEnd> {
        if self.consumed > 0 {
            self.inbox.drain(..self.consumed);
            self.consumed = 0;
        }
        let start = self.inbox.len();
        loop {
            let len = self.inbox.len();
            if len - start >= READ_BUDGET {
                return Ok(ReadEnd::More);
            }
            self.inbox.resize(len + READ_CHUNK, 0);
            let mut received = Vec::new();
            let read = payload::recv_with_fds(
                self.stream.as_raw_fd(),
                &mut self.inbox[len..],
                &mut received,
            );
            self.fds.extend(received);
            if self.fds.len() > MAX_PENDING_FDS {
                self.inbox.truncate(len);
                return Err(io::Error::other(
                    "the worker sent descriptors without replies",
                ));
            }
            match read {
                Ok(0) => {
                    self.inbox.truncate(len);
                    return Ok(ReadEnd::Closed);
                }
                Ok(n) => self.inbox.truncate(len + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inbox.truncate(len);
                    return Ok(ReadEnd::Open);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.inbox.truncate(len),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.inbox.truncate(len);
                    return Ok(ReadEnd::Closed);
                }
                Err(e) => {
                    self.inbox.truncate(len);
                    return Err(e);
                }
            }
        }
    }

    /// The next complete frame's body, if one has arrived. A length prefix above the
    /// limit is an error at once, before any of that length is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let pending = &self.inbox[self.consumed..];
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
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
        self.inbox.len() - self.consumed
    }

    /// Queues a frame; call [`Conn::flush`] to send it.
    pub fn queue(&mut self, frame: Arc<[u8]>) {
        self.outbox.push_back(frame);
    }

    /// Writes queued frames until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(front) = self.outbox.front() {
            match self.stream.write(&front[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
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
