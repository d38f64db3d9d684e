//! Callers whose process is set up in ways that trip a pool: SIGCHLD ignored, threads
//! printing and panicking while workers are forked. Each scenario changes state of the
//! whole process, so it runs in a helper process of its own (this test binary run
//! again, with one `role_*` test selected).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use procpool::{JobError, Pool, Process, StartMethod, TaskOptions};

procpool::test_harness!();

const METHODS: [StartMethod; 3] = [
    StartMethod::Spawn,
    StartMethod::Fork,
    StartMethod::ForkServer,
];

/// Runs `role` in a helper process (with `env`), and fails the test if it fails or has
/// not finished within `PATIENCE` times `patience` (then it is killed). Its stdout is
/// shown on failure; its stderr is dropped (the roles are noisy on purpose).
fn run_role(role: &str, env: &[(&str, &str)], patience: u32) {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            role,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the helper starts");
    let stdout = helper.stdout.take().expect("its stdout");
    let said = Arc::new(Mutex::new(String::new()));
    let reader = {
        let said = said.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut said = said.lock().unwrap();
                said.push_str(&line);
                said.push('\n');
            }
        })
    };
    let deadline = Instant::now() + PATIENCE * patience;
    let status = loop {
        if let Some(status) = helper.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = helper.kill();
            let _ = helper.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let said = said.lock().unwrap().clone();
    let Some(status) = status else {
        panic!("role {role} did not finish in time (a hang); it said:\n{said}");
    };
    assert!(
        status.success() && said.contains("ROLE DONE"),
        "role {role} failed ({status}); it said:\n{said}"
    );
}

/// In a role: fails it with `message` on its stdout (its stderr is not seen).
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            println!("FAILED: {}", format!($($message)+));
            std::process::exit(1);
        }
    };
}

// ----- SIGCHLD ignored -----

#[test]
#[ignore = "helper process: a caller that sets SIGCHLD to SIG_IGN"]
fn role_sigchld_ignored() {
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .unwrap();
    for method in METHODS {
        println!("{method:?}");
        let pool = Pool::builder()
            .start_method(method)
            .processes(1)
            .build()
            .unwrap();
        let limit = TaskOptions::default().timeout(PATIENCE);
        let lost = pool.apply_async_with(crash, Crash::Exit(3), limit).unwrap();
        let lost = lost.get();
        ensure!(
            matches!(lost, Err(JobError::WorkerLost { .. })),
            "{method:?}: a worker that exited: {lost:?}"
        );
        let killed = pool
            .apply_async_with(
                sleep_ms,
                600_000,
                TaskOptions::default().timeout(Duration::from_millis(200)),
            )
            .unwrap();
        let killed = killed.get();
        ensure!(
            killed == Err(JobError::Timeout),
            "{method:?}: a task past its limit: {killed:?}"
        );
        let next = pool.apply_async_with(square, 4, limit).unwrap().get();
        ensure!(next == Ok(16), "{method:?}: the pool goes on: {next:?}");
        println!("{method:?}: closing");
        close_and_check(pool);
    }
    for method in [StartMethod::Spawn, StartMethod::Fork] {
        println!("Process {method:?}");
        let p = Process::builder()
            .start_method(method)
            .spawn(crash, Crash::Exit(3))
            .unwrap();
        ensure!(p.join_timeout(PATIENCE).is_some(), "{method:?}: it ends");
        let result = p.result();
        ensure!(
            matches!(result, Err(JobError::WorkerLost { .. })),
            "{method:?}: a process that exited: {result:?}"
        );
        p.kill();
        let p = Process::builder()
            .start_method(method)
            .spawn(sleep_ms, 600_000)
            .unwrap();
        p.kill();
        ensure!(p.join_timeout(PATIENCE).is_some(), "{method:?}: killed");
        let result = p.result();
        ensure!(
            result == Err(JobError::Terminated),
            "{method:?}: a killed process: {result:?}"
        );
    }
    println!("ROLE DONE");
}

#[test]
fn a_caller_that_ignores_sigchld_still_gets_every_outcome() {
    // With SIGCHLD ignored the kernel reaps children itself: a worker's exit shows as
    // ECHILD, its status is lost, and its pid may be reused at once. Every task still
    // resolves, nothing signals the pid of a worker that is gone, and a fork server
    // (which inherits the disposition) still reports its workers' exits.
    run_role("role_sigchld_ignored", &[], 3);
}

// ----- fork beside threads that print and panic -----

const ROUNDS: u64 = 10;

#[test]
#[ignore = "helper process: a Fork pool in a process whose threads print and panic"]
fn role_fork_beside_printing_threads() {
    let method = match std::env::var("PROCPOOL_TEST_METHOD").as_deref() {
        Ok("ForkServer") => StartMethod::ForkServer,
        _ => StartMethod::Fork,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Many pieces, each a write of its own under std's stderr lock.
                    eprintln!("thread {i} chatters: {i} {i} {i} {i} {i} {i} {i} {i} {i} {i}");
                    if i % 2 == 0 {
                        // The default hook prints it with a backtrace (RUST_BACKTRACE=1),
                        // under std's backtrace lock.
                        let _ = std::panic::catch_unwind(|| panic!("thread {i} panics"));
                    }
                }
            })
        })
        .collect();
    // Each task in a fresh worker: every one is forked while the threads print.
    let pool = Pool::builder()
        .start_method(method)
        .processes(2)
        .max_tasks_per_child(1)
        .task_timeout(PATIENCE)
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        println!("round {round}");
        let panics = pool.apply_async(crash, Crash::Panic).unwrap();
        let prints = pool.apply_async(chatty, round).unwrap();
        let panicked = panics.get();
        ensure!(
            matches!(panicked, Err(JobError::Panicked { .. })),
            "round {round}: the panicking job: {panicked:?}"
        );
        let printed = prints.get();
        ensure!(
            printed == Ok(round),
            "round {round}: the printing job: {printed:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    close_and_check(pool);
    println!("ROLE DONE");
}

#[test]
fn a_forked_worker_does_not_wait_on_locks_its_callers_threads_held() {
    // Issue 11, item 15: std's panic hook (backtrace lock) and `eprintln!` (stderr's
    // lock) in a worker forked while another thread of the caller held them.
    run_role(
        "role_fork_beside_printing_threads",
        &[("RUST_BACKTRACE", "1"), ("PROCPOOL_TEST_METHOD", "Fork")],
        3,
    );
}

#[test]
fn fork_server_workers_do_not_wait_on_locks_of_the_caller() {
    run_role(
        "role_fork_beside_printing_threads",
        &[
            ("RUST_BACKTRACE", "1"),
            ("PROCPOOL_TEST_METHOD", "ForkServer"),
        ],
        3,
    );
}
