//! What every primitive's shared memory region has in common: its header, and how a
//! handle travels to another process (serde) and is opened there.
//!
//! Header: bytes 0..4 hold the magic and the kind, 4..8 the lock word
//! (`sys::shm`), 8..12 a tag of the element type; the kind's own fields follow.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::shm::Mapping;

/// Where a kind's own fields start.
pub(crate) const FIELDS: usize = 16;
/// Where small kinds keep their data (a cache line after the header).
pub(crate) const DATA: usize = 64;
const MAGIC_OFFSET: usize = 0;
const TAG_OFFSET: usize = 8;
const MAGIC: u32 = 0x5050_5300;

/// Which primitive a region backs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Lock = 1,
    Event = 2,
    Semaphore = 3,
    Value = 4,
    Array = 5,
    Queue = 6,
    Pipe = 7,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Event => "event",
            Kind::Semaphore => "semaphore",
            Kind::Value => "value",
            Kind::Array => "array",
            Kind::Queue => "queue",
            Kind::Pipe => "pipe",
        }
    }
}

/// A 32-bit tag of type `T` (FNV-1a of its name): a region opened as another element
/// type than it was made with is refused, not misread.
pub(crate) fn type_tag<T: ?Sized>() -> u32 {
    std::any::type_name::<T>()
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

/// A new zeroed region of `len` bytes for `kind`, tagged with the element type `tag`.
pub(crate) fn create(kind: Kind, tag: u32, len: usize) -> std::io::Result<Arc<Mapping>> {
    let map = Mapping::create(kind.name(), len)?;
    map.u32_at(TAG_OFFSET).store(tag, Ordering::Relaxed);
    map.u32_at(MAGIC_OFFSET)
        .store(MAGIC | kind as u32, Ordering::Release);
    Ok(Arc::new(map))
}

/// A handle as it travels: where the sending process holds the region. The receiver
/// opens the region through `/proc`, so the sender must hold its handle until then.
#[derive(Serialize, Deserialize)]
pub(crate) struct Wire {
    pid: u32,
    fd: i32,
    len: u64,
    /// The token of the hold that counts this copy while in flight (queues and pipes);
    /// 0 for none.
    pub hold: u32,
}

impl Wire {
    /// This process's handle to `map`, held in flight under `hold` (0: not held).
    pub fn of(map: &Mapping, hold: u32) -> Wire {
        Wire {
            pid: std::process::id(),
            fd: map.raw_fd(),
            len: map.len() as u64,
            hold,
        }
    }
}

/// Serializes a handle to `map`.
pub(crate) fn serialize<S: Serializer>(map: &Mapping, s: S) -> Result<S::Ok, S::Error> {
    Wire::of(map, 0).serialize(s)
}

/// Opens the region a serialized handle names, checking its kind and element type.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
    kind: Kind,
    tag: u32,
) -> Result<Arc<Mapping>, D::Error> {
    deserialize_held(d, kind, tag).map(|(map, _)| map)
}

/// [`deserialize`], with the token of the hold that counted the handle in flight (0 for
/// none).
pub(crate) fn deserialize_held<'de, D: Deserializer<'de>>(
    d: D,
    kind: Kind,
    tag: u32,
) -> Result<(Arc<Mapping>, u32), D::Error> {
    let wire = Wire::deserialize(d)?;
    let map = open(&wire, kind, tag).map_err(serde::de::Error::custom)?;
    Ok((map, wire.hold))
}

/// Opens the region `wire` names, checking its kind and element type.
pub(crate) fn open(wire: &Wire, kind: Kind, tag: u32) -> Result<Arc<Mapping>, String> {
    let name = kind.name();
    let len = usize::try_from(wire.len).map_err(|_| format!("a {name} of {} bytes", wire.len))?;
    let map = Mapping::open(wire.pid, wire.fd, len).map_err(|e| {
        format!(
            "cannot open the {name} that process {} sent (its descriptor {}): {e}; the \
             sender must keep its handle until the receiver has opened it",
            wire.pid, wire.fd
        )
    })?;
    let magic = map.u32_at(MAGIC_OFFSET).load(Ordering::Acquire);
    if magic != MAGIC | kind as u32 {
        return Err(format!(
            "the region process {} sent is not a {name} (header {magic:#x})",
            wire.pid
        ));
    }
    if map.u32_at(TAG_OFFSET).load(Ordering::Relaxed) != tag {
        return Err(format!(
            "the {name} process {} sent holds another element type than this one",
            wire.pid
        ));
    }
    Ok(Arc::new(map))
}
