//! [`Pipe`]: a duplex connection between two processes.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use pool_worker::Codec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SyncError;
use super::channel::{self, Channel};
use super::holders::{Party, Peer};
use super::queue::DEFAULT_BUFFER_BYTES;
use super::region::{self, Kind};

/// One end of a duplex pipe, like a `multiprocessing.Pipe()` connection: what one end
/// sends, the other receives, in order, in both directions.
///
/// When the other end is gone, the pipe says so instead of hanging: `send` and `recv`
/// fail with [`SyncError::Disconnected`] once every handle of the other end was
/// dropped, or the processes holding them were found dead (a handle looks at most
/// every 50 ms, and a waiting `recv` at least that often; a message sent in between
/// to a peer that was killed is lost with it). `recv` first takes what is left to
/// read. An end sent as a task's or a
/// [`Process`](crate::Process)'s argument counts from the moment it is sent until that
/// task resolves or that process is reaped. An end is one party: `Send` but not
/// `Sync`.
///
/// ```
/// let (parent, child) = procpool::Pipe::<String>::pair()?;
/// child.send(&"ready".to_string())?;
/// assert_eq!(parent.recv()?, "ready");
/// drop(child);
/// assert_eq!(parent.recv(), Err(procpool::SyncError::Disconnected));
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Pipe<T> {
    channel: Channel,
    /// This end, counted in the pipe's holder table.
    party: Party,
    /// An end is one party: `Send`, not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
    /// 0 or 1: this end sends on lane `end` and receives on the other.
    end: u32,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Pipe<T> {
    /// The two ends of a new pipe, each direction with a 4 MiB buffer.
    pub fn pair() -> Result<(Pipe<T>, Pipe<T>), SyncError> {
        Pipe::with_buffer(DEFAULT_BUFFER_BYTES)
    }

    /// The two ends of a new pipe, each direction with `bytes` of buffer (rounded up to
    /// a power of two): also the largest encoded message.
    pub fn with_buffer(bytes: usize) -> Result<(Pipe<T>, Pipe<T>), SyncError> {
        let channel = Channel::create(Kind::Pipe, region::type_tag::<T>(), 2, bytes, 0)?;
        let other = channel.share();
        Ok((Pipe::end(channel, 0, 0)?, Pipe::end(other, 1, 0)?))
    }

    /// Sends `message` to the other end, waiting while its buffer is full.
    pub fn send(&self, message: &T) -> Result<(), SyncError> {
        let bytes = Codec::Bincode.encode(message).map_err(SyncError::Codec)?;
        self.channel
            .send(self.end, &bytes, None, Peer::End(1 - self.end))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, SyncError> {
        let bytes = self
            .channel
            .recv(1 - self.end, deadline, Peer::End(1 - self.end))?;
        Codec::Bincode.decode(&bytes).map_err(SyncError::Codec)
    }

    /// Receives the next message, waiting for one.
    pub fn recv(&self) -> Result<T, SyncError> {
        self.recv_until(None)
    }

    /// Receives the next message, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, SyncError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// Receives a message if one is waiting ([`SyncError::Empty`] otherwise).
    pub fn try_recv(&self) -> Result<T, SyncError> {
        self.recv_until(Some(Instant::now())).map_err(|e| match e {
            SyncError::Timeout => SyncError::Empty,
            e => e,
        })
    }
}

impl<T> Pipe<T> {
    fn end(channel: Channel, end: u32, hold: u32) -> Result<Pipe<T>, SyncError> {
        let party = Party::join(channel.map().clone(), end, hold, channel::wake_all)?;
        Ok(Pipe {
            channel,
            party,
            _not_sync: PhantomData,
            end,
            _t: PhantomData,
        })
    }

    /// Whether a message is waiting to be received.
    pub fn poll(&self) -> bool {
        self.channel.len(1 - self.end) > 0
    }
}

impl<T> std::fmt::Debug for Pipe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe").field("end", &self.end).finish()
    }
}

impl<T> Serialize for Pipe<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.end, self.party.wire()).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Pipe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (end, wire) = <(u32, region::Wire)>::deserialize(d)?;
        if end > 1 {
            return Err(D::Error::custom(format!(
                "a pipe has ends 0 and 1, not {end}"
            )));
        }
        let map =
            region::open(&wire, Kind::Pipe, region::type_tag::<T>()).map_err(D::Error::custom)?;
        let channel = Channel::open(map, 2).map_err(D::Error::custom)?;
        Pipe::end(channel, end, wire.hold).map_err(D::Error::custom)
    }
}
