//! How job arguments and results become bytes.
//!
//! Library callers use [`Codec::Bincode`] (compact, typed on both ends); the CLI uses
//! [`Codec::Json`] because it reads JSON lines and does not know a job's Rust types.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::bounded::{self, Ints};
use crate::payload::{Encoded, SpillTo, SpillWriter};
use crate::protocol::ItemFailure;

/// The encoding of a task's argument and result bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// bincode 2 (serde), little-endian with fixed-width integers (a plain copy for
    /// integers, which local IPC favours over varint's fewer bytes). What `Pool` uses.
    Bincode,
    /// JSON text. What the `procpool` command uses.
    Json,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

impl Codec {
    /// Encodes `value`; the error names what failed and why.
    /// Encodes `value` in bincode after what `buf` holds (a buffer reused from value
    /// to value, on a path where each allocation shows).
    pub(crate) fn encode_bincode_into<T: Serialize + ?Sized>(
        value: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), String> {
        bincode::serde::encode_into_std_write(value, buf, bincode_config())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, String> {
        match self {
            Codec::Bincode => {
                bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| e.to_string())
            }
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        }
    }

    /// Encodes `value` with bincode as a payload: in memory, or, past
    /// [`SHARED_ABOVE`](crate::payload::SHARED_ABOVE) bytes, straight into the shared
    /// memory `to` names.
    pub fn encode_payload<T: Serialize + ?Sized>(
        value: &T,
        to: SpillTo,
    ) -> Result<Encoded, String> {
        let mut out = Spill(SpillWriter::new(to));
        out.put(value)?;
        out.0.finish().map_err(|e| e.to_string())
    }

    /// The elements of a bincode `Vec<T>` (or slice), decoded one at a time as they are
    /// taken, so a batch of arguments is never held decoded all at once.
    pub(crate) fn decode_each<T: DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<DecodeEach<'_, T>, String> {
        // Fixed-width integers: the length is a little-endian u64.
        let (len, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("no length before the elements")?;
        Ok(DecodeEach {
            rest,
            left: u64::from_le_bytes(*len),
            _element: std::marker::PhantomData,
        })
    }

    /// Decodes a whole value from `bytes`; trailing bytes are an error. The bytes may
    /// come from another process: no length in them is trusted past the bytes there
    /// are (see `bounded`), so hostile bytes are an error, never a huge allocation.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => {
                let (value, used) = bounded::decode::<T>(bytes, Ints::Fixed)?;
                if used != bytes.len() {
                    return Err(format!(
                        "{} trailing bytes after the value",
                        bytes.len() - used
                    ));
                }
                Ok(value)
            }
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// The elements of an encoded sequence, see [`Codec::decode_each`].
pub(crate) struct DecodeEach<'a, T> {
    rest: &'a [u8],
    left: u64,
    _element: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> DecodeEach<'_, T> {
    /// Checks that the bytes end with the last element.
    pub fn finish(self) -> Result<(), String> {
        match (self.left, self.rest.len()) {
            (0, 0) => Ok(()),
            (0, extra) => Err(format!("{extra} trailing bytes after the elements")),
            (left, _) => Err(format!("{left} elements not taken")),
        }
    }
}

impl<T: DeserializeOwned> Iterator for DecodeEach<'_, T> {
    type Item = Result<T, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(match bounded::decode::<T>(self.rest, Ints::Fixed) {
            Ok((value, used)) => {
                self.rest = &self.rest[used..];
                Ok(value)
            }
            Err(e) => {
                // Nothing after a broken element can be found.
                self.left = 0;
                Err(e)
            }
        })
    }
}

/// Writes a batch's outcomes (a `BatchOutcomes<T>`) value by value as they come, into
/// memory or past the threshold into shared memory, with no vector of values between.
pub(crate) struct OutcomesWriter {
    out: Spill,
    values: u64,
}

/// bincode's writer over a [`SpillWriter`].
struct Spill(SpillWriter);

impl Spill {
    /// Encodes `value` after what is written already.
    #[inline]
    fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        bincode::serde::encode_into_writer(value, self, bincode_config()).map_err(|e| e.to_string())
    }
}

impl bincode::enc::write::Writer for Spill {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0
            .write(bytes)
            .map_err(|inner| bincode::error::EncodeError::Io { inner, index: 0 })
    }
}

impl OutcomesWriter {
    pub fn new(to: SpillTo) -> Result<OutcomesWriter, String> {
        let mut out = Spill(SpillWriter::new(to));
        // The number of values, filled in by `finish`.
        out.0.write(&[0; 8]).map_err(|e| e.to_string())?;
        Ok(OutcomesWriter { out, values: 0 })
    }

    /// The next argument's value.
    #[inline]
    pub fn value<T: Serialize>(&mut self, value: &T) -> Result<(), String> {
        self.out.put(value)?;
        self.values += 1;
        Ok(())
    }

    /// The next argument's value; the range of its encoded bytes among those written
    /// (`None` once they spilled to shared memory: see [`OutcomesWriter::written`]).
    #[inline]
    pub fn value_bytes<T: Serialize>(
        &mut self,
        value: &T,
    ) -> Result<Option<std::ops::Range<usize>>, String> {
        let before = self.out.0.inline().map_or(0, <[u8]>::len);
        self.value(value)?;
        Ok(self.out.0.inline().map(|b| before..b.len()))
    }

    /// Bytes written, while they are all in memory here.
    #[inline]
    pub fn written(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        self.out.0.inline()?.get(range)
    }

    /// Ends with the failures (in argument order).
    pub fn finish(mut self, failures: &[ItemFailure]) -> Result<Encoded, String> {
        self.out.put(failures)?;
        self.out
            .0
            .patch(0, &self.values.to_le_bytes())
            .map_err(|e| e.to_string())?;
        self.out.0.finish().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::BatchOutcomes;

    #[test]
    fn round_trips_in_both_codecs() {
        for codec in [Codec::Bincode, Codec::Json] {
            let v = (7u64, String::from("seven"), vec![1.5f64, -2.0]);
            let bytes = codec.encode(&v).unwrap();
            assert_eq!(codec.decode::<(u64, String, Vec<f64>)>(&bytes).unwrap(), v);
        }
    }

    #[test]
    fn outcomes_written_value_by_value_decode_as_a_whole() {
        let inputs: Vec<u64> = (0..100).collect();
        let bytes = Codec::Bincode.encode(&inputs).unwrap();
        let mut each = Codec::decode_each::<u64>(&bytes).unwrap();
        let mut out = OutcomesWriter::new(SpillTo::Spare).unwrap();
        let mut failures = Vec::new();
        for (index, input) in each.by_ref().enumerate() {
            let input = input.unwrap();
            if input % 10 == 3 {
                failures.push(ItemFailure {
                    index: index as u32,
                    panicked: false,
                    message: format!("{input}"),
                });
            } else {
                out.value(&(input * 2)).unwrap();
            }
        }
        each.finish().unwrap();
        let Encoded::Inline(encoded) = out.finish(&failures).unwrap() else {
            panic!("small outcomes went to shared memory");
        };
        let back: BatchOutcomes<u64> = Codec::Bincode.decode(&encoded).unwrap();
        assert_eq!(back.values.len(), 90);
        assert_eq!(back.values[3], 8);
        assert_eq!(back.failures, failures);

        let mut short = Codec::decode_each::<u64>(&bytes[..bytes.len() - 4]).unwrap();
        assert!(short.nth(99).unwrap().is_err(), "a cut element");
        assert!(
            Codec::decode_each::<u64>(&bytes[..5]).is_err(),
            "a cut length"
        );
        let mut extra = bytes.clone();
        extra.push(1);
        let mut each = Codec::decode_each::<u64>(&extra).unwrap();
        each.by_ref().for_each(drop);
        assert!(each.finish().is_err(), "trailing bytes");
    }

    /// Little-endian u64s (the fixed-width integers of [`Codec::Bincode`]), then `tail`.
    fn words(words: &[u64], tail: &[u8]) -> Vec<u8> {
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(tail);
        bytes
    }

    #[test]
    fn hostile_lengths_inside_strings_bytes_maps_and_nested_types_are_errors() {
        use std::collections::HashMap;
        const HUGE: u64 = 1 << 45;
        // One value: a map of one entry whose key claims 2^45 bytes.
        let key = words(&[1, 1, HUGE], b"key");
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<HashMap<String, Vec<u64>>>>(&key)
                .is_err()
        );
        // ... whose vector claims 2^60 elements.
        let mut vector = words(&[1, 1, 3], b"key");
        vector.extend(words(&[1 << 60, 5], &[]));
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<HashMap<String, Vec<u64>>>>(&vector)
                .is_err()
        );
        // A map that claims 2^60 entries.
        let map = words(&[1, 1 << 60], b"k");
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<HashMap<String, Vec<u64>>>>(&map)
                .is_err()
        );
        // A byte buffer, a string in a nested struct, a failure's message.
        let bytes = words(&[1, HUGE], &[7; 12]);
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<serde_bytes::ByteBuf>>(&bytes)
                .is_err()
        );
        let nested = words(&[1, 2, 0, 1, HUGE], b"deep");
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<Vec<Vec<String>>>>(&nested)
                .is_err()
        );
        let mut failure = words(&[0, 1], &[0, 0, 0, 0, 0]);
        failure.extend(words(&[HUGE], b"why"));
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<u64>>(&failure)
                .is_err()
        );
        assert!(
            Codec::Bincode
                .decode::<String>(&words(&[HUGE], &[]))
                .is_err()
        );
    }

    #[test]
    fn endless_zero_sized_elements_are_an_error_not_a_hang() {
        // Each `()` takes no byte: 2^60 of them would take forever to count.
        let units = words(&[1, 1 << 60], &[]);
        assert!(
            Codec::Bincode
                .decode::<BatchOutcomes<Vec<()>>>(&units)
                .is_err()
        );
        // A few are fine.
        let few = words(&[1, 1000, 0], &[]);
        let back = Codec::Bincode
            .decode::<BatchOutcomes<Vec<()>>>(&few)
            .expect("a thousand units");
        assert_eq!(back.values[0].len(), 1000);
    }

    /// A type that holds itself: as deep as its bytes say.
    #[derive(Debug, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_an_error_not_a_stack_overflow() {
        // Each level is one u32 (the variant); a million levels fit in 4 MB.
        let mut deep = [1u8, 0, 0, 0].repeat(1 << 20);
        deep.extend_from_slice(&[0, 0, 0, 0]);
        // On a thread with a small stack, as the supervisor's threads have.
        let decoded = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || Codec::Bincode.decode::<Tree>(&deep).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(decoded);
        let shallow = Codec::Bincode
            .encode(&Tree::Node(Box::new(Tree::Node(Box::new(Tree::Leaf)))))
            .unwrap();
        assert!(Codec::Bincode.decode::<Tree>(&shallow).is_ok());
    }

    #[test]
    fn wrong_type_and_trailing_bytes_are_errors() {
        // bincode is not self-describing, so only invalid bytes are caught: 7 is no bool.
        let bytes = Codec::Bincode.encode(&7u8).unwrap();
        assert!(Codec::Bincode.decode::<bool>(&bytes).is_err());
        assert!(Codec::Bincode.decode::<u64>(&[]).is_err());
        let mut bytes = Codec::Bincode.encode(&5u8).unwrap();
        bytes.push(0);
        assert!(Codec::Bincode.decode::<u8>(&bytes).is_err());
        assert!(Codec::Json.decode::<u64>(b"\"not a number\"").is_err());
    }
}
