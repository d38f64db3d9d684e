//! The same behaviour under every start method: `Spawn` (exec), `Fork` (fork of the
//! supervisor) and `ForkServer` (forks of a fork server). Each scenario is one
//! function, run once per method.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use procpool::{JobError, Pool, PoolBuilder, StartMethod};

procpool::test_harness!();

fn builder(method: StartMethod) -> PoolBuilder {
    Pool::builder().start_method(method)
}

fn results_and_errors(method: StartMethod) {
    let pool = builder(method).processes(2).build().unwrap();
    assert_eq!(pool.map(square, 0..500).unwrap()[499], 499 * 499);
    assert_eq!(pool.apply(add, (2, 3)), Ok(5));
    assert!(matches!(
        pool.apply(crash, Crash::Panic),
        Err(JobError::Panicked { .. })
    ));
    assert!(matches!(
        pool.apply(fail_on_threes, 3),
        Err(JobError::Failed { .. })
    ));
    close_and_check(pool);
}

fn crashes_fail_one_task_with_their_exitcode(method: StartMethod) {
    let pool = builder(method).processes(2).build().unwrap();
    let inputs = [
        Crash::Abort,
        Crash::None,
        Crash::Segfault,
        Crash::Exit(3),
        Crash::None,
    ];
    let results = pool.map_results_chunked(crash, inputs, 1).unwrap();
    let codes: Vec<Option<i32>> = results
        .iter()
        .map(|r| match r {
            Ok(7) => None,
            Err(JobError::WorkerLost { exitcode, .. }) => Some(*exitcode),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(codes, vec![Some(-6), None, Some(-11), Some(3), None]);
    assert!(eventually(|| pool.worker_pids().len() == 2));
    close_and_check(pool);
}

fn a_killed_worker_fails_only_its_task(method: StartMethod) {
    let pool = builder(method).processes(3).build().unwrap();
    let dir = scratch_dir(&format!("kill-{method:?}"));
    let arg = (dir.to_string_lossy().into_owned(), 1000u64);
    let results = std::thread::scope(|s| {
        let run = s.spawn(|| pool.map_results(mark_and_sleep, vec![arg.clone(); 6]));
        let victim = first_marker(&dir);
        signal(victim, Signal::SIGKILL);
        run.join().unwrap().unwrap()
    });
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(JobError::WorkerLost { exitcode: -9, .. })))
        .count();
    assert_eq!((lost, results.len() - lost), (1, 5));
    assert!(eventually(|| pool.worker_pids().len() == 3));
    close_and_check(pool);
}

fn limits_initializer_and_recycling(method: StartMethod) {
    let pool = builder(method)
        .processes(1)
        .initializer(count_init, 1)
        .max_tasks_per_child(2)
        .task_timeout(Duration::from_millis(300))
        .capture_stderr(3)
        .build()
        .unwrap();
    assert_eq!(pool.apply(sleep_ms, 600_000), Err(JobError::Timeout));
    let pids: Vec<u32> = (0..4)
        .map(|_| pool.apply(worker_pid, ()).unwrap())
        .collect();
    assert_eq!(
        (pids[0], pids[2]),
        (pids[1], pids[3]),
        "two tasks per worker: {pids:?}"
    );
    assert_ne!(pids[0], pids[2]);
    assert_eq!(
        pool.apply(init_runs, ()),
        Ok(1),
        "initializer ran once in this worker"
    );
    match pool.apply(shout_and_abort, "last words".into()) {
        Err(JobError::WorkerLost { cause, .. }) => {
            assert_eq!(
                cause.stderr_tail.last().map(String::as_str),
                Some("last words")
            )
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    close_and_check(pool);
}

fn terminate_ends_everything(method: StartMethod) {
    let pool = builder(method).processes(2).build().unwrap();
    let pids = pool.worker_pids();
    let pending: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 600_000).unwrap())
        .collect();
    pool.terminate();
    assert!(
        pending
            .into_iter()
            .all(|r| r.get() == Err(JobError::Terminated))
    );
    assert_gone(&pids);
}

const ROLE: &str = "PROCPOOL_TEST_SUPERVISOR_METHOD";

#[test]
#[ignore = "helper process: a supervisor whose pool uses the start method in its env"]
fn role_supervisor() {
    let method = match std::env::var(ROLE).as_deref() {
        Ok("Fork") => StartMethod::Fork,
        Ok("ForkServer") => StartMethod::ForkServer,
        _ => return,
    };
    let pool = builder(method).processes(3).build().unwrap();
    let _busy: Vec<_> = (0..3)
        .map(|_| pool.apply_async(sleep_ms, 600_000).unwrap())
        .collect();
    println!("PIDS {:?}", pool.worker_pids());
    std::thread::sleep(Duration::from_secs(600));
}

fn workers_die_with_their_supervisor(method: StartMethod) {
    let mut helper = Command::new(std::env::current_exe().unwrap());
    helper
        .args(["role_supervisor", "--exact", "--ignored", "--nocapture"])
        .env(ROLE, format!("{method:?}"));
    let (supervisor, pids) = start_reporting_supervisor(&mut helper);
    assert_eq!(pids.len(), 3);
    kill_supervisor_and_check(supervisor, &pids);
}

#[test]
fn forked_workers_die_with_their_supervisor() {
    workers_die_with_their_supervisor(StartMethod::Fork);
}

#[test]
fn fork_server_workers_die_with_their_supervisor() {
    workers_die_with_their_supervisor(StartMethod::ForkServer);
}

#[test]
fn fork_refuses_settings_that_need_an_exec() {
    let err = builder(StartMethod::Fork)
        .worker_executable("/bin/true")
        .build()
        .unwrap_err();
    assert!(matches!(err, procpool::Error::Config(_)), "{err}");
}

macro_rules! per_method {
    ($($scenario:ident),* $(,)?) => {
        mod spawn {
            $(#[test] fn $scenario() { super::$scenario(procpool::StartMethod::Spawn) })*
        }
        mod fork {
            $(#[test] fn $scenario() { super::$scenario(procpool::StartMethod::Fork) })*
        }
        mod fork_server {
            $(#[test] fn $scenario() { super::$scenario(procpool::StartMethod::ForkServer) })*
        }
    };
}

per_method!(
    results_and_errors,
    crashes_fail_one_task_with_their_exitcode,
    a_killed_worker_fails_only_its_task,
    limits_initializer_and_recycling,
    terminate_ends_everything,
);

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_pool_survives_the_death_of_its_fork_server() {
    let pool = builder(StartMethod::ForkServer)
        .processes(2)
        .build()
        .unwrap();
    let first_workers = pool.worker_pids();
    let server = parent_of(first_workers[0]);
    assert_ne!(
        server,
        std::process::id(),
        "workers are the fork server's children"
    );
    // Both workers must be running their task when the server dies (markers prove it);
    // a task still queued then would simply run on the new workers.
    let dir = scratch_dir("fork-server-death");
    let arg = (dir.to_string_lossy().into_owned(), 600_000u64);
    let running: Vec<_> = (0..2)
        .map(|_| pool.apply_async(mark_and_sleep, arg.clone()).unwrap())
        .collect();
    assert!(
        eventually(|| std::fs::read_dir(&dir).is_ok_and(|d| d.count() == 2)),
        "both tasks started"
    );
    let queued: Vec<_> = (0..4)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    signal(server, Signal::SIGKILL);
    // Its workers die with it: their tasks are lost, the queued ones run on workers of
    // a new fork server, and the pool closes and joins normally.
    for r in running {
        assert!(
            matches!(
                r.get_timeout(PATIENCE),
                Err(JobError::WorkerLost { exitcode: -9, .. })
            ),
            "a running task is lost with the fork server"
        );
    }
    for (i, r) in queued.into_iter().enumerate() {
        assert_eq!(r.get_timeout(PATIENCE), Ok((i * i) as u64));
    }
    let new_workers = pool.worker_pids();
    assert!(new_workers.iter().all(|p| !first_workers.contains(p)));
    assert_ne!(parent_of(new_workers[0]), server, "a new fork server");
    assert_gone(&first_workers);
    close_and_check(pool);
}
