//! Process helpers shared by the integration tests: building pools, checking that
//! workers are gone and reaped, finding the workspace's binaries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procpool::Pool;

/// A small xorshift: random tests that repeat.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// SIGKILLs one of `pool`'s workers, picked at random, every `every`, until `done`;
/// returns how many it killed. Run it on a thread of its own.
pub fn kill_workers_until(
    pool: &Pool,
    every: Duration,
    done: &std::sync::atomic::AtomicBool,
    seed: u64,
) -> usize {
    let mut rng = Rng(seed | 1);
    let mut kills = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(every);
        let pids = pool.worker_pids();
        if pids.is_empty() {
            continue;
        }
        let victim = pids[rng.below(pids.len() as u64) as usize];
        let pid = nix::unistd::Pid::from_raw(victim as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
            kills += 1;
        }
    }
    kills
}

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .build()
        .expect("a pool of test workers starts")
}

/// The `procpool` command, a separate worker executable with the built-in jobs
/// (`square`, `cpu_bound`, `sleep`, ...): it serves them when a pool starts it.
pub fn builtin_worker() -> PathBuf {
    workspace_binary("procpool", false)
}

/// A pool whose workers are the `procpool` command (see [`builtin_worker`]).
pub fn builtin_worker_pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .worker_executable(builtin_worker())
        .build()
        .expect("a pool of procpool executables starts")
}

/// Whether `pid` names a running process (not gone, not a zombie).
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is a zombie child of this process (exited, never reaped).
pub fn is_our_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    state == Some("Z") && ppid == Some(std::process::id())
}

/// Waits up to `PATIENCE` for `cond`; true if it came true.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Asserts that each of `pids` ends and is reaped (a worker that just exited is a
/// zombie until the supervisor's next reap, so this waits a little).
pub fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        eventually(|| !is_running(pid) && !is_our_zombie(pid));
        assert!(!is_running(pid), "worker {pid} is still running");
        assert!(!is_our_zombie(pid), "worker {pid} was left a zombie");
    }
}

/// Closes the pool, waits for it, and checks that every worker it had is gone.
pub fn close_and_check(pool: Pool) {
    let pids = pool.worker_pids();
    pool.close();
    assert_eq!(pool.join_timeout(PATIENCE).ok(), Some(true), "pool joins");
    assert_gone(&pids);
}

/// Path of a binary of the `procpool` command's package (or of an example of the
/// `procpool` package when `example` is true), building it first if this test run has
/// not.
pub fn workspace_binary(name: &str, example: bool) -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let path = if example {
        profile_dir.join("examples").join(name)
    } else {
        profile_dir.join(name)
    };
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build").arg("--quiet");
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        if example {
            cmd.args(["--example", name]);
        } else {
            cmd.args(["-p", "pool-cli", "--bin", name]);
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// A fresh, empty directory under the target directory for one test's marker files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .expect("deps dir")
        .join("procpool-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Waits for the first marker file in `dir` and returns the pid it names.
pub fn first_marker(dir: &Path) -> u32 {
    let mut found = None;
    assert!(
        eventually(|| {
            found = std::fs::read_dir(dir)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|e| e.ok())
                .and_then(|e| e.file_name().to_str().and_then(|n| n.parse().ok()));
            found.is_some()
        }),
        "no task started"
    );
    found.unwrap_or_default()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
}

/// Starts `cmd`, a helper process that builds a pool and prints `PIDS [..]` with its
/// workers' pids; returns it and those pids (kills it if it does not report in time).
pub fn start_reporting_supervisor(cmd: &mut Command) -> (Child, Vec<u32>) {
    let mut supervisor = cmd.stdout(Stdio::piped()).spawn().expect("helper starts");
    let stdout = supervisor.stdout.take().expect("stdout");
    // Read on a thread so a helper that never reports cannot hang the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("PIDS ").map(|(_, p)| p.to_owned()));
        let _ = tx.send(line);
    });
    let Some(line) = rx.recv_timeout(PATIENCE).ok().flatten() else {
        let _ = supervisor.kill();
        let _ = supervisor.wait();
        panic!("the supervisor did not report its workers");
    };
    let pids = line
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|p| p.parse().expect("pid"))
        .collect();
    (supervisor, pids)
}

/// SIGKILLs `supervisor` and asserts that all of `workers` are gone within 3 s.
pub fn kill_supervisor_and_check(mut supervisor: Child, workers: &[u32]) {
    assert!(
        workers.iter().all(|&p| is_running(p)),
        "workers run before the kill"
    );
    signal(supervisor.id(), nix::sys::signal::Signal::SIGKILL);
    supervisor.wait().expect("reap the supervisor");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && workers.iter().any(|&p| is_running(p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive: Vec<u32> = workers.iter().copied().filter(|&p| is_running(p)).collect();
    assert!(
        alive.is_empty(),
        "workers outlived their supervisor: {alive:?}"
    );
}
