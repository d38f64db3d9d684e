//! [`Queue`] and [`JoinableQueue`]: many-producer, many-consumer queues between
//! processes.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use pool_worker::Codec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SyncError;
use super::channel::{self, Channel};
use super::holders::{Party, Peer};
use super::region::{self, Kind};

/// The default ring buffer of a queue or pipe lane: 4 MiB of shared memory, touched
/// only as it fills.
pub const DEFAULT_BUFFER_BYTES: usize = 4 << 20;

/// A queue shared by processes, like `multiprocessing.Queue`: any number of processes
/// put and get. Items are encoded with bincode into a ring buffer in shared memory.
///
/// - `put` takes the item by reference, so a failed put loses nothing.
/// - With a capacity ([`Queue::bounded`]), `put` waits for room: back-pressure.
/// - When nothing can ever change the outcome, a wait ends with
///   [`SyncError::Disconnected`] instead of hanging: `get` on an empty queue, or `put`
///   on a full one, when no other handle of the queue is left alive in any process.
///   Handles count while they live; a copy sent as a task's or a [`Process`](crate::Process)'s
///   argument counts from the moment it is sent until that task resolves or that
///   process is reaped.
///
/// A `Queue` is a handle: clones, and copies sent to other processes as job
/// arguments, refer to the same queue. Each handle is one party to it, so it is `Send`
/// but not `Sync`: to use a queue from several threads, give each thread a clone.
/// `try_put` and `try_get` report `Full` and `Empty` (they never wait, so never hang).
///
///
/// ```
/// let q = procpool::Queue::<String>::bounded(2)?;
/// q.put(&"washed".to_string())?;
/// q.put(&"dried".to_string())?;
/// assert_eq!(q.try_put(&"folded".to_string()), Err(procpool::SyncError::Full));
/// assert_eq!(q.get()?, "washed");
/// assert_eq!(q.len(), 1);
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Queue<T> {
    channel: Channel,
    /// This handle, counted in the queue's holder table.
    _party: Party,
    _t: PhantomData<fn(T) -> T>,
    /// A handle is one party: threads share a queue by each holding a clone.
    _not_sync: PhantomData<Cell<()>>,
}

/// Settings of a new [`Queue`] or [`JoinableQueue`].
#[derive(Clone, Copy, Debug)]
pub struct QueueBuilder {
    capacity: u32,
    buffer_bytes: usize,
}

impl Default for QueueBuilder {
    fn default() -> Self {
        QueueBuilder {
            capacity: 0,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
        }
    }
}

impl QueueBuilder {
    /// At most `n` items waiting; `put` blocks while it is full. Default: no limit but
    /// the buffer.
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = n;
        self
    }

    /// Bytes of shared buffer (rounded up to a power of two, at most 2 GiB): also the
    /// largest encoded item, and what `put` waits for room in. Default 4 MiB.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
        self
    }

    /// The queue.
    pub fn build<T: Serialize + DeserializeOwned>(self) -> Result<Queue<T>, SyncError> {
        let channel = Channel::create(
            Kind::Queue,
            region::type_tag::<T>(),
            1,
            self.buffer_bytes,
            self.capacity,
        )?;
        Queue::from_channel(channel, 0)
    }

    /// The queue, joinable.
    pub fn build_joinable<T: Serialize + DeserializeOwned>(
        self,
    ) -> Result<JoinableQueue<T>, SyncError> {
        Ok(JoinableQueue {
            queue: self.build()?,
        })
    }
}

fn deadline(timeout: Duration) -> Option<Instant> {
    Some(Instant::now() + timeout)
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue without a capacity limit (its 4 MiB buffer still bounds what waits).
    pub fn new() -> Result<Queue<T>, SyncError> {
        QueueBuilder::default().build()
    }

    /// A queue of at most `capacity` waiting items.
    pub fn bounded(capacity: u32) -> Result<Queue<T>, SyncError> {
        QueueBuilder::default().capacity(capacity).build()
    }

    /// Settings beyond the capacity: the buffer size.
    pub fn builder() -> QueueBuilder {
        QueueBuilder::default()
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<(), SyncError> {
        let bytes = Codec::Bincode.encode(item).map_err(SyncError::Codec)?;
        self.channel.send(0, &bytes, deadline, Peer::AnyOther)
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T, SyncError> {
        let bytes = self.channel.recv(0, deadline, Peer::AnyOther)?;
        Codec::Bincode.decode(&bytes).map_err(SyncError::Codec)
    }

    /// Adds `item`, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<(), SyncError> {
        self.put_until(item, None)
    }

    /// Adds `item`, waiting at most `timeout` for room ([`SyncError::Timeout`]).
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), SyncError> {
        self.put_until(item, deadline(timeout))
    }

    /// Adds `item` if there is room now ([`SyncError::Full`] otherwise).
    pub fn try_put(&self, item: &T) -> Result<(), SyncError> {
        self.put_until(item, Some(Instant::now()))
            .map_err(|e| match e {
                SyncError::Timeout => SyncError::Full,
                e => e,
            })
    }

    /// Takes the oldest item, waiting for one.
    pub fn get(&self) -> Result<T, SyncError> {
        self.get_until(None)
    }

    /// Takes the oldest item, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, SyncError> {
        self.get_until(deadline(timeout))
    }

    /// Takes the oldest item if there is one now ([`SyncError::Empty`] otherwise).
    pub fn try_get(&self) -> Result<T, SyncError> {
        self.get_until(Some(Instant::now())).map_err(|e| match e {
            SyncError::Timeout => SyncError::Empty,
            e => e,
        })
    }
}

impl<T> Queue<T> {
    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.channel.len(0)
    }

    /// Whether no item is waiting now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn from_channel(channel: Channel, hold: u32) -> Result<Queue<T>, SyncError> {
        let party = Party::join(channel.map().clone(), 0, hold, channel::wake_all)?;
        Ok(Queue {
            channel,
            _party: party,
            _t: PhantomData,
            _not_sync: PhantomData,
        })
    }
}

impl<T> Clone for Queue<T> {
    /// Another handle to the same queue.
    ///
    /// # Panics
    /// If more than 128 other processes already hold handles to the queue.
    fn clone(&self) -> Self {
        Queue {
            channel: self.channel.share(),
            _party: self._party.clone(),
            _t: PhantomData,
            _not_sync: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self._party.wire().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (map, hold) = region::deserialize_held(d, Kind::Queue, region::type_tag::<T>())?;
        let channel = Channel::open(map, 1).map_err(D::Error::custom)?;
        Queue::from_channel(channel, hold).map_err(D::Error::custom)
    }
}

/// A [`Queue`] that also counts finished items, like `multiprocessing.JoinableQueue`:
/// a consumer calls [`task_done`](JoinableQueue::task_done) for each item it took, and
/// [`join`](JoinableQueue::join) waits until every item put was done. Derefs to the
/// [`Queue`] for `put` and `get`.
///
/// ```
/// let q = procpool::JoinableQueue::<u32>::new()?;
/// q.put(&1)?;
/// assert!(q.join_timeout(std::time::Duration::from_millis(1)).is_err());
/// q.get()?;
/// q.task_done()?;
/// q.join()?;
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A joinable queue without a capacity limit.
    pub fn new() -> Result<JoinableQueue<T>, SyncError> {
        QueueBuilder::default().build_joinable()
    }

    /// A joinable queue of at most `capacity` waiting items.
    pub fn bounded(capacity: u32) -> Result<JoinableQueue<T>, SyncError> {
        QueueBuilder::default().capacity(capacity).build_joinable()
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one item taken with `get` as processed. [`SyncError::TaskDone`] if called
    /// more often than items were taken.
    pub fn task_done(&self) -> Result<(), SyncError> {
        self.queue.channel.task_done(0)
    }

    /// Waits until every item ever put has been marked done. Ends with
    /// [`SyncError::Disconnected`] if items are unfinished and no other handle of the
    /// queue is alive to finish them.
    pub fn join(&self) -> Result<(), SyncError> {
        self.queue.channel.join(0, None, Peer::AnyOther)
    }

    /// [`join`](JoinableQueue::join), waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), SyncError> {
        self.queue
            .channel
            .join(0, deadline(timeout), Peer::AnyOther)
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JoinableQueue {
            queue: Queue::deserialize(d)?,
        })
    }
}
