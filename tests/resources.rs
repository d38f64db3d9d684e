//! 1,000 worker restarts leave the supervisor's open file descriptors and threads
//! where they started, and no zombies. (Alone in its binary: other tests' pools would
//! change these counts.)

mod common;

use common::*;
use procpool::Pool;

procpool::test_harness!();

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Children of this process that exited and were never reaped.
fn zombie_children() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_our_zombie(pid))
        .collect()
}

#[test]
fn a_thousand_restarts_leak_no_descriptor_thread_or_zombie() {
    let worker = builtin_worker();
    let (fds, tasks) = (open_fds(), threads());
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .worker_executable(worker)
        .build()
        .unwrap();
    let first = pool.worker_pids();

    let squares = pool.map_chunked(square, 0..1_000, 1).unwrap();
    assert_eq!(squares[999], 999 * 999);
    assert!(eventually(|| pool.worker_pids().len() == 2));
    assert!(
        first.iter().all(|p| !pool.worker_pids().contains(p)),
        "workers were recycled"
    );
    // Once idle: the pool's own descriptors (poll, waker, and per worker its stream,
    // its pidfd and its journal). (A spawn in progress briefly holds a few more: its
    // socket pair, exec-error pipe and /dev/null.)
    assert!(
        eventually(|| open_fds() <= fds + 2 + 2 * 3),
        "{} descriptors open, {fds} before",
        open_fds()
    );
    // The pool's own three: the supervisor, the results thread, the callbacks thread.
    assert_eq!(threads(), tasks + 3, "threads");
    assert!(
        eventually(|| zombie_children().is_empty()),
        "zombies: {:?}",
        zombie_children()
    );

    close_and_check(pool);
    assert_eq!(open_fds(), fds, "descriptors after the pool is gone");
    // The supervisor thread has said it finished; it may take a moment to exit.
    assert!(
        eventually(|| threads() == tasks),
        "threads after the pool is gone: {} (before: {tasks})",
        threads()
    );
    assert!(zombie_children().is_empty());
}
