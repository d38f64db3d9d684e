//! The `procpool` command as a person uses it: real input files, real output, exit
//! statuses, Ctrl-C and SIGKILL, with the workspace's `pool-worker` as the worker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn procpool() -> Command {
    ensure_worker_built();
    Command::new(env!("CARGO_BIN_EXE_procpool"))
}

/// `procpool` finds `pool-worker` beside itself; build it if this run has not.
fn ensure_worker_built() {
    let worker = Path::new(env!("CARGO_BIN_EXE_procpool")).with_file_name("pool-worker");
    if !worker.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "pool-worker",
                "--bin",
                "pool-worker",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building pool-worker failed");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procpool-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_with_input(args: &[&str], input: &str) -> Output {
    let mut child = procpool()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("procpool starts");
    // A usage error exits before reading its input; a broken pipe here is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn jobs_lists_every_builtin_job_with_its_types() {
    let out = procpool().arg("jobs").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for job in [
        "square",
        "cpu_bound",
        "sleep",
        "hash_file",
        "word_count",
        "write_file",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(job)),
            "{job} missing:\n{text}"
        );
    }
    assert!(text.contains("square      u64 -> u64"), "{text}");
}

#[test]
fn one_record_per_input_in_order_and_bad_lines_are_records_too() {
    let out = run_with_input(
        &["run", "square", "-w", "2"],
        "1\n2\nbad json\n\n4\n18446744073709551615\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(recs.len(), 6);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["index"], i, "in input order");
    }
    assert_eq!(recs[0]["ok"], 1);
    assert_eq!(recs[1]["ok"], 4);
    assert_eq!(recs[2]["error"]["kind"], "InvalidInput");
    assert!(
        recs[2]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3:")
    );
    assert_eq!(recs[3]["error"]["kind"], "InvalidInput");
    assert_eq!(recs[4]["ok"], 16);
    assert_eq!(recs[5]["error"]["kind"], "Failed");
    let summary = stderr(&out);
    assert!(
        summary.contains("3 succeeded, 3 failed (1 Failed, 2 InvalidInput)"),
        "{summary}"
    );
}

#[test]
fn all_succeeded_is_status_0_and_unordered_keeps_every_record() {
    let input: String = (0..300).map(|i| format!("{i}\n")).collect();
    let out = run_with_input(
        &["run", "square", "--unordered", "--chunksize", "7", "-q"],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "--quiet prints nothing when all succeed");
    let mut recs = records(&String::from_utf8_lossy(&out.stdout));
    recs.sort_by_key(|r| r["index"].as_u64());
    assert_eq!(recs.len(), 300);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["ok"], (i * i) as u64);
    }
}

#[test]
fn usage_and_setup_errors_are_status_2_with_a_message() {
    let cases: [(&[&str], &str); 5] = [
        (&["run", "no_such_job"], "no job `no_such_job`"),
        (&["run", "square", "--chunksize", "0"], "--chunksize"),
        (
            &["run", "square", "--input", "/nonexistent/in.jsonl"],
            "cannot open input",
        ),
        (
            &["run", "square", "--timeout=0"],
            "--timeout must be a positive",
        ),
        (
            &["run", "square", "--worker", "/nonexistent/worker"],
            "does not exist",
        ),
    ];
    for (args, expected) in cases {
        let out = run_with_input(args, "1\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = procpool().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

#[test]
fn a_time_limit_fails_only_the_slow_input() {
    let out = run_with_input(
        &["run", "sleep", "--timeout", "0.5", "-w", "2"],
        "10\n60000\n20\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(recs[0]["ok"], 10);
    assert_eq!(recs[1]["error"]["kind"], "Timeout");
    assert_eq!(recs[2]["ok"], 20);
}

#[test]
fn the_seed_jobs_write_count_and_hash_a_book() {
    let dir = scratch("book");
    let book = dir.join("book.txt");
    let book = book.to_string_lossy();
    let write = format!(
        "{{\"path\": \"{book}\", \"lines\": 1000, \"text\": \"the whale and the sea, the WHALE\"}}\n"
    );
    let out = run_with_input(&["run", "write_file"], &write);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&*book).unwrap().len(), 33_000);

    let count = format!(
        "{{\"path\": \"{book}\"}}\n{{\"path\": \"{book}\", \"stop_words\": [\"whale\"]}}\n"
    );
    let out = run_with_input(&["run", "word_count"], &count);
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(recs[0]["ok"]["word"], "whale");
    assert_eq!(recs[0]["ok"]["count"], 2000);
    assert_eq!(recs[1]["ok"]["word"], "the");

    let input = dir.join("hash.jsonl");
    std::fs::write(
        &input,
        format!("{{\"path\": \"{book}\", \"iterations\": 1000}}\n{{\"path\": \"{book}\", \"iterations\": 1000, \"salt\": \"pepper\"}}\n{{\"path\": \"/nonexistent\"}}\n"),
    )
    .unwrap();
    let output = dir.join("hash.out");
    let out = procpool()
        .args(["run", "hash_file", "-q", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&std::fs::read_to_string(&output).unwrap());
    let (a, b) = (
        recs[0]["ok"].as_str().unwrap(),
        recs[1]["ok"].as_str().unwrap(),
    );
    assert_eq!((a.len(), b.len()), (128, 128));
    assert_ne!(a, b, "the salt matters");
    assert_eq!(recs[2]["error"]["kind"], "Failed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    })
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `procpool run sleep` with 4 quick inputs then 20 that sleep a minute,
/// writing to a file; returns once the 4 quick records are written.
fn start_long_run(dir: &Path) -> (Child, PathBuf, Vec<u32>) {
    let input = dir.join("in.jsonl");
    let mut lines = String::from("0\n0\n0\n0\n");
    lines.push_str(&"60000\n".repeat(20));
    std::fs::write(&input, lines).unwrap();
    let output = dir.join("out.jsonl");
    let child = procpool()
        .args(["run", "sleep", "-w", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the quick records", || {
        std::fs::read_to_string(&output).is_ok_and(|t| t.lines().count() == 4)
    });
    let workers = children_of(child.id());
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    (child, output, workers)
}

#[test]
fn ctrl_c_writes_what_finished_ends_every_worker_and_exits_130() {
    let dir = scratch("ctrl-c");
    let (mut child, output, workers) = start_long_run(&dir);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "procpool did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let recs = records(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(recs.len(), 4, "exactly the finished results");
    assert!(recs.iter().all(|r| r["ok"] == 0));
    assert!(
        workers.iter().all(|&w| !is_running(w)),
        "workers survived Ctrl-C"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_of_procpool_leaves_no_worker_behind() {
    let dir = scratch("sigkill");
    let (mut child, _, workers) = start_long_run(&dir);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the workers to die with procpool", || {
        workers.iter().all(|&w| !is_running(w))
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verbose_logs_what_the_pool_does_and_the_default_does_not() {
    let out = run_with_input(&["-vv", "run", "square", "-w", "1"], "3\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("worker started"),
        "-vv logs worker starts:\n{log}"
    );
    let out = run_with_input(&["run", "square", "-w", "1"], "3\n");
    assert!(
        !stderr(&out).contains("worker started"),
        "no logs by default"
    );
}
