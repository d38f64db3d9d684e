//! The wire protocol between a supervisor and one worker.
//!
//! One persistent stream per worker carries frames: a little-endian `u32` length, then
//! that many bytes. The worker's first frame is its hello: [`MAGIC`], the protocol
//! version as a little-endian `u32`, then a bincode [`Hello`]; the version is read
//! before anything else so a mismatch is reported as one, not as garbage. Every later
//! frame is a bincode [`Request`] (to the worker) or [`Reply`] (from it).
//!
//! A worker answers requests strictly in the order it received them, which is what
//! lets the supervisor know, without extra messages, which task a worker is running.
//!
//! Messages use postcard-like, non-self-describing encoding: no `#[serde(flatten)]`
//! or `skip_serializing_if` in anything here.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::bounded::{self, Ints};
use crate::codec::Codec;

/// Bumped whenever a message here changes shape, or what comes with one does (7: the
/// memfds sent with `UseSlots` and `RunBatchShared` are sealed against shrinking, and
/// a worker refuses them otherwise; 8: a `JobInfo` carries the job's description, Rust
/// path and JSON shapes).
pub const PROTOCOL_VERSION: u32 = 9;
/// The first bytes of every hello frame.
pub const MAGIC: [u8; 4] = *b"PPW\x01";
/// Environment variable with the worker's end of its stream (a file descriptor number).
pub const ENV_WORKER_FD: &str = "PROCPOOL_WORKER_FD";
/// Environment variable with the supervisor's pid, checked by the worker at start.
pub const ENV_SUPERVISOR_PID: &str = "PROCPOOL_SUPERVISOR_PID";
/// Environment variable with a fork server's end of its control socket.
pub const ENV_ZYGOTE_FD: &str = "PROCPOOL_ZYGOTE_FD";
/// Environment variable that asks a worker to announce the JSON shapes of its jobs
/// ([`JobInfo::input`], [`JobInfo::output`]); `procpool jobs` sets it. Tracing the
/// types costs tens of microseconds per job, so a worker started for work skips it.
pub const ENV_DESCRIBE_JOBS: &str = "PROCPOOL_DESCRIBE_JOBS";

/// Supervisor to fork server, one SEQPACKET datagram each.
#[derive(Debug, Serialize, Deserialize)]
pub enum ZygoteRequest {
    /// Fork a worker. Attached descriptors: its stream end, then (with `stderr`) the
    /// write end of its stderr pipe.
    Fork {
        stderr: bool,
        quiet_stdout: bool,
        address_space: Option<u64>,
    },
    /// Send `signal` to child `pid`, if it has not been reaped yet.
    Signal { pid: u32, signal: i32 },
}

/// Fork server to supervisor, one SEQPACKET datagram each.
#[derive(Debug, Serialize, Deserialize)]
pub enum ZygoteReply {
    Forked {
        pid: u32,
    },
    ForkFailed {
        message: String,
    },
    /// A child ended and was reaped.
    Exited {
        pid: u32,
        exitcode: i32,
        peak_rss: u64,
    },
}

/// The largest frame either side accepts unless configured otherwise (1 GiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// A job as a worker announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Registered name.
    pub name: String,
    /// `std::any::type_name` of the argument type.
    pub input_type: String,
    /// `std::any::type_name` of the result type.
    pub output_type: String,
    /// The JSON a person types for the argument, the argument names beside the values
    /// they name (`int (ms)`, `{"path": string, "iterations"?: int}`); the Rust type
    /// name when the type cannot be traced. Empty unless the worker was started with
    /// [`ENV_DESCRIBE_JOBS`] set.
    pub input: String,
    /// The JSON of the result, in the same notation (and as rarely filled in).
    pub output: String,
    /// The first paragraph of the job's doc comment, on one line; empty without one.
    pub description: String,
    /// The Rust path of the job's function (`my_app::jobs::square`); empty if unknown.
    pub path: String,
}

/// The worker's handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's process id.
    pub pid: u32,
    /// Its jobs, in wire order.
    pub jobs: Vec<JobInfo>,
}

/// Supervisor to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Run the pool's initializer before any task.
    Init {
        job: u32,
        codec: Codec,
        argument: ByteBuf,
    },
    /// Run `job` on each argument, in order; answered by one [`Reply::Done`]. Each
    /// argument is encoded on its own (the CLI's JSON lines).
    Run {
        task: u64,
        job: u32,
        codec: Codec,
        arguments: Vec<ByteBuf>,
    },
    /// Run `job` on each of `count` arguments encoded together as one `Vec` of the
    /// job's argument type (typed callers: one encode and one decode per chunk, not per
    /// argument), from place `from` on (those before ran already, on a worker that
    /// died); answered by [`Reply::DoneBatch`] with the outcomes of the `count - from`
    /// arguments run, or by [`Reply::Done`] with one error for each of them if the
    /// batch does not decode.
    RunBatch {
        task: u64,
        job: u32,
        count: u32,
        from: u32,
        batch: ByteBuf,
    },
    /// [`Request::RunBatch`] with the batch in shared memory, for large arguments.
    /// Two descriptors come with the frame (`SCM_RIGHTS`): a read-only region whose
    /// first `len` bytes are the batch, then the task's scratch, a region the worker
    /// may write its outcomes into (see `payload`). Answered like `RunBatch`, or by
    /// [`Reply::DoneBatchInScratch`].
    RunBatchShared {
        task: u64,
        job: u32,
        count: u32,
        from: u32,
        len: u64,
    },
    /// Use the start-or-revoke slots (see `slots`) before starting each task, and log
    /// each argument's outcome in the journal (see `journal`); their memfds come with
    /// the frame, slots first. Sent once, before any task.
    UseSlots,
    /// Exit now with status `code`, sending nothing: how a `Process` ends its worker
    /// with an exit status that tells whether the job succeeded.
    Exit { code: i32 },
}

impl Request {
    /// The task a request runs, if it runs one.
    pub fn task(&self) -> Option<u64> {
        match self {
            Request::Run { task, .. }
            | Request::RunBatch { task, .. }
            | Request::RunBatchShared { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// How many descriptors come with the request's frame (`SCM_RIGHTS`).
    pub fn descriptors(&self) -> usize {
        match self {
            Request::RunBatchShared { .. } | Request::UseSlots => 2,
            _ => 0,
        }
    }
}

/// Worker to supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The initializer returned `Ok`.
    InitDone,
    /// The initializer failed; the worker exits after sending this.
    InitFailed { message: String },
    /// One outcome per argument of task `task`, in order.
    Done { task: u64, outcomes: Vec<Outcome> },
    /// The outcomes of a [`Request::RunBatch`], encoded together as one bincode
    /// [`BatchOutcomes<Output>`].
    DoneBatch { task: u64, outcomes: ByteBuf },
    /// [`Reply::DoneBatch`] with the `len` bytes of outcomes in a sealed memfd, attached
    /// to this frame (`SCM_RIGHTS`); for large results to a request without a scratch.
    DoneBatchShared { task: u64, len: u64 },
    /// [`Reply::DoneBatch`] with the outcomes in the first `len` bytes of the scratch
    /// that came with the [`Request::RunBatchShared`]; the worker writes it no more.
    DoneBatchInScratch { task: u64, len: u64 },
}

/// The outcomes of a batch (the body of a [`Reply::DoneBatch`]), with the job's
/// result type: the values of the arguments that succeeded, in argument order, then
/// the arguments that have none, by place. With no failure, the common case, there is
/// nothing per item but the value. A worker writes it value by value as the batch runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcomes<T> {
    pub values: Vec<T>,
    /// In argument order.
    pub failures: Vec<ItemFailure>,
}

/// An argument of a batch that has no value: its place in the batch, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub index: u32,
    /// The job panicked (rather than returned `Err`) with this message.
    pub panicked: bool,
    pub message: String,
}

/// What became of one argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The encoded result.
    Ok(ByteBuf),
    /// The job returned `Err` with this text.
    Failed(String),
    /// The job panicked with this message.
    Panicked(String),
    /// The argument did not decode or the result did not encode.
    Codec(String),
    /// The worker could not make sense of the request (unknown job index).
    Protocol(String),
}

/// Why a frame could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("hello does not start with the procpool magic bytes")]
    BadMagic,
    #[error("worker speaks protocol version {theirs}, this supervisor speaks {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Encodes `message` as one complete frame (length prefix included).
pub fn frame<M: Serialize>(message: &M) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; 4];
    bincode::serde::encode_into_std_write(message, &mut buf, bincode::config::standard())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    seal(buf)
}

/// The hello frame for `hello`.
pub fn hello_frame(hello: &Hello) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; 4];
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bincode::serde::encode_into_std_write(hello, &mut buf, bincode::config::standard())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    seal(buf)
}

/// Writes the body length into the first four bytes of `buf`.
fn seal(mut buf: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
    let len = buf.len() - 4;
    let len32 = u32::try_from(len).map_err(|_| ProtocolError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    buf[..4].copy_from_slice(&len32.to_le_bytes());
    Ok(buf)
}

/// Decodes a frame body (without its length prefix) as message `M`. No length inside
/// the body is trusted past the body's own size (see `bounded`).
pub fn decode<M: serde::de::DeserializeOwned>(body: &[u8]) -> Result<M, ProtocolError> {
    let (message, used) = bounded::decode(body, Ints::Varint).map_err(ProtocolError::Decode)?;
    if used != body.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(message)
}

/// Decodes a hello frame body, checking magic and version first.
pub fn decode_hello(body: &[u8]) -> Result<Hello, ProtocolError> {
    if body.len() < 8 || body[..4] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    let theirs = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    if theirs != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    decode(&body[8..])
}

/// Reads one frame body from a blocking stream; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame_len(&head, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// The body length a frame starting at `bytes` announces (its first 4 bytes, which
/// the caller has), refused past `max` before any of it is read.
pub fn frame_len(bytes: &[u8], max: usize) -> Result<usize, ProtocolError> {
    let head = bytes
        .first_chunk::<4>()
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let len = u32::from_le_bytes(*head) as usize;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    Ok(len)
}

/// Writes a complete frame to a blocking stream.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_checks_version() {
        let hello = Hello {
            pid: 42,
            jobs: vec![JobInfo {
                name: "square".into(),
                input_type: "u64".into(),
                output_type: "u64".into(),
                input: "int (x)".into(),
                output: "int".into(),
                description: "x * x".into(),
                path: "app::square".into(),
            }],
        };
        let f = hello_frame(&hello).unwrap();
        let body = read_frame(&mut &f[..], DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(decode_hello(&body).unwrap(), hello);

        let mut wrong = body.clone();
        wrong[4..8].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            decode_hello(&wrong),
            Err(ProtocolError::Version { theirs: 99, .. })
        ));
        assert!(matches!(
            decode_hello(b"garbage!!"),
            Err(ProtocolError::BadMagic)
        ));
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut f = frame(&Reply::InitDone).unwrap();
        f[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &f[..], 1024),
            Err(ProtocolError::TooLarge { .. })
        ));
        let f = frame(&Reply::Done {
            task: 1,
            outcomes: vec![Outcome::Failed("x".into())],
        })
        .unwrap();
        assert!(read_frame(&mut &f[..f.len() - 1], 1024).is_err());
    }

    #[test]
    fn hostile_length_inside_a_message_does_not_allocate_it() {
        // A Done whose outcome vector claims 2^60 entries in a 20-byte body.
        let mut body = Vec::new();
        let cfg = bincode::config::standard();
        bincode::serde::encode_into_std_write(2u32, &mut body, cfg).unwrap(); // Done
        bincode::serde::encode_into_std_write(7u64, &mut body, cfg).unwrap(); // task
        bincode::serde::encode_into_std_write(1u64 << 60, &mut body, cfg).unwrap(); // len
        assert!(decode::<Reply>(&body).is_err());
    }

    /// The 20-byte reply that aborted the supervisor: a `Failed` outcome whose string
    /// claims 2^45 bytes (bincode allocated them before reading any).
    fn reply_with_a_huge_string() -> Vec<u8> {
        let cfg = bincode::config::standard();
        let mut body = Vec::new();
        for part in [2u64, 7, 1, 1, 1 << 45] {
            // Done, task 7, one outcome, Failed, the string's length.
            bincode::serde::encode_into_std_write(part, &mut body, cfg).unwrap();
        }
        body.resize(20, b'x');
        body
    }

    #[test]
    fn hostile_lengths_inside_strings_and_byte_buffers_are_errors() {
        let body = reply_with_a_huge_string();
        assert_eq!(body.len(), 20);
        assert!(matches!(
            decode::<Reply>(&body),
            Err(ProtocolError::Decode(_))
        ));
        // The same length on an `Ok` outcome's bytes, and on a batch's bytes.
        let mut ok = body.clone();
        ok[3] = 0;
        assert!(decode::<Reply>(&ok).is_err());
        let mut batch = Vec::new();
        for part in [3u64, 7, 1 << 45] {
            bincode::serde::encode_into_std_write(part, &mut batch, bincode::config::standard())
                .unwrap();
        }
        assert!(decode::<Reply>(&batch).is_err());
        // And in a hello: a job name.
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        for part in [1u64, 1, 1 << 45] {
            // pid, one job, its name's length
            bincode::serde::encode_into_std_write(part, &mut hello, bincode::config::standard())
                .unwrap();
        }
        assert!(decode_hello(&hello).is_err());
    }
}
