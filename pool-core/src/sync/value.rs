//! [`Value`] and [`Array`]: plain numbers in shared memory.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SyncError;
use super::region::{self, DATA, FIELDS, Kind};
use crate::sys::shm::{Held, Mapping};

mod sealed {
    pub trait Sealed {}
}

/// A plain number that can live in shared memory: the integer types and `f32`/`f64`.
/// Every access to a shared number is atomic, so reads never see a torn value.
pub trait Plain:
    sealed::Sealed + Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static
{
    /// Its size in bytes (1, 2, 4 or 8).
    #[doc(hidden)]
    const SIZE: usize;
    #[doc(hidden)]
    fn to_bits(self) -> u64;
    #[doc(hidden)]
    fn from_bits(bits: u64) -> Self;
}

/// The [`Plain`] integers, which also have atomic `fetch_add` / `fetch_sub`.
pub trait Integer: Plain {}

macro_rules! integers {
    ($($t:ty => $u:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn to_bits(self) -> u64 { self as $u as u64 }
            fn from_bits(bits: u64) -> Self { bits as $u as $t }
        }
        impl Integer for $t {}
    )*};
}
integers!(u8 => u8, u16 => u16, u32 => u32, u64 => u64, usize => usize,
          i8 => u8, i16 => u16, i32 => u32, i64 => u64, isize => usize);

impl sealed::Sealed for f32 {}
impl Plain for f32 {
    const SIZE: usize = 4;
    fn to_bits(self) -> u64 {
        u64::from(f32::to_bits(self))
    }
    fn from_bits(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
}

impl sealed::Sealed for f64 {}
impl Plain for f64 {
    const SIZE: usize = 8;
    fn to_bits(self) -> u64 {
        f64::to_bits(self)
    }
    fn from_bits(bits: u64) -> Self {
        f64::from_bits(bits)
    }
}

/// One number in shared memory, like `multiprocessing.Value`: integers have atomic
/// [`fetch_add`](Value::fetch_add); any read-modify-write goes through
/// [`update`](Value::update) or [`lock`](Value::lock), which hold the value's own lock
/// (a [`Lock`](crate::Lock): a holder that dies does not leave it held).
///
/// A handle: clones and copies sent to other processes all refer to the same number.
///
/// ```
/// let hits = procpool::Value::new(0u64)?;
/// hits.fetch_add(2);
/// hits.update(|n| n * 10);
/// {
///     let mut n = hits.lock();
///     n.set(n.get() + 1);
/// }
/// assert_eq!(hits.get(), 21);
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Value<T: Plain> {
    map: Arc<Mapping>,
    _t: PhantomData<T>,
}

impl<T: Plain> Value<T> {
    /// A new shared number holding `initial`.
    pub fn new(initial: T) -> Result<Value<T>, SyncError> {
        let map = region::create(Kind::Value, region::type_tag::<T>(), DATA + 8)?;
        map.store_bits(DATA, T::SIZE, initial.to_bits());
        Ok(Value {
            map,
            _t: PhantomData,
        })
    }

    /// The number now.
    pub fn get(&self) -> T {
        T::from_bits(self.map.load_bits(DATA, T::SIZE))
    }

    /// Replaces the number.
    pub fn set(&self, value: T) {
        self.map.store_bits(DATA, T::SIZE, value.to_bits());
    }

    /// Applies `f` under the value's lock and stores the result, which it returns: no
    /// other `update` or `lock` holder interleaves with it.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> T {
        let guard = self.lock();
        let new = f(guard.get());
        guard.set(new);
        new
    }

    /// Takes the value's lock, for several steps that must not interleave with other
    /// holders. `fetch_add`, `get` and `set` do not take the lock.
    pub fn lock(&self) -> ValueGuard<'_, T> {
        ValueGuard {
            held: self.map.lock(),
            value: self,
        }
    }
}

impl<T: Integer> Value<T> {
    /// Atomically adds `delta` (wrapping) and returns the previous number.
    pub fn fetch_add(&self, delta: T) -> T {
        T::from_bits(self.map.fetch_add_bits(DATA, T::SIZE, delta.to_bits()))
    }

    /// Atomically subtracts `delta` (wrapping) and returns the previous number.
    pub fn fetch_sub(&self, delta: T) -> T {
        let minus = delta.to_bits().wrapping_neg();
        T::from_bits(self.map.fetch_add_bits(DATA, T::SIZE, minus))
    }
}

/// A [`Value`] under its lock; released on drop.
pub struct ValueGuard<'a, T: Plain> {
    held: Held<'a>,
    value: &'a Value<T>,
}

impl<T: Plain> ValueGuard<'_, T> {
    /// The number now.
    pub fn get(&self) -> T {
        self.value.get()
    }

    /// Replaces the number.
    pub fn set(&self, value: T) {
        self.value.set(value)
    }

    /// The pid of a process that died holding this lock, if this acquisition took it
    /// over (see [`LockGuard::previous_owner_died`](crate::LockGuard::previous_owner_died)).
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.held.previous_owner_died()
    }
}

/// A fixed-length array of numbers in shared memory, like `multiprocessing.Array`.
/// Element reads and writes are atomic; [`lock`](Array::lock) holds the array's lock
/// for several steps.
///
/// ```
/// let a = procpool::Array::from_slice(&[1.5f64, 2.5])?;
/// a.set(1, 4.0);
/// assert_eq!(a.to_vec(), vec![1.5, 4.0]);
/// assert_eq!(a.get(2), None);
/// # Ok::<(), procpool::SyncError>(())
/// ```
pub struct Array<T: Plain> {
    map: Arc<Mapping>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Array<T> {
    /// `len` zeros.
    pub fn new(len: usize) -> Result<Array<T>, SyncError> {
        let bytes = len
            .checked_mul(T::SIZE)
            .and_then(|b| b.checked_add(DATA))
            .ok_or(SyncError::TooLarge {
                size: usize::MAX,
                max: isize::MAX as usize,
            })?;
        let map = region::create(Kind::Array, region::type_tag::<T>(), bytes)?;
        map.u64_at(FIELDS).store(len as u64, Ordering::SeqCst);
        Ok(Array {
            map,
            len,
            _t: PhantomData,
        })
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Result<Array<T>, SyncError> {
        let array = Array::new(values.len())?;
        for (i, v) in values.iter().enumerate() {
            array.set(i, *v);
        }
        Ok(array)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        (i < self.len).then(|| T::from_bits(self.map.load_bits(DATA + i * T::SIZE, T::SIZE)))
    }

    /// Sets element `i`.
    ///
    /// # Panics
    /// If `i` is past the end, as indexing a slice does.
    pub fn set(&self, i: usize, value: T) {
        assert!(
            i < self.len,
            "index {i} out of range for an array of {}",
            self.len
        );
        self.map
            .store_bits(DATA + i * T::SIZE, T::SIZE, value.to_bits());
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len).filter_map(|i| self.get(i)).collect()
    }

    /// Takes the array's lock, for several steps that must not interleave with other
    /// holders; element accessors do not take it.
    pub fn lock(&self) -> ArrayGuard<'_, T> {
        ArrayGuard {
            held: self.map.lock(),
            array: self,
        }
    }
}

impl<T: Integer> Array<T> {
    /// Atomically adds `delta` (wrapping) to element `i`; returns the previous value.
    ///
    /// # Panics
    /// If `i` is past the end.
    pub fn fetch_add(&self, i: usize, delta: T) -> T {
        assert!(
            i < self.len,
            "index {i} out of range for an array of {}",
            self.len
        );
        T::from_bits(
            self.map
                .fetch_add_bits(DATA + i * T::SIZE, T::SIZE, delta.to_bits()),
        )
    }
}

/// An [`Array`] under its lock; released on drop. Derefs to the array.
pub struct ArrayGuard<'a, T: Plain> {
    held: Held<'a>,
    array: &'a Array<T>,
}

impl<T: Plain> ArrayGuard<'_, T> {
    /// The pid of a process that died holding this lock, if this acquisition took it
    /// over.
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.held.previous_owner_died()
    }
}

impl<T: Plain> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = Array<T>;
    fn deref(&self) -> &Array<T> {
        self.array
    }
}

impl<T: Plain> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            map: self.map.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Plain> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            map: self.map.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Plain> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

impl<T: Plain> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

impl<T: Plain> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        region::serialize(&self.map, s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Value {
            map: region::deserialize(d, Kind::Value, region::type_tag::<T>())?,
            _t: PhantomData,
        })
    }
}

impl<T: Plain> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        region::serialize(&self.map, s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = region::deserialize(d, Kind::Array, region::type_tag::<T>())?;
        let len = map.u64_at(FIELDS).load(Ordering::SeqCst);
        // The length comes from shared memory: never trust it past the region's size.
        let fits = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(T::SIZE))
            .is_some_and(|b| b <= map.len() - DATA);
        if !fits {
            return Err(serde::de::Error::custom(format!(
                "shared array claims {len} elements in {} bytes",
                map.len()
            )));
        }
        Ok(Array {
            map,
            len: len as usize,
            _t: PhantomData,
        })
    }
}
