//! A worker that breaks the protocol (garbage bytes, a truncated message, a reply to
//! a task it never got, a huge length prefix) fails its task with `Protocol` and is
//! replaced; bad input (an argument of the wrong type, a result that does not encode,
//! a payload over the limit) is a named error. Nothing else is affected, and the
//! supervisor neither panics nor allocates what a hostile length asks for.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use pool_worker::payload::FrameReader;
use pool_worker::protocol::{self, Hello, Outcome, Reply, Request};
use procpool::{Codec, JobError, Pool, job};

procpool::test_harness!();

const MODE: &str = "PROCPOOL_HOSTILE_MODE";
/// A file that the first worker of a pool creates: it misbehaves, and the workers
/// that replace it, finding the file there, are honest.
const ONCE: &str = "PROCPOOL_HOSTILE_ONCE";
/// A length no input has room for.
const HUGE: u64 = 1 << 45;

#[job]
fn word_lists(n: u64) -> HashMap<String, Vec<u64>> {
    HashMap::from([(format!("{n}"), vec![n; 3])])
}

#[job]
fn nested_words(n: u64) -> Vec<Vec<String>> {
    vec![vec![format!("{n}")]]
}

#[job]
fn bytes_of(n: u64) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![7; n as usize])
}

/// Little-endian u64s (`Codec::Bincode`'s integers), then `tail`.
fn words(words: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend_from_slice(tail);
    bytes
}

/// The 20-byte reply that aborted the supervisor: task `task` done, its one outcome
/// `Failed` (or `Ok`, variant 0) with a string (bytes) that claims 2^45 bytes.
fn reply_claiming_huge(task: u64, variant: u64) -> Vec<u8> {
    // bincode's variable-width integers, as the protocol writes them.
    let varint = |n: u64| match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251], &(n as u16).to_le_bytes()[..]].concat(),
        0x1_0000..=0xffff_ffff => [&[252], &(n as u32).to_le_bytes()[..]].concat(),
        _ => [&[253], &n.to_le_bytes()[..]].concat(),
    };
    let mut body: Vec<u8> = [2, task, 1, variant, HUGE]
        .into_iter()
        .flat_map(varint)
        .collect();
    body.resize(20, b'x');
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// The encoded outcomes of a batch of one, with a hostile length inside, for `mode`.
fn hostile_batch(mode: &str) -> Vec<u8> {
    match mode {
        // `HashMap<String, Vec<u64>>`: a key, the map, a vector in it.
        "batch_map_key" => words(&[1, 1, HUGE], b"key"),
        "batch_map_len" => words(&[1, 1 << 60], b"k"),
        "batch_map_vector" => {
            let mut bytes = words(&[1, 1, 1], b"k");
            bytes.extend(words(&[1 << 60, 5], &[]));
            bytes
        }
        // `Vec<Vec<String>>`: the innermost string.
        "batch_nested" => words(&[1, 1, 1, HUGE], b"deep"),
        // `ByteBuf`.
        "batch_bytes" => words(&[1, HUGE], &[7; 12]),
        // `u64`: no value, one failure whose message claims 2^45 bytes.
        "batch_failure" => {
            let mut bytes = words(&[0, 1], &[0, 0, 0, 0, 0]);
            bytes.extend(words(&[HUGE], b"why"));
            bytes
        }
        // `u64`: the values' vector itself.
        "batch_values" => words(&[1 << 60, 9], &[]),
        other => panic!("unknown batch mode {other}"),
    }
}

/// Plays a worker that says a correct hello, then answers its first task with the
/// misbehaviour named in `PROCPOOL_HOSTILE_MODE`.
#[test]
#[ignore = "helper process: a hostile worker"]
fn role_hostile_worker() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    if let Ok(marker) = std::env::var(ONCE) {
        let first = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok();
        if !first {
            // Serves honestly, then exits.
            procpool::init();
            return;
        }
    }
    let fd: i32 = std::env::var(protocol::ENV_WORKER_FD)
        .expect("started by a pool")
        .parse()
        .expect("a descriptor number");
    // SAFETY: the pool passed this descriptor to this process for exactly this use.
    let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
    let jobs = pool_worker::Registry::global()
        .entries()
        .iter()
        .map(|e| e.info())
        .collect();
    let hello = Hello {
        pid: std::process::id(),
        jobs,
    };
    protocol::write_frame(&mut stream, &protocol::hello_frame(&hello).unwrap()).unwrap();
    // The first task (a pool that sends tasks ahead says where its slots are first),
    // with the descriptors that came with it.
    let mut reader = FrameReader::new(stream.try_clone().expect("a second handle"));
    let (task, fds) = loop {
        let body = reader.read_frame(usize::MAX).unwrap().expect("a request");
        let request = protocol::decode::<Request>(&body).expect("a request");
        let fds: Vec<_> = (0..request.descriptors())
            .map(|_| reader.take_fd().expect("its descriptors"))
            .collect();
        if let Some(task) = request.task() {
            break (task, fds);
        }
    };
    match mode.as_str() {
        "huge_string" => stream.write_all(&reply_claiming_huge(task, 1)),
        "huge_bytes" => stream.write_all(&reply_claiming_huge(task, 0)),
        batch if batch.starts_with("batch_") => {
            let reply = Reply::DoneBatch {
                task,
                outcomes: hostile_batch(batch).into(),
            };
            stream.write_all(&protocol::frame(&reply).expect("encodes"))
        }
        // Shrinks the task's shared memory under the supervisor, then answers as if
        // its outcomes were in the scratch: garbage written first, in case the
        // shrinking is refused.
        "truncate_scratch" | "truncate_arguments" => {
            let [arguments, scratch] = <[_; 2]>::try_from(fds).expect("two descriptors");
            let scratch = std::fs::File::from(scratch);
            scratch
                .write_all_at(&[0xff; 64], 0)
                .expect("a writable scratch");
            if mode == "truncate_scratch" {
                let _ = scratch.set_len(0);
            } else {
                // Read-only as sent; read-write when opened again through /proc.
                let path = format!("/proc/self/fd/{}", arguments.as_raw_fd());
                let reopened = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .expect("reopened read-write");
                let _ = reopened.set_len(0);
            }
            let reply = Reply::DoneBatchInScratch { task, len: 64 };
            stream.write_all(&protocol::frame(&reply).expect("encodes"))
        }
        "garbage" => stream.write_all(&[6, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa]),
        "truncated" => {
            stream.write_all(&[100, 0, 0, 0, 1, 2, 3]).unwrap();
            std::process::exit(0);
        }
        "stranger" => {
            let reply = Reply::Done {
                task: 987_654_321,
                outcomes: vec![Outcome::Ok(vec![9].into())],
            };
            stream.write_all(&protocol::frame(&reply).unwrap())
        }
        "huge" => stream.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
        "shared_without_fd" | "shared_unsealed" => {
            let frame = protocol::frame(&Reply::DoneBatchShared { task, len: 8 }).expect("encodes");
            if mode == "shared_without_fd" {
                stream.write_all(&frame)
            } else {
                // A memfd that is not sealed: its bytes could change while mapped.
                let memfd = nix::sys::memfd::memfd_create(
                    "procpool-hostile",
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                )
                .expect("a memfd");
                let file = std::fs::File::from(memfd);
                file.set_len(8).expect("size");
                pool_worker::payload::send_with_fds(&stream, &frame, &[file.as_raw_fd()])
            }
        }
        // Outcomes "in the scratch" of a task that has none, or past its end.
        "scratch_unasked" | "scratch_overlong" => {
            let len = if mode == "scratch_unasked" {
                8
            } else {
                512 << 20
            };
            let reply = Reply::DoneBatchInScratch { task, len };
            stream.write_all(&protocol::frame(&reply).expect("encodes"))
        }
        other => panic!("unknown mode {other}"),
    }
    .unwrap();
    // Until the supervisor lets go (or kills this process).
    while let Ok(Some(_)) = reader.read_frame(usize::MAX) {}
    std::thread::sleep(Duration::from_secs(600));
}

fn hostile_pool(mode: &str) -> Pool {
    hostile_builder(mode).build().unwrap()
}

/// A pool of one worker that misbehaves on its first task and is then retired
/// (`max_tasks_per_child(1)`); the workers after it are honest. Its marker file is
/// removed when the value is dropped.
struct HostileOnce {
    pool: Pool,
    marker: std::path::PathBuf,
}

impl Drop for HostileOnce {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.marker);
    }
}

fn hostile_once(mode: &str) -> HostileOnce {
    static POOLS: AtomicU32 = AtomicU32::new(0);
    let marker = std::env::temp_dir().join(format!(
        "procpool-hostile-{}-{}",
        std::process::id(),
        POOLS.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&marker);
    let pool = hostile_builder(mode)
        .worker_env(ONCE, &marker)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    HostileOnce { pool, marker }
}

fn hostile_builder(mode: &str) -> procpool::PoolBuilder {
    let exe = std::env::current_exe().unwrap();
    Pool::builder()
        .processes(1)
        .worker_executable(exe)
        .worker_args([
            "role_hostile_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .worker_env(MODE, mode)
}

#[test]
fn a_worker_that_breaks_the_protocol_fails_its_task_and_is_replaced() {
    for (mode, expected) in [
        ("garbage", "malformed message"),
        ("truncated", "stream ended inside a message"),
        ("stranger", "reply to task 987654321"),
        ("huge", "larger than the limit"),
        ("huge_string", "malformed message"),
        ("huge_bytes", "malformed message"),
        ("shared_without_fd", "no descriptor came with the reply"),
        ("shared_unsealed", "not sealed against writes"),
        ("scratch_unasked", "no scratch for the task it answers"),
        ("scratch_overlong", "announced in a region of"),
    ] {
        let pool = hostile_pool(mode);
        let hostile = pool.worker_pids();
        // A large argument travels in shared memory, with a scratch for the outcomes.
        let result = if mode == "scratch_overlong" {
            pool.apply_async(byte_len, vec![1u8; 1 << 20])
                .unwrap()
                .get_timeout(PATIENCE)
                .map(|len| len as u64)
        } else {
            pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE)
        };
        match result {
            Err(JobError::Protocol { message }) => {
                assert!(message.contains(expected), "{mode}: {message}")
            }
            other => panic!("{mode}: expected a Protocol error, got {other:?}"),
        }
        assert!(
            eventually(|| hostile.iter().all(|&p| !is_running(p))),
            "{mode}"
        );
        assert!(
            eventually(|| pool.worker_pids().len() == 1 && pool.worker_pids() != hostile),
            "{mode}: the worker is replaced"
        );
        let replacement = pool.worker_pids();
        pool.terminate();
        assert_gone(&hostile);
        assert_gone(&replacement);
    }
}

#[test]
fn hostile_lengths_inside_a_batch_of_results_fail_it_with_codec_and_the_pool_goes_on() {
    for mode in [
        "batch_map_key",
        "batch_map_len",
        "batch_map_vector",
        "batch_nested",
        "batch_bytes",
        "batch_failure",
        "batch_values",
    ] {
        let hostile = hostile_once(mode);
        let pool = &hostile.pool;
        let first = pool.worker_pids();
        let result = match mode {
            "batch_nested" => pool.apply(nested_words, 1).map(drop),
            "batch_bytes" => pool.apply(bytes_of, 1).map(drop),
            "batch_failure" | "batch_values" => pool.apply(square, 3).map(drop),
            _ => pool.apply(word_lists, 1).map(drop),
        };
        match result {
            Err(JobError::Codec { message }) => {
                assert!(message.contains("do not decode"), "{mode}: {message}")
            }
            other => panic!("{mode}: expected a Codec error, got {other:?}"),
        }
        assert_eq!(pool.apply(square, 3), Ok(9), "{mode}: the pool goes on");
        assert_eq!(
            pool.apply(word_lists, 2),
            Ok(HashMap::from([("2".into(), vec![2; 3])]))
        );
        let last = pool.worker_pids();
        pool.terminate();
        assert_gone(&first);
        assert_gone(&last);
    }
}

#[test]
fn a_worker_that_shrinks_its_shared_memory_fails_its_task_and_the_pool_goes_on() {
    // Past the shared-memory threshold: the arguments go in a region, with a scratch.
    let large = vec![1u8; 1 << 20];
    for mode in ["truncate_scratch", "truncate_arguments"] {
        let hostile = hostile_once(mode);
        let pool = &hostile.pool;
        let first = pool.worker_pids();
        // The garbage the worker wrote in the scratch (it could not shrink it).
        match pool.apply(byte_len, large.clone()) {
            Err(JobError::Codec { message }) => {
                assert!(message.contains("do not decode"), "{mode}: {message}")
            }
            other => panic!("{mode}: expected a Codec error, got {other:?}"),
        }
        // Later tasks take their regions from the spare list, where the hostile
        // task's went back: several rounds, so each of them is used again.
        for round in 0..8 {
            assert_eq!(
                pool.apply(byte_len, large.clone()),
                Ok(large.len()),
                "{mode}: round {round}"
            );
            assert_eq!(pool.apply(bytes_of, 300_000).map(|b| b.len()), Ok(300_000));
        }
        let last = pool.worker_pids();
        pool.terminate();
        assert_gone(&first);
        assert_gone(&last);
    }
}

#[test]
fn a_map_whose_later_input_does_not_encode_fails_as_a_whole_and_the_pool_goes_on() {
    let pool = pool(2);
    let inputs = (0..50)
        .map(Encodes::Fine)
        .chain([Encodes::Refuses])
        .collect::<Vec<_>>();
    // The first tasks are already on their way when the last input fails to encode.
    assert!(matches!(
        pool.map_chunked(fine_value, inputs, 1),
        Err(JobError::Codec { message }) if message.contains("refuses")
    ));
    let fine = pool
        .map_chunked(fine_value, (0..50).map(Encodes::Fine), 1)
        .expect("the pool goes on");
    assert_eq!(fine, (0..50).collect::<Vec<u64>>());
    close_and_check(pool);
}

#[test]
fn bad_input_is_a_named_error_and_affects_nothing_else() {
    let pool = Pool::builder()
        .processes(2)
        .max_message_size(64 * 1024)
        .build()
        .unwrap();
    // An argument that is not the job's type (possible only without the typed API).
    let results: Vec<_> = pool
        .imap_encoded(
            "square",
            Codec::Json,
            [b"\"text\"".to_vec(), b"7".to_vec()],
            true,
        )
        .collect();
    assert!(
        matches!(&results[0], Err(JobError::Codec { message }) if message.contains("u64")),
        "{results:?}"
    );
    assert_eq!(results[1], Ok(b"49".to_vec()));
    // A result that does not encode.
    assert!(matches!(
        pool.apply(unencodable, ()),
        Err(JobError::Codec { message }) if message.contains("refuses")
    ));
    // A payload over the limit is refused at submit; a smaller one runs.
    assert!(matches!(
        pool.apply_async(byte_len, vec![0u8; 100 * 1024]),
        Err(JobError::Codec { message }) if message.contains("max_message_size")
    ));
    assert_eq!(pool.apply(byte_len, vec![1u8; 1024]), Ok(1024));
    // A result over the limit (in shared memory) fails its task; the pool goes on.
    assert!(matches!(
        pool.apply(pattern_bytes, 1 << 20),
        Err(JobError::Protocol { message }) if message.contains("larger than the limit")
    ));
    assert_eq!(pool.apply(byte_len, vec![1u8; 1024]), Ok(1024));
    close_and_check(pool);
}
