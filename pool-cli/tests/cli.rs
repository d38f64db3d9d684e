//! The `procpool` command as a person uses it: real input files, pipes and FIFOs, real
//! output, exit statuses, Ctrl-C and SIGKILL, with the command as its own worker (the
//! built-in jobs) or the workspace's example worker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn procpool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_procpool"))
}

/// The workspace's example worker (examples/worker-crate), built if this run has not.
fn example_worker() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_procpool")).with_file_name("example-worker");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "example-worker"]);
        if path.parent().is_some_and(|p| p.ends_with("release")) {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building example-worker failed"
        );
    }
    path
}

/// Waits for `child` and collects its output, killing it if it takes longer than
/// `PATIENCE` (a hang is a failure, not a stuck test run).
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!(
                "{what}: still running after {PATIENCE:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procpool-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_with_input(args: &[&str], input: &str) -> Output {
    run_command_with_input(procpool().args(args), input)
}

fn run_command_with_input(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("procpool starts");
    // A usage error exits before reading its input; a broken pipe here is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    finish(child, "procpool")
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
fn jobs_lists_every_builtin_job_with_its_json_and_description() {
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
    // The JSON a person types, the argument's name (and so its unit), what it does.
    assert!(text.contains("square      int (x) -> int\n"), "{text}");
    assert!(text.contains("sleep       int (ms) -> int\n"), "{text}");
    assert!(text.contains("Sleeps ms milliseconds"), "{text}");
    assert!(
        text.contains(
            "hash_file   {\"path\": string, \"salt\"?: string, \"iterations\"?: int} -> string\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("-> {\"word\": string, \"count\": int}"),
        "{text}"
    );
    assert!(
        !text.contains("alloc::") && !text.contains("::builtin::"),
        "{text}"
    );
}

#[test]
fn installed_alone_the_command_serves_its_own_jobs() {
    // What `cargo install --path pool-cli` leaves: the one binary, in a directory of
    // its own, found on PATH.
    let dir = scratch("installed");
    let bin = dir.join("procpool");
    std::fs::copy(env!("CARGO_BIN_EXE_procpool"), &bin).unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.display());
    let out = Command::new("procpool")
        .env("PATH", &path)
        .arg("jobs")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("square"));
    let out = run_command_with_input(
        Command::new("procpool")
            .env("PATH", &path)
            .args(["run", "square", "-w", "1"]),
        "7\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(records(&String::from_utf8_lossy(&out.stdout))[0]["ok"], 49);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_worker_of_your_own_runs_by_path_or_by_name_on_path() {
    let worker = example_worker();
    let out = procpool()
        .args(["jobs", "--worker"])
        .arg(&worker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("summarize  {\"values\": [number, ...], \"population\"?: bool}"),
        "{text}"
    );
    assert!(
        !text.contains("square"),
        "only the worker's own jobs:\n{text}"
    );

    // Two arguments are a JSON array; a struct is an object.
    let out = run_with_input(
        &["run", "fit", "--worker", worker.to_str().unwrap()],
        "[{\"width\": 1920, \"height\": 1080}, {\"width\": 640, \"height\": 640}]\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        recs[0]["ok"],
        serde_json::json!({"width": 640, "height": 360})
    );

    // By name: looked up on PATH, as a shell would.
    let dir = worker.parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_command_with_input(
        procpool()
            .env("PATH", path)
            .args(["run", "summarize", "--worker", "example-worker"]),
        "{\"values\": [2, 4, 4, 4, 5, 5, 7, 9], \"population\": true}\n{\"values\": [1]}\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(recs[0]["ok"]["std_dev"], 2.0);
    assert_eq!(recs[1]["error"]["kind"], "Failed");
    let out = run_with_input(&["jobs", "--worker", "no-such-worker-anywhere"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("on PATH"), "{}", stderr(&out));
}

#[test]
fn a_pipe_dev_stdin_and_a_fifo_are_read_once_and_fully() {
    let expect_three_squares = |out: &Output, what: &str| {
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(out));
        let recs = records(&String::from_utf8_lossy(&out.stdout));
        let squares: Vec<u64> = recs.iter().map(|r| r["ok"].as_u64().unwrap()).collect();
        assert_eq!(squares, [1, 4, 9], "{what}");
        assert!(
            stderr(out).contains("3 inputs: all succeeded"),
            "{what}: {}",
            stderr(out)
        );
    };

    // A pipe from a process substitution, as a shell gives it.
    let script = format!(
        "{} run square -w 1 -i <(seq 3)",
        env!("CARGO_BIN_EXE_procpool")
    );
    let child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    expect_three_squares(&finish(child, "<(seq 3)"), "<(seq 3)");

    // Standard input by its path.
    let out = run_with_input(
        &["run", "square", "-w", "1", "-i", "/dev/stdin"],
        "1\n2\n3\n",
    );
    expect_three_squares(&out, "/dev/stdin");

    // A FIFO, written once by another process.
    let dir = scratch("fifo");
    let fifo = dir.join("in.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let child = procpool()
        .args(["run", "square", "-w", "1", "-i"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Opening for writing waits for the reader, so this cannot run ahead of it.
    std::fs::write(&fifo, "1\n2\n3\n").unwrap();
    expect_three_squares(&finish(child, "a FIFO"), "a FIFO");
    std::fs::remove_dir_all(&dir).unwrap();
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
            .starts_with("line 3, column 1: not JSON")
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
    let cases: [(&[&str], &str); 8] = [
        (&["run", "no_such_job"], "no job `no_such_job`"),
        (&["run", "square", "--chunksize", "0"], "--chunksize"),
        (
            &["run", "square", "--input", "/nonexistent/in.jsonl"],
            "cannot read input /nonexistent/in.jsonl",
        ),
        (
            &["run", "square", "--input", "/"],
            "cannot read input /: it is a directory",
        ),
        (&["run", "square", "--timeout=0"], "must be a positive"),
        (&["run", "square", "--timeout", "nan"], "must be a positive"),
        (&["run", "square", "--timeout", "1e30"], "too long"),
        (
            &["run", "square", "--worker", "/nonexistent/worker"],
            "does not exist",
        ),
    ];
    for (args, expected) in cases {
        let out = run_with_input(args, "1\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
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
fn error_records_point_at_the_input_line_and_stay_small() {
    let huge = "x".repeat(20 << 20);
    let input = format!("1\n\"abc\"\n[1,\n\"{huge}\"\n");
    let out = run_with_input(&["run", "square", "-w", "1"], &input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.len() < 10_000,
        "a bad input is not echoed whole: {} bytes",
        text.len()
    );
    let recs = records(&text);
    let message = |i: usize| recs[i]["error"]["message"].as_str().unwrap().to_owned();
    assert_eq!(recs[1]["error"]["kind"], "Codec");
    assert!(
        message(1).starts_with("line 2, column 5: "),
        "{}",
        message(1)
    );
    assert!(!message(1).contains("line 1"), "{}", message(1));
    assert_eq!(recs[2]["error"]["kind"], "InvalidInput");
    assert!(
        message(2).starts_with("line 3, column 3: not JSON"),
        "{}",
        message(2)
    );
    assert!(message(3).starts_with("line 4, "), "{}", message(3));
    assert!(message(3).contains("bytes cut"), "says it was cut");
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
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut summary).unwrap();
    assert!(
        summary.contains("interrupted: 4 of 24 inputs done (all succeeded), 20 not run"),
        "{summary}"
    );
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
    assert!(!log.contains('\x1b'), "no colours into a pipe:\n{log:?}");
    let out = run_with_input(&["run", "square", "-w", "1"], "3\n");
    assert!(
        !stderr(&out).contains("worker started"),
        "no logs by default"
    );
    assert_eq!(stderr(&out), "procpool: 1 input: all succeeded\n");
}
