//! A pool's life from start to end: start failures, close and join, terminate,
//! join with a timeout, drop, and the death of the supervisor itself. Every test
//! checks that the workers are really gone afterwards.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use procpool::{Error, JobError, Pool};

procpool::test_harness!();

/// Environment variable that turns an ignored `role_*` test into a helper process.
const ROLE: &str = "PROCPOOL_TEST_ROLE";

/// Starts this test binary running only the ignored test `role`.
fn role(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, name);
    cmd
}

fn in_role(name: &str) -> bool {
    std::env::var(ROLE).is_ok_and(|r| r == name)
}

#[test]
fn terminate_resolves_pending_tasks_and_ends_every_worker() {
    let pool = pool(2);
    let pids = pool.worker_pids();
    let pending: Vec<_> = (0..6)
        .map(|_| pool.apply_async(sleep_ms, 600_000).unwrap())
        .collect();
    pool.terminate();
    for r in pending {
        assert_eq!(r.get(), Err(JobError::Terminated));
    }
    assert_eq!(
        pool.apply_async(square, 1).err(),
        Some(JobError::PoolClosed)
    );
    assert!(pool.join_timeout(PATIENCE).unwrap());
    assert_gone(&pids);
}

#[test]
fn terminate_kills_a_worker_that_ignores_sigterm() {
    let pool = Pool::builder()
        .processes(1)
        .terminate_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let pids = pool.worker_pids();
    let r = pool.apply_async(ignore_sigterm_and_sleep, 600_000).unwrap();
    // Let the job install its SIGTERM handler before terminating.
    std::thread::sleep(Duration::from_millis(300));
    pool.terminate();
    assert_eq!(r.get(), Err(JobError::Terminated));
    assert_gone(&pids);
}

#[procpool::job]
fn ignore_sigterm_and_sleep(ms: u64) -> u64 {
    // SAFETY: SIG_IGN runs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn) };
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn join_timeout_returns_on_time_while_a_job_sleeps_forever() {
    let pool = pool(1);
    let pids = pool.worker_pids();
    let forever = pool.apply_async(sleep_ms, u64::MAX / 4).unwrap();
    pool.close();
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    assert!(
        !pool.join_timeout(wait).unwrap(),
        "the job is still running"
    );
    let took = started.elapsed();
    assert!(took >= wait, "returned early: {took:?}");
    assert!(
        took < wait + Duration::from_secs(5),
        "returned late: {took:?}"
    );
    pool.terminate();
    assert_eq!(forever.get(), Err(JobError::Terminated));
    assert_gone(&pids);
}

#[test]
fn dropping_a_pool_terminates_it() {
    let pool = pool(2);
    let pids = pool.worker_pids();
    let r = pool.apply_async(sleep_ms, 600_000).unwrap();
    drop(pool);
    assert_eq!(r.get(), Err(JobError::Terminated));
    assert_gone(&pids);
}

#[test]
fn close_then_join_waits_for_all_work() {
    let pool = pool(2);
    let pids = pool.worker_pids();
    let results: Vec<_> = (0..6)
        .map(|i| pool.apply_async(sleep_ms, 50 * i).unwrap())
        .collect();
    pool.close();
    pool.join().unwrap();
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.ready(), "join returned before task {i} finished");
        assert_eq!(r.get(), Ok(50 * i as u64));
    }
    assert_gone(&pids);
}

#[test]
fn a_missing_worker_executable_is_a_clear_start_error() {
    let err = Pool::builder()
        .processes(2)
        .worker_executable("/nonexistent/procpool-worker")
        .build()
        .unwrap_err();
    match err {
        Error::WorkerStart { message } => {
            assert!(
                message.contains("/nonexistent/procpool-worker"),
                "{message}"
            )
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
}

#[test]
fn a_worker_that_exits_or_hangs_before_its_handshake_is_a_start_error() {
    let err = Pool::builder()
        .processes(1)
        .worker_executable("/bin/true")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::WorkerStart { message } if message.contains("before its handshake")),
        "{err}"
    );
    let started = Instant::now();
    let err = Pool::builder()
        .processes(1)
        .worker_executable("/bin/sleep")
        .worker_args(["600"])
        .start_timeout(Duration::from_millis(300))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::WorkerStart { message } if message.contains("handshake within")),
        "{err}"
    );
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn a_failing_initializer_fails_tasks_instead_of_respawning_forever() {
    let pool = Pool::builder()
        .processes(1)
        .initializer(failing_init, ())
        .max_start_failures(3)
        .build()
        .unwrap();
    let r = pool.apply_async(square, 4);
    let outcome = match r {
        Ok(r) => r.get_timeout(PATIENCE),
        Err(e) => Err(e),
    };
    match outcome {
        Err(JobError::StartFailed { message }) => {
            assert!(message.contains("no database here"), "{message}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    // Later submissions fail at once with the same cause.
    assert!(matches!(
        pool.apply_async(square, 5),
        Err(JobError::StartFailed { .. })
    ));
    pool.terminate();
}

#[test]
fn the_init_path_runs_a_real_program_as_its_own_worker() {
    let example = workspace_binary("squares", true);
    let out = Command::new(example).output().expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "squares failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("map: 10000 squares, the last is 99980001"),
        "{stdout}"
    );
    assert!(stdout.contains("12^2 = 144"), "{stdout}");
}

#[test]
#[ignore = "helper process for workers_die_with_their_supervisor"]
fn role_supervisor() {
    if !in_role("role_supervisor") {
        return;
    }
    let pool = pool(4);
    let _busy: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 600_000).unwrap())
        .collect();
    println!("PIDS {:?}", pool.worker_pids());
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn workers_die_with_their_supervisor() {
    let (supervisor, pids) = start_reporting_supervisor(&mut role("role_supervisor"));
    assert_eq!(pids.len(), 4);
    kill_supervisor_and_check(supervisor, &pids);
}

#[test]
#[ignore = "helper process for a_worker_process_without_init_refuses_to_build_a_pool"]
fn role_forgot_init() {
    if !in_role("role_forgot_init") {
        return;
    }
    match Pool::builder().processes(1).build() {
        Err(e @ Error::NotInitialized) => println!("REFUSED {e}"),
        other => println!("BUILT {other:?}"),
    }
}

#[test]
fn a_worker_process_without_init_refuses_to_build_a_pool() {
    // As a worker whose main forgot init() would see it: the worker variable is set.
    let out = role("role_forgot_init")
        .env("PROCPOOL_WORKER_FD", "999")
        .output()
        .expect("helper runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REFUSED"), "{stdout}");
    assert!(stdout.contains("procpool::init()"), "{stdout}");
}

#[test]
fn close_finishes_the_queue_even_while_the_only_worker_is_being_replaced() {
    // The first worker's initializer fails: for a back-off moment the pool has no worker
    // at all, with tasks queued and close() already called. They must still run.
    let dir = scratch_dir("close-while-replacing");
    let pool = Pool::builder()
        .processes(1)
        .initializer(init_fails_once, dir.to_string_lossy().into_owned())
        .build()
        .unwrap();
    let results: Vec<_> = (0..3)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    pool.close();
    assert!(pool.join_timeout(PATIENCE).unwrap(), "the pool finishes");
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get(), Ok((i * i) as u64));
    }
}
