//! Decoding bytes that another process wrote, with nothing taken on trust.
//!
//! bincode 2 allocates a decoded `String` or byte buffer at the length the bytes
//! announce before it reads a byte of it, and lets a sequence announce as many
//! elements as it likes: 20 bytes can ask for 32 TiB, 2^60 zero-sized elements take
//! forever, and a self-nesting type as deep as the bytes say overflows the stack. Its
//! own guard (`Config::with_limit`) is a compile-time constant. So every decode of peer
//! bytes goes through [`decode`], which wraps bincode's deserializer in one that, at
//! run time, against the input it has:
//!
//! - refuses a string or byte buffer longer than the bytes left (each of its bytes is
//!   one byte of input), before bincode allocates it;
//! - tells a collection's `Deserialize` no more elements than there are bytes left (so
//!   no preallocation goes past the input), and refuses more than [`EMPTY_ELEMENTS`]
//!   elements that take no input at all;
//! - refuses nesting deeper than [`MAX_DEPTH`].
//!
//! Allocations are then bounded by the input's length, and the work by its length plus
//! the empty-element budget, whatever the type.

use std::cell::Cell;
use std::fmt;

use crate::sys::RegionMap;
use bincode::de::read::Reader;
use bincode::error::DecodeError;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Nesting (sequences, maps, structs, tuples, enums, options, newtypes inside each
/// other) deeper than this is refused: decoding recurses once per level.
pub(crate) const MAX_DEPTH: u32 = 128;
/// Elements that take no input (`()`, unit structs) accepted in one decode.
pub(crate) const EMPTY_ELEMENTS: u32 = 1 << 16;

/// How integers (and so lengths) are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ints {
    /// Fixed width, little-endian: a length is 8 bytes. [`crate::Codec::Bincode`].
    Fixed,
    /// bincode's variable width (`config::standard()`): the protocol's messages.
    Varint,
}

/// Decodes a `T` from the start of `bytes`; the value and how many bytes it took.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], ints: Ints) -> Result<(T, usize), String> {
    decode_from(Source::Bytes(bytes), ints)
}

/// Decodes a `T` from the start of the first `len` bytes of `map` (shared memory that
/// another process can write), copied out as decoding goes: nothing here refers to
/// the shared bytes, each is read once, and large byte strings are copied straight
/// into the value that holds them (one copy, not two). The value and how many bytes
/// it took.
pub(crate) fn decode_shared<T: DeserializeOwned>(
    map: &RegionMap,
    len: usize,
    ints: Ints,
) -> Result<(T, usize), String> {
    if len > map.len() {
        return Err(format!("{len} bytes of a mapping of {}", map.len()));
    }
    decode_from(Source::Shared { map, len }, ints)
}

fn decode_from<T: DeserializeOwned>(source: Source<'_>, ints: Ints) -> Result<(T, usize), String> {
    let input = Input {
        source,
        at: Cell::new(0),
        ints,
        depth: Cell::new(0),
        empty: Cell::new(0),
    };
    let reader = InputReader { input: &input };
    let value = match ints {
        Ints::Fixed => run(
            &input,
            reader,
            bincode::config::standard().with_fixed_int_encoding(),
        ),
        Ints::Varint => run(&input, reader, bincode::config::standard()),
    }
    .map_err(|e| e.to_string())?;
    Ok((value, input.at.get()))
}

fn run<T: DeserializeOwned, C: bincode::config::Config>(
    input: &Input<'_>,
    reader: InputReader<'_>,
    config: C,
) -> Result<T, DecodeError> {
    let mut decoder = bincode::serde::OwnedSerdeDecoder::from_reader(reader, config);
    T::deserialize(Guard {
        de: decoder.as_deserializer(),
        input,
    })
}

/// Where the bytes being decoded are.
enum Source<'a> {
    Bytes(&'a [u8]),
    /// The first `len` bytes of a shared mapping (no more than it maps).
    Shared {
        map: &'a RegionMap,
        len: usize,
    },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Bytes(bytes) => bytes.len(),
            Source::Shared { len, .. } => *len,
        }
    }

    /// Copies the bytes at `at` into `out`, all of them or an error.
    fn read_at(&self, at: usize, out: &mut [u8]) -> Result<(), DecodeError> {
        let end = at.saturating_add(out.len());
        if end > self.len() {
            return Err(DecodeError::UnexpectedEnd {
                additional: end - self.len(),
            });
        }
        match self {
            Source::Bytes(bytes) => out.copy_from_slice(&bytes[at..end]),
            Source::Shared { map, .. } => map.copy_out(at, out),
        }
        Ok(())
    }
}

/// The bytes being decoded and what the guard keeps count of.
struct Input<'a> {
    source: Source<'a>,
    /// Bytes read so far.
    at: Cell<usize>,
    ints: Ints,
    depth: Cell<u32>,
    /// Elements so far that took no input.
    empty: Cell<u32>,
}

impl Input<'_> {
    fn left(&self) -> usize {
        self.source.len() - self.at.get()
    }

    /// The length the next bytes announce, and how many bytes announce it; `None` when
    /// they are cut short (bincode then fails on its own).
    fn next_len(&self) -> Option<(u64, usize)> {
        let mut head = [0u8; 9];
        let head = &mut head[..self.left().min(9)];
        self.source.read_at(self.at.get(), head).ok()?;
        let rest = &*head;
        let le = |n: usize| -> Option<u64> {
            let bytes = rest.get(1..=n)?;
            Some(
                bytes
                    .iter()
                    .rev()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            )
        };
        match self.ints {
            Ints::Fixed => {
                let word = rest.first_chunk::<8>()?;
                Some((u64::from_le_bytes(*word), 8))
            }
            Ints::Varint => match *rest.first()? {
                small @ 0..=250 => Some((u64::from(small), 1)),
                251 => le(2).map(|n| (n, 3)),
                252 => le(4).map(|n| (n, 5)),
                253 => le(8).map(|n| (n, 9)),
                // A 128-bit length, or no integer at all: past anything that fits.
                _ => Some((u64::MAX, 1)),
            },
        }
    }

    /// Refuses a string or byte buffer about to be read if it announces more bytes
    /// than are left.
    fn check_bytes<E: de::Error>(&self) -> Result<(), E> {
        let Some((len, head)) = self.next_len() else {
            return Ok(());
        };
        let left = self.left().saturating_sub(head);
        if len > left as u64 {
            return Err(E::custom(format_args!(
                "a length of {len} bytes where {left} are left"
            )));
        }
        Ok(())
    }

    /// Runs `f` one level deeper.
    fn nested<R, E: de::Error>(&self, f: impl FnOnce() -> Result<R, E>) -> Result<R, E> {
        let depth = self.depth.get() + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth.set(depth);
        let result = f();
        self.depth.set(depth - 1);
        result
    }

    /// Counts an element that took no input since `before`.
    fn took<E: de::Error>(&self, before: usize) -> Result<(), E> {
        if self.at.get() != before {
            return Ok(());
        }
        let empty = self.empty.get() + 1;
        if empty > EMPTY_ELEMENTS {
            return Err(E::custom(format_args!(
                "more than {EMPTY_ELEMENTS} elements that take no bytes"
            )));
        }
        self.empty.set(empty);
        Ok(())
    }
}

/// bincode's reader over the input, keeping the position where the guard sees it.
struct InputReader<'a> {
    input: &'a Input<'a>,
}

impl Reader for InputReader<'_> {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
        let at = self.input.at.get();
        self.input.source.read_at(at, out)?;
        self.input.at.set(at + out.len());
        Ok(())
    }

    #[inline]
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        // Private bytes only: shared ones are copied out as they are read.
        let Source::Bytes(bytes) = self.input.source else {
            return None;
        };
        let at = self.input.at.get();
        bytes.get(at..at.checked_add(n)?)
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        let at = self.input.at.get().saturating_add(n);
        self.input.at.set(at.min(self.input.source.len()));
    }
}

/// A deserializer that checks what its inner one is about to trust.
struct Guard<'a, D> {
    de: D,
    input: &'a Input<'a>,
}

impl<'a, D> Guard<'a, D> {
    fn wrap<V>(&self, visitor: V) -> Wrap<'a, V> {
        Wrap {
            visitor,
            input: self.input,
        }
    }
}

/// Forwards a method that reads no length and holds nothing nested.
macro_rules! forward {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let visitor = self.wrap(visitor);
            self.de.$method(visitor)
        }
    )*};
}

/// Forwards a method that reads a string or byte buffer, checked first.
macro_rules! forward_bytes {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.input.check_bytes()?;
            self.de.$method(visitor)
        }
    )*};
}

/// Forwards a method whose value holds others, one level deeper.
macro_rules! forward_nested {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let visitor = self.wrap(visitor);
            let de = self.de;
            self.input.nested(|| de.$method(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guard<'_, D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );
    forward_bytes!(
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
    );
    forward_nested!(deserialize_option, deserialize_seq, deserialize_map);

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.wrap(visitor);
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (visitor, de) = (self.wrap(visitor), self.de);
        self.input
            .nested(|| de.deserialize_newtype_struct(name, visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (visitor, de) = (self.wrap(visitor), self.de);
        self.input.nested(|| de.deserialize_tuple(len, visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (visitor, de) = (self.wrap(visitor), self.de);
        self.input
            .nested(|| de.deserialize_tuple_struct(name, len, visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (visitor, de) = (self.wrap(visitor), self.de);
        self.input
            .nested(|| de.deserialize_struct(name, fields, visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let (visitor, de) = (self.wrap(visitor), self.de);
        self.input
            .nested(|| de.deserialize_enum(name, variants, visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor whose nested deserializers are guarded too.
struct Wrap<'a, V> {
    visitor: V,
    input: &'a Input<'a>,
}

/// Forwards visits of plain values.
macro_rules! visit {
    ($($method:ident($t:ty)),* $(,)?) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $t) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_some(Guard {
            de,
            input: self.input,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_newtype_struct(Guard {
            de,
            input: self.input,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_seq(Seq {
            seq,
            input: self.input,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(Map {
            map,
            input: self.input,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_enum(Enum {
            data,
            input: self.input,
        })
    }
}

/// A seed whose deserializer is guarded.
struct Seed<'a, S> {
    seed: S,
    input: &'a Input<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Guard {
            de,
            input: self.input,
        })
    }
}

struct Seq<'a, A> {
    seq: A,
    input: &'a Input<'a>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let before = self.input.at.get();
        let input = self.input;
        let element = self.seq.next_element_seed(Seed { seed, input })?;
        if element.is_some() {
            input.took(before)?;
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        // What a collection may preallocate: no more than there are bytes left.
        self.seq.size_hint().map(|n| n.min(self.input.left()))
    }
}

struct Map<'a, A> {
    map: A,
    input: &'a Input<'a>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let before = self.input.at.get();
        let input = self.input;
        let key = self.map.next_key_seed(Seed { seed, input })?;
        if key.is_some() {
            input.took(before)?;
        }
        Ok(key)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let before = self.input.at.get();
        let input = self.input;
        let value = self.map.next_value_seed(Seed { seed, input })?;
        input.took(before)?;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint().map(|n| n.min(self.input.left()))
    }
}

struct Enum<'a, A> {
    data: A,
    input: &'a Input<'a>,
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'a, A> {
    type Error = A::Error;
    type Variant = Variant<'a, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let input = self.input;
        let (value, variant) = self.data.variant_seed(Seed { seed, input })?;
        Ok((value, Variant { variant, input }))
    }
}

struct Variant<'a, A> {
    variant: A,
    input: &'a Input<'a>,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.variant.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        let input = self.input;
        self.variant.newtype_variant_seed(Seed { seed, input })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let input = self.input;
        self.variant.tuple_variant(len, Wrap { visitor, input })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let input = self.input;
        self.variant.struct_variant(fields, Wrap { visitor, input })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn round_trip<T>(value: T)
    where
        T: serde::Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        for (ints, bytes) in [
            (
                Ints::Fixed,
                bincode::serde::encode_to_vec(
                    &value,
                    bincode::config::standard().with_fixed_int_encoding(),
                ),
            ),
            (
                Ints::Varint,
                bincode::serde::encode_to_vec(&value, bincode::config::standard()),
            ),
        ] {
            let bytes = bytes.unwrap();
            let (back, used) = decode::<T>(&bytes, ints).unwrap();
            assert_eq!(back, value, "{ints:?}");
            assert_eq!(used, bytes.len(), "{ints:?}");
            let map = shared(&bytes);
            let (back, used) = decode_shared::<T>(&map, bytes.len(), ints).unwrap();
            assert_eq!(back, value, "{ints:?} from shared memory");
            assert_eq!(used, bytes.len(), "{ints:?} from shared memory");
        }
    }

    /// A shared mapping holding `bytes`, and some more after them.
    fn shared(bytes: &[u8]) -> RegionMap {
        use std::os::fd::AsFd;
        let fd =
            nix::sys::memfd::memfd_create("procpool-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        let len = bytes.len() + 4;
        nix::unistd::ftruncate(&fd, len as i64).unwrap();
        let mut map = RegionMap::map(fd.as_fd(), len).unwrap();
        map.copy_in(0, bytes);
        map.copy_in(bytes.len(), b"more");
        map
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Shape {
        Unit,
        Newtype(String),
        Tuple(u8, Vec<u16>),
        Struct {
            name: String,
            tags: BTreeMap<u32, Option<String>>,
        },
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Wrapper(Vec<Shape>);

    #[test]
    fn every_shape_of_value_decodes_as_it_was() {
        round_trip(String::from("héllo"));
        round_trip(serde_bytes::ByteBuf::from(vec![0u8, 255, 3]));
        round_trip((1u8, -2i16, 3u32, -4i64, 5u128, 1.5f32, -2.5f64, 'é', true));
        round_trip(vec![Some(1u64), None, Some(u64::MAX)]);
        round_trip(HashMap::from([(String::from("a"), vec![1u64, 2, 3])]));
        round_trip([7u8; 32]);
        round_trip(Wrapper(vec![
            Shape::Unit,
            Shape::Newtype("n".into()),
            Shape::Tuple(9, vec![300, 70_000u32 as u16]),
            Shape::Struct {
                name: "s".into(),
                tags: BTreeMap::from([(1, None), (2, Some("two".into()))]),
            },
        ]));
        round_trip(vec![(); 10]);
        // Lengths that need every varint width.
        round_trip("x".repeat(250));
        round_trip("x".repeat(251));
        round_trip("x".repeat(70_000));
        round_trip((0..20_000u64).map(|i| i.to_string()).collect::<Vec<_>>());
        round_trip(vec![
            serde_bytes::ByteBuf::from(vec![1; 300_000]),
            serde_bytes::ByteBuf::from(vec![2; 10]),
        ]);
    }

    #[test]
    fn shared_bytes_shorter_than_announced_or_lengths_past_them_are_errors() {
        let bytes = bincode::serde::encode_to_vec(
            vec![String::from("abc"); 3],
            bincode::config::standard(),
        )
        .unwrap();
        let map = shared(&bytes);
        let cut = bytes.len() - 2;
        assert!(decode_shared::<Vec<String>>(&map, cut, Ints::Varint).is_err());
        assert!(decode_shared::<Vec<String>>(&map, 1 << 40, Ints::Varint).is_err());
        let huge = [253u8, 0, 0, 0, 0, 0, 0x20, 0, 0];
        let map = shared(&huge);
        let e = decode_shared::<String>(&map, huge.len(), Ints::Varint).unwrap_err();
        assert!(e.contains("where 0 are left"), "{e}");
    }

    #[test]
    fn a_length_just_past_the_input_is_refused_and_one_within_is_not() {
        let bytes = bincode::serde::encode_to_vec("abc", bincode::config::standard()).unwrap();
        assert!(decode::<String>(&bytes, Ints::Varint).is_ok());
        let mut longer = bytes.clone();
        longer[0] = 4;
        let e = decode::<String>(&longer, Ints::Varint).unwrap_err();
        assert!(e.contains("a length of 4 bytes where 3 are left"), "{e}");
        for head in [251u8, 252, 253, 254, 255] {
            let mut wide = vec![head];
            wide.extend_from_slice(&[0xff; 16]);
            assert!(decode::<String>(&wide, Ints::Varint).is_err(), "{head}");
        }
    }
}
