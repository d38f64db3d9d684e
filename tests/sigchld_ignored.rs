//! A program that ignores SIGCHLD (common in servers) has its children reaped by the
//! kernel: a lost worker's task still resolves, and the pool still closes. (Alone in
//! its binary: the setting is process-wide.)

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use procpool::{JobError, Pool};

procpool::test_harness!();

#[test]
fn a_lost_worker_s_task_resolves_when_the_caller_ignores_sigchld() {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        signal::signal(Signal::SIGCHLD, signal::SigHandler::SigIgn).unwrap();
    }
    let pool = Pool::builder().processes(1).build().unwrap();
    assert_eq!(
        pool.apply_async(square, 3).unwrap().get_timeout(PATIENCE),
        Ok(9)
    );
    let dir = scratch_dir("sigchld-ignored");
    let r = pool
        .apply_async(mark_and_sleep, (dir.to_string_lossy().into_owned(), 30_000))
        .unwrap();
    assert!(eventually(|| std::fs::read_dir(&dir).unwrap().count() > 0));
    let pid = pool.worker_pids()[0];
    signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let got = r.get_timeout(PATIENCE);
    assert!(matches!(got, Err(JobError::WorkerLost { .. })), "{got:?}");
    assert_eq!(
        pool.apply_async(square, 4).unwrap().get_timeout(PATIENCE),
        Ok(16)
    );
    pool.close();
    assert!(pool.join_timeout(Duration::from_secs(20)).unwrap());
}
