//! A worker that breaks the protocol (garbage bytes, a truncated message, a reply to
//! a task it never got, a huge length prefix) fails its task with `Protocol` and is
//! replaced; bad input (an argument of the wrong type, a result that does not encode,
//! a payload over the limit) is a named error. Nothing else is affected, and the
//! supervisor neither panics nor allocates what a hostile length asks for.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use pool_worker::protocol::{self, Hello, Outcome, Reply};
use procpool::{Codec, JobError, Pool};

procpool::test_harness!();

const MODE: &str = "PROCPOOL_HOSTILE_MODE";

/// Plays a worker that says a correct hello, then answers its first task with the
/// misbehaviour named in `PROCPOOL_HOSTILE_MODE`.
#[test]
#[ignore = "helper process: a hostile worker"]
fn role_hostile_worker() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
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
    // The first task (a pool that sends tasks ahead says where its slots are first).
    let task = loop {
        let body = protocol::read_frame(&mut stream, usize::MAX)
            .unwrap()
            .expect("a request");
        if let Some(task) = protocol::decode::<protocol::Request>(&body)
            .expect("a request")
            .task()
        {
            break task;
        }
    };
    match mode.as_str() {
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
    std::thread::sleep(Duration::from_secs(600));
}

fn hostile_pool(mode: &str) -> Pool {
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
        .build()
        .unwrap()
}

#[test]
fn a_worker_that_breaks_the_protocol_fails_its_task_and_is_replaced() {
    for (mode, expected) in [
        ("garbage", "malformed message"),
        ("truncated", "stream ended inside a message"),
        ("stranger", "reply to task 987654321"),
        ("huge", "larger than the limit"),
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
