//! Every decoder of bytes another process wrote, fed random bytes and mutations of
//! valid encodings (flipped bytes, huge lengths spliced in, cuts, insertions): frames,
//! protocol messages (replies, requests, the hello), the fork server's datagrams, a
//! batch's results for several result types (in both codecs, and in a task's shared
//! scratch), the messages and
//! headers of the shared-memory queue and pipe, an array's length, and the
//! start-or-revoke slots. None may panic, and none may allocate more than 64 MiB (this
//! binary's allocator refuses it, which aborts the test with the size in the message):
//! lengths in the bytes are bounded by the bytes. A cut valid encoding must be an
//! error.
//!
//! Deterministic (a seeded xorshift); `PROCPOOL_FUZZ_ITERS` sets the rounds per
//! decoder (default 300, a few seconds here) and `PROCPOOL_FUZZ_SEED` the seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use pool_worker::payload::{FrameReader, Region};
use pool_worker::protocol::{
    self, BatchOutcomes, Hello, ItemFailure, JobInfo, Outcome, Reply, Request, ZygoteReply,
    ZygoteRequest,
};
use pool_worker::slots::Slots;
use procpool::{Array, Codec, Pipe, Queue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The largest allocation a decode may make in this binary.
const MAX_ALLOCATION: usize = 64 << 20;

thread_local! {
    /// Set while this thread decodes fuzzed bytes.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator, refusing (while armed) any allocation past
/// [`MAX_ALLOCATION`]: what a decoder trusting a hostile length would ask for.
struct Bounded;

fn refused(size: usize) -> bool {
    size > MAX_ALLOCATION && ARMED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, or
// returns null, which `GlobalAlloc` allows for a failed allocation.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as `GlobalAlloc::alloc`, whose contract the caller keeps.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refused(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: as `GlobalAlloc::realloc`: `ptr` came from this allocator, which
        // hands out `System`'s blocks.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// xorshift64*: small, seeded, good enough to pick bytes and places.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Rng {
        let seed = std::env::var("PROCPOOL_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_f00d_u64);
        Rng((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Fewer than `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }

    /// 1 to `max` random bytes.
    fn nonempty_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.below(max);
        self.bytes(len)
    }

    fn string(&mut self) -> String {
        let len = self.below(12);
        (0..len)
            .map(|_| char::from_u32(0x20 + self.below(0x3000) as u32).unwrap_or('?'))
            .collect()
    }
}

fn iterations() -> usize {
    std::env::var("PROCPOOL_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// Lengths a hostile writer might announce.
const HUGE: [u64; 6] = [1 << 45, 1 << 60, u64::MAX, (1 << 32) + 1, 1 << 31, 65_537];

/// A mutation of the valid encoding `valid`, and whether it must fail to decode (a cut
/// valid encoding: decoding reads the same bytes until they run out).
fn mutate(rng: &mut Rng, valid: &[u8]) -> (Vec<u8>, bool) {
    let mut bytes = valid.to_vec();
    let at = rng.below(bytes.len() + 1);
    match rng.below(7) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                if let Some(b) = bytes.get_mut(rng.below(valid.len())) {
                    *b ^= 1 + rng.below(255) as u8;
                }
            }
        }
        1 if !valid.is_empty() => {
            bytes.truncate(rng.below(valid.len()));
            return (bytes, true);
        }
        2 | 3 => {
            // A huge length, in either integer encoding, over or before what is there.
            let huge = HUGE[rng.below(HUGE.len())];
            let spliced: Vec<u8> = match rng.below(3) {
                0 => [&[253u8][..], &huge.to_le_bytes()].concat(),
                1 => [&[252u8][..], &(huge as u32).to_le_bytes()].concat(),
                _ => huge.to_le_bytes().to_vec(),
            };
            if rng.chance(2) {
                let end = (at + spliced.len()).min(bytes.len());
                bytes.splice(at..end, spliced);
            } else {
                bytes.splice(at..at, spliced);
            }
        }
        4 => {
            let extra = rng.nonempty_bytes(16);
            bytes.splice(at..at, extra);
        }
        5 => {
            let from = rng.below(valid.len());
            let chunk = valid[from..(from + 1 + rng.below(16)).min(valid.len())].to_vec();
            bytes.splice(at..at, chunk);
        }
        _ => {
            let end = (at + 1 + rng.below(9)).min(bytes.len());
            bytes[at..end].fill(0xff);
        }
    }
    (bytes, false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `decode` on `bytes` armed, with panics caught; whether it decoded.
fn survives(name: &str, bytes: &[u8], decode: &dyn Fn(&[u8]) -> bool) -> bool {
    ARMED.with(|a| a.set(true));
    let decoded = catch_unwind(AssertUnwindSafe(|| decode(bytes)));
    ARMED.with(|a| a.set(false));
    match decoded {
        Ok(decoded) => decoded,
        Err(_) => panic!("{name} panicked on {}", hex(bytes)),
    }
}

/// Feeds `decode` each of `valid` (which must decode), mutations of them, and random
/// bytes.
fn fuzz(name: &str, salt: u64, valid: &[Vec<u8>], decode: &dyn Fn(&[u8]) -> bool) {
    let mut rng = Rng::seeded(salt);
    for sample in valid {
        assert!(survives(name, sample, decode), "{name}: {}", hex(sample));
    }
    for _ in 0..iterations() {
        let sample = &valid[rng.below(valid.len())];
        let (bytes, must_fail) = mutate(&mut rng, sample);
        if survives(name, &bytes, decode) && must_fail {
            panic!("{name} decoded a cut encoding: {}", hex(&bytes));
        }
        let random = rng.some_bytes(64);
        survives(name, &random, decode);
    }
}

/// A frame's body.
fn body(frame: Vec<u8>) -> Vec<u8> {
    frame[4..].to_vec()
}

#[test]
fn protocol_messages_from_a_peer_never_panic_or_allocate_what_they_claim() {
    let mut rng = Rng::seeded(1);
    let replies: Vec<Vec<u8>> = (0..8)
        .flat_map(|_| {
            let task = rng.next() >> rng.below(64);
            [
                Reply::InitDone,
                Reply::InitFailed {
                    message: rng.string(),
                },
                Reply::Done {
                    task,
                    outcomes: vec![
                        Outcome::Ok(ByteBuf::from(rng.some_bytes(40))),
                        Outcome::Failed(rng.string()),
                        Outcome::Panicked(rng.string()),
                        Outcome::Codec(rng.string()),
                        Outcome::Protocol(rng.string()),
                    ],
                },
                Reply::DoneBatch {
                    task,
                    outcomes: ByteBuf::from(rng.some_bytes(40)),
                },
                Reply::DoneBatchShared {
                    task,
                    len: rng.next(),
                },
                Reply::DoneBatchInScratch {
                    task,
                    len: rng.next(),
                },
            ]
        })
        .map(|reply| body(protocol::frame(&reply).unwrap()))
        .collect();
    fuzz("Reply", 2, &replies, &|b| {
        protocol::decode::<Reply>(b).is_ok()
    });

    let requests: Vec<Vec<u8>> = (0..8)
        .flat_map(|_| {
            let task = rng.next() >> rng.below(64);
            [
                Request::Init {
                    job: rng.below(9) as u32,
                    codec: Codec::Json,
                    argument: ByteBuf::from(rng.some_bytes(30)),
                },
                Request::Run {
                    task,
                    job: 1,
                    codec: Codec::Bincode,
                    arguments: vec![ByteBuf::from(rng.bytes(5)), ByteBuf::from(vec![])],
                },
                Request::RunBatch {
                    task,
                    job: 2,
                    count: rng.below(100) as u32,
                    from: rng.below(4) as u32,
                    batch: ByteBuf::from(rng.some_bytes(30)),
                },
                Request::RunBatchShared {
                    task,
                    job: 3,
                    count: 4,
                    from: 1,
                    len: rng.next(),
                },
                Request::UseSlots,
                Request::Exit { code: -1 },
            ]
        })
        .map(|request| body(protocol::frame(&request).unwrap()))
        .collect();
    fuzz("Request", 3, &requests, &|b| {
        protocol::decode::<Request>(b).is_ok()
    });

    let hellos: Vec<Vec<u8>> = (0..8)
        .map(|n| Hello {
            pid: rng.next() as u32,
            jobs: (0..n)
                .map(|_| JobInfo {
                    name: rng.string(),
                    input_type: rng.string(),
                    output_type: rng.string(),
                    input: rng.string(),
                    output: rng.string(),
                    description: rng.string(),
                    path: rng.string(),
                })
                .collect(),
        })
        .map(|hello| body(protocol::hello_frame(&hello).unwrap()))
        .collect();
    fuzz("Hello", 4, &hellos, &|b| protocol::decode_hello(b).is_ok());
}

#[test]
fn fork_server_datagrams_never_panic_or_allocate_what_they_claim() {
    let mut rng = Rng::seeded(5);
    let requests: Vec<Vec<u8>> = (0..6)
        .flat_map(|_| {
            [
                ZygoteRequest::Fork {
                    stderr: rng.chance(2),
                    quiet_stdout: rng.chance(2),
                    address_space: rng.chance(2).then(|| rng.next()),
                },
                ZygoteRequest::Signal {
                    pid: rng.next() as u32,
                    signal: 9,
                },
            ]
        })
        .map(|r| Codec::Bincode.encode(&r).unwrap())
        .collect();
    fuzz("ZygoteRequest", 6, &requests, &|b| {
        Codec::Bincode.decode::<ZygoteRequest>(b).is_ok()
    });
    let replies: Vec<Vec<u8>> = (0..6)
        .flat_map(|_| {
            [
                ZygoteReply::Forked {
                    pid: rng.next() as u32,
                },
                ZygoteReply::ForkFailed {
                    message: rng.string(),
                },
                ZygoteReply::Exited {
                    pid: 7,
                    exitcode: -9,
                    peak_rss: rng.next(),
                },
            ]
        })
        .map(|r| Codec::Bincode.encode(&r).unwrap())
        .collect();
    fuzz("ZygoteReply", 7, &replies, &|b| {
        Codec::Bincode.decode::<ZygoteReply>(b).is_ok()
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Dot,
    Label(String),
    Pair(u8, Vec<u16>),
    Named {
        name: String,
        tags: BTreeMap<u32, Option<String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Nested {
    shape: Shape,
    grid: Vec<Vec<String>>,
    raw: ByteBuf,
    counts: HashMap<String, Vec<u64>>,
    maybe: Option<Box<Nested>>,
}

/// A type as deep as its bytes say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf(u8),
    Node(Box<Tree>, Box<Tree>),
}

fn nested(rng: &mut Rng, depth: usize) -> Nested {
    let shape = match rng.below(4) {
        0 => Shape::Dot,
        1 => Shape::Label(rng.string()),
        2 => Shape::Pair(rng.next() as u8, vec![rng.next() as u16; rng.below(4)]),
        _ => Shape::Named {
            name: rng.string(),
            tags: (0..rng.below(3))
                .map(|_| (rng.next() as u32, rng.chance(2).then(|| rng.string())))
                .collect(),
        },
    };
    Nested {
        shape,
        grid: (0..rng.below(3))
            .map(|_| (0..rng.below(3)).map(|_| rng.string()).collect())
            .collect(),
        raw: ByteBuf::from(rng.some_bytes(20)),
        counts: (0..rng.below(3))
            .map(|_| (rng.string(), vec![rng.next(); rng.below(4)]))
            .collect(),
        maybe: (depth > 0 && rng.chance(2)).then(|| Box::new(nested(rng, depth - 1))),
    }
}

fn tree(rng: &mut Rng, depth: usize) -> Tree {
    if depth == 0 || rng.chance(3) {
        Tree::Leaf(rng.next() as u8)
    } else {
        Tree::Node(
            Box::new(tree(rng, depth - 1)),
            Box::new(tree(rng, depth - 1)),
        )
    }
}

/// Batches of the values `make` makes, in both codecs (a batch arrives in bincode;
/// the CLI's single results in JSON), fuzzed through `Codec::decode`.
fn fuzz_batches<T>(name: &str, salt: u64, make: impl Fn(&mut Rng) -> T)
where
    T: Serialize + DeserializeOwned + Debug,
{
    let mut rng = Rng::seeded(salt);
    let batches: Vec<BatchOutcomes<T>> = (0..6)
        .map(|_| BatchOutcomes {
            values: (0..rng.below(4)).map(|_| make(&mut rng)).collect(),
            failures: (0..rng.below(3))
                .map(|i| ItemFailure {
                    index: i as u32,
                    panicked: rng.chance(2),
                    message: rng.string(),
                })
                .collect(),
        })
        .collect();
    for codec in [Codec::Bincode, Codec::Json] {
        let valid: Vec<Vec<u8>> = batches.iter().map(|b| codec.encode(b).unwrap()).collect();
        let name = format!("BatchOutcomes<{name}> in {codec:?}");
        fuzz(&name, salt + 1, &valid, &|b| {
            codec.decode::<BatchOutcomes<T>>(b).is_ok()
        });
    }
    // The same in a task's scratch, as a worker leaves large outcomes.
    let scratch = RefCell::new(Region::new(4096).unwrap());
    let writer = std::fs::File::from(scratch.borrow().fd().unwrap());
    let valid: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| Codec::Bincode.encode(b).unwrap())
        .collect();
    let scratch_name = format!("BatchOutcomes<{name}> in a scratch");
    fuzz(&scratch_name, salt + 3, &valid, &|b| {
        writer.write_all_at(b, 0).unwrap();
        let mut scratch = scratch.borrow_mut();
        scratch.map_to(b.len()).unwrap();
        scratch.decode::<BatchOutcomes<T>>(b.len()).is_ok()
    });
    // A lone value, as a `Process` result or a queue's item.
    let valid: Vec<Vec<u8>> = (0..6)
        .map(|_| Codec::Bincode.encode(&make(&mut rng)).unwrap())
        .collect();
    fuzz(name, salt + 2, &valid, &|b| {
        Codec::Bincode.decode::<T>(b).is_ok()
    });
}

#[test]
fn batches_of_results_never_panic_or_allocate_what_they_claim() {
    fuzz_batches("u64", 10, |rng| rng.next());
    fuzz_batches("String", 20, Rng::string);
    fuzz_batches("Vec<u8>", 30, |rng| rng.some_bytes(30));
    fuzz_batches("ByteBuf", 40, |rng| ByteBuf::from(rng.some_bytes(30)));
    fuzz_batches("HashMap<String, Vec<u64>>", 50, |rng| {
        (0..rng.below(4))
            .map(|_| (rng.string(), vec![rng.next(); rng.below(5)]))
            .collect::<HashMap<_, _>>()
    });
    fuzz_batches("Nested", 60, |rng| nested(rng, 3));
    fuzz_batches("Tree", 70, |rng| tree(rng, 6));
    fuzz_batches("Vec<()>", 80, |rng| vec![(); rng.below(50)]);
    fuzz_batches("Vec<Vec<Option<char>>>", 90, |rng| {
        (0..rng.below(3))
            .map(|_| {
                (0..rng.below(3))
                    .map(|_| char::from_u32(rng.next() as u32 % 0x11_0000))
                    .collect()
            })
            .collect::<Vec<Vec<_>>>()
    });
}

#[test]
fn frames_from_a_stream_never_panic_or_allocate_past_the_limit() {
    let mut rng = Rng::seeded(100);
    for _ in 0..iterations() / 10 {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let mut stream = Vec::new();
        for _ in 0..rng.below(6) {
            let body = rng.some_bytes(100);
            let len = if rng.chance(4) {
                HUGE[rng.below(HUGE.len())] as u32
            } else {
                body.len() as u32
            };
            stream.extend_from_slice(&len.to_le_bytes());
            stream.extend_from_slice(&body);
        }
        if rng.chance(2) {
            let cut = rng.below(stream.len() + 1);
            stream.truncate(cut);
        }
        writer.write_all(&stream).unwrap();
        drop(writer);
        let mut frames = FrameReader::new(reader);
        ARMED.with(|a| a.set(true));
        let read = catch_unwind(AssertUnwindSafe(|| {
            // Until the end, or the first bad frame.
            while let Ok(Some(body)) = frames.read_frame(1 << 20) {
                let _ = protocol::decode::<Reply>(&body);
            }
        }));
        ARMED.with(|a| a.set(false));
        assert!(read.is_ok(), "frames panicked on {}", hex(&stream));
    }
}

/// The memfd behind a queue, pipe or array handle, opened read-write as any process
/// can: `(pid, fd, len)` start the handle's encoding (after a pipe's end).
fn region_of<H: Serialize>(handle: &H) -> (std::fs::File, usize) {
    let wire = Codec::Bincode.encode(handle).unwrap();
    // A pipe's end comes first.
    let wire = if wire.len() == 24 {
        &wire[4..]
    } else {
        &wire[..]
    };
    let fd = i32::from_le_bytes(wire[4..8].try_into().unwrap());
    let len = u64::from_le_bytes(wire[8..16].try_into().unwrap());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .unwrap();
    (file, len as usize)
}

/// Where a region keeps its lock word: left alone here, because a lock word naming a
/// live process blocks its waiters by design (a dead one is taken over).
const LOCK_WORD: std::ops::Range<usize> = 4..8;

/// Scribbles 1 to 8 random bytes (or a huge number) over the region, mostly its
/// header, never its lock word.
fn scribble(rng: &mut Rng, file: &std::fs::File, len: usize) {
    let at = if rng.chance(2) {
        rng.below(128)
    } else {
        rng.below(len)
    };
    let mut bytes = if rng.chance(3) {
        HUGE[rng.below(HUGE.len())].to_le_bytes().to_vec()
    } else {
        rng.nonempty_bytes(8)
    };
    bytes.truncate(len.saturating_sub(at));
    for (i, b) in bytes.iter().enumerate() {
        if !LOCK_WORD.contains(&(at + i)) {
            file.write_all_at(&[*b], (at + i) as u64).unwrap();
        }
    }
}

#[test]
fn shared_queues_and_pipes_with_scribbled_memory_never_panic_or_hang() {
    let mut rng = Rng::seeded(200);
    let short = Duration::from_millis(1);
    for round in 0..iterations() / 10 {
        let queue: Queue<Nested> = Queue::<Nested>::builder()
            .buffer_bytes(4096)
            .build::<Nested>()
            .unwrap();
        let (file, len) = region_of(&queue);
        let pristine = {
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, 0).unwrap();
            bytes
        };
        let wire = Codec::Bincode.encode(&queue).unwrap();
        for _ in 0..10 {
            let _ = queue.try_put(&nested(&mut rng, 2));
            scribble(&mut rng, &file, len);
            ARMED.with(|a| a.set(true));
            let survived = catch_unwind(AssertUnwindSafe(|| {
                let _ = queue.try_get();
                let _ = queue.get_timeout(short);
                let _ = queue.put_timeout(&nested(&mut rng, 1), short);
                let _ = queue.len();
                // Another handle opened from the scribbled region.
                let _ = Codec::Bincode.decode::<Queue<Nested>>(&wire);
            }));
            ARMED.with(|a| a.set(false));
            assert!(survived.is_ok(), "a queue panicked in round {round}");
        }
        // As it was, so its handles leave it cleanly.
        file.write_all_at(&pristine, 0).unwrap();
    }

    for round in 0..iterations() / 10 {
        let (a, b): (Pipe<String>, Pipe<String>) = Pipe::with_buffer(4096).unwrap();
        let (file, len) = region_of(&a);
        let pristine = {
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, 0).unwrap();
            bytes
        };
        for _ in 0..10 {
            let _ = a.send(&rng.string());
            scribble(&mut rng, &file, len);
            ARMED.with(|f| f.set(true));
            let survived = catch_unwind(AssertUnwindSafe(|| {
                let _ = b.try_recv();
                let _ = b.recv_timeout(short);
                let _ = a.poll();
                let _ = b.poll();
            }));
            ARMED.with(|f| f.set(false));
            assert!(survived.is_ok(), "a pipe panicked in round {round}");
            // Room for the next send (which does not time out).
            file.write_all_at(&pristine, 0).unwrap();
        }
    }
}

#[test]
fn an_array_whose_shared_length_was_scribbled_is_refused() {
    let array: Array<u64> = Array::new(4).unwrap();
    let (file, _) = region_of(&array);
    let wire = Codec::Bincode.encode(&array).unwrap();
    for huge in HUGE {
        // The length field, after the 16-byte header.
        file.write_all_at(&huge.to_le_bytes(), 16).unwrap();
        ARMED.with(|a| a.set(true));
        let opened = Codec::Bincode.decode::<Array<u64>>(&wire);
        ARMED.with(|a| a.set(false));
        assert!(opened.is_err(), "{huge}");
    }
    file.write_all_at(&4u64.to_le_bytes(), 16).unwrap();
    assert_eq!(Codec::Bincode.decode::<Array<u64>>(&wire).unwrap().len(), 4);
}

#[test]
fn slots_a_worker_scribbled_over_only_ever_refuse() {
    // The page: 2 * SLOTS words.
    const PAGE: usize = 2 * pool_worker::slots::SLOTS * 8;
    let mut rng = Rng::seeded(300);
    let (slots, fd) = Slots::create().unwrap();
    let file = std::fs::File::from(fd);
    for seq in 0..iterations() as u64 {
        let task = rng.next() >> 2;
        slots.queue(seq, task);
        // The worker writes whatever it likes over the page.
        let garbage = rng.nonempty_bytes(8);
        let at = rng.below(PAGE - garbage.len());
        file.write_all_at(&garbage, at as u64).unwrap();
        // The supervisor's CAS either takes the task back or finds it gone.
        let _ = slots.revoke(seq, task);
    }
    // Nobody can shrink the page.
    assert!(file.set_len(0).is_err());
}
