//! How job arguments and results become bytes.
//!
//! Library callers use [`Codec::Bincode`] (compact, typed on both ends); the CLI uses
//! [`Codec::Json`] because it reads JSON lines and does not know a job's Rust types.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::payload::{Encoded, SpillTo, SpillWriter};

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
        struct Spill(SpillWriter);
        impl bincode::enc::write::Writer for Spill {
            #[inline(always)]
            fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
                self.0
                    .write(bytes)
                    .map_err(|inner| bincode::error::EncodeError::Io { inner, index: 0 })
            }
        }
        let mut out = Spill(SpillWriter::new(to));
        bincode::serde::encode_into_writer(value, &mut out, bincode_config())
            .map_err(|e| e.to_string())?;
        out.0.finish().map_err(|e| e.to_string())
    }

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => {
                let (value, used) =
                    bincode::serde::decode_from_slice::<T, _>(bytes, bincode_config())
                        .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_both_codecs() {
        for codec in [Codec::Bincode, Codec::Json] {
            let v = (7u64, String::from("seven"), vec![1.5f64, -2.0]);
            let bytes = codec.encode(&v).unwrap();
            assert_eq!(codec.decode::<(u64, String, Vec<f64>)>(&bytes).unwrap(), v);
        }
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
