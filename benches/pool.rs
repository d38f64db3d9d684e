//! `cargo bench --bench pool`: procpool's figures beside their baselines, measured in
//! one invocation on one machine, as medians of several repetitions; printed as a
//! table and written to `target/bench/pool.json`. Baselines: a raw pipe ping-pong
//! between two processes (the floor for a round trip), rayon (threads), memcpy, and
//! Python's multiprocessing (`benches/python_baseline.py`, when `python3` exists).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a quick smoke pass
//! so the code stays exercised; the figures then mean nothing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::{Pool, StartMethod};
use rayon::prelude::*;
use serde_bytes::ByteBuf;

#[procpool::job]
fn square(x: u64) -> u64 {
    x * x
}

#[procpool::job]
fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// Counts to `n` one step at a time (opaque to the optimiser): pure CPU work.
#[procpool::job]
fn count(n: u64) -> u64 {
    let mut c = 0u64;
    for _ in 0..n {
        c = std::hint::black_box(c + 1);
    }
    c
}

struct Settings {
    reps: usize,
    quick: bool,
}

/// The median of `reps` runs of `f`, after one more run that is not counted (a warm-up,
/// as the Python baseline also has).
fn median(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    f();
    let v: Vec<f64> = (0..reps).map(|_| f()).collect();
    middle(&v)
}

/// The median of `v`.
fn middle(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pool(method: StartMethod) -> Pool {
    Pool::builder()
        .processes(2)
        .start_method(method)
        .build()
        .expect("pool starts")
}

fn start_ms(s: &Settings, method: StartMethod) -> f64 {
    median(s.reps, || {
        let t = Instant::now();
        let p = pool(method);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        p.terminate();
        ms
    })
}

/// Round trip of one byte through a pipe to a child process that echoes it back.
fn pipe_pingpong_us(s: &Settings, n: usize) -> f64 {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .arg("--echo-bytes")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo child");
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let us = median(s.reps, || {
        let mut b = [0u8];
        let t = Instant::now();
        for _ in 0..n {
            to.write_all(&b).unwrap();
            from.read_exact(&mut b).unwrap();
        }
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    });
    drop(to);
    let _ = child.wait();
    us
}

fn echo_bytes_forever() {
    let (mut i, mut o) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut b = [0u8];
    while i.read_exact(&mut b).is_ok() {
        if o.write_all(&b).and_then(|()| o.flush()).is_err() {
            return;
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Steps of `count` that take about `target` here.
fn calibrate(target: Duration) -> u64 {
    let mut n = 1u64 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(count(n));
        let took = t.elapsed();
        if took > Duration::from_millis(5) {
            return (n as f64 * target.as_secs_f64() / took.as_secs_f64()) as u64;
        }
        n *= 2;
    }
}

fn procpool_figures(s: &Settings) -> BTreeMap<&'static str, f64> {
    let mut f = BTreeMap::new();
    f.insert("start_ms_spawn", start_ms(s, StartMethod::Spawn));
    f.insert("start_ms_fork", start_ms(s, StartMethod::Fork));
    f.insert("start_ms_forkserver", start_ms(s, StartMethod::ForkServer));
    let p = pool(StartMethod::Spawn);

    let n = if s.quick { 200 } else { 5_000 };
    f.insert(
        "apply_rtt_us",
        median(s.reps, || {
            let t = Instant::now();
            for i in 0..n as u64 {
                p.apply(square, i).unwrap();
            }
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        }),
    );
    f.insert("pipe_pingpong_us", pipe_pingpong_us(s, n));

    let n = if s.quick { 2_000 } else { 50_000 };
    f.insert(
        "map_chunk1_us_per_task",
        median(s.reps, || {
            let t = Instant::now();
            p.map_chunked(square, 0..n as u64, 1).unwrap();
            t.elapsed().as_secs_f64() / n as f64 * 1e6
        }),
    );
    let n = if s.quick { 20_000 } else { 2_000_000 };
    f.insert(
        "map_default_ns_per_task",
        median(s.reps, || {
            let t = Instant::now();
            p.map(square, 0..n as u64).unwrap();
            t.elapsed().as_secs_f64() / n as f64 * 1e9
        }),
    );
    f.insert(
        "rayon_map_ns_per_task",
        median(s.reps, || {
            let t = Instant::now();
            let v: Vec<u64> = (0..n as u64).into_par_iter().map(|x| x * x).collect();
            std::hint::black_box(v);
            t.elapsed().as_secs_f64() / n as f64 * 1e9
        }),
    );

    let steps = calibrate(Duration::from_millis(if s.quick { 5 } else { 50 }));
    let tasks = vec![steps; 8];
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let serial = || {
        tasks.iter().for_each(|&n| {
            std::hint::black_box(count(n));
        })
    };
    let pooled = || {
        p.map_chunked(count, tasks.clone(), 1).unwrap();
    };
    let threads = || {
        rayon_pool.install(|| {
            tasks.par_iter().with_max_len(1).for_each(|&n| {
                std::hint::black_box(count(n));
            })
        })
    };
    // Paired: each repetition times serial, procpool and rayon back to back, so a burst
    // of load from elsewhere on this shared machine lands on one repetition's three
    // figures rather than on one of them; the speedups are that repetition's ratios.
    // The first repetition is the warm-up.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..=s.reps {
        let serial = timed(&serial);
        ours.push(serial / timed(&pooled));
        theirs.push(serial / timed(&threads));
    }
    f.insert("cpu_speedup", middle(&ours[1..]));
    f.insert("rayon_cpu_speedup", middle(&theirs[1..]));

    let payload = ByteBuf::from(vec![7u8; if s.quick { 1 << 20 } else { 16 << 20 }]);
    let bytes = payload.len() as f64;
    f.insert(
        "payload_mb_per_s",
        median(s.reps, || {
            let t = Instant::now();
            let back = p.apply(echo, payload.clone()).unwrap();
            assert_eq!(back.len(), payload.len());
            2.0 * bytes / t.elapsed().as_secs_f64() / 1e6
        }),
    );
    f.insert(
        "memcpy_mb_per_s",
        median(s.reps, || {
            let t = Instant::now();
            let copy = payload.to_vec();
            let back = std::hint::black_box(copy).clone();
            std::hint::black_box(back);
            2.0 * bytes / t.elapsed().as_secs_f64() / 1e6
        }),
    );
    let idle = pool(StartMethod::Spawn);
    std::thread::sleep(Duration::from_millis(200));
    let rss: Vec<f64> = idle.worker_pids().into_iter().map(rss_mib).collect();
    f.insert(
        "idle_worker_rss_mib",
        median(1, || rss.iter().sum::<f64>() / rss.len() as f64),
    );
    f
}

fn python_figures(quick: bool) -> Option<BTreeMap<String, f64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_baseline.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    procpool::init();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--echo-bytes") {
        return echo_bytes_forever();
    }
    let quick = !args.iter().any(|a| a == "--bench");
    let s = Settings {
        reps: if quick { 1 } else { 5 },
        quick,
    };
    let ours = procpool_figures(&s);
    let python = python_figures(quick).unwrap_or_default();

    // (label, procpool key, baseline key, python key, higher is better)
    let rows: [(&str, &str, &str, &str, bool); 7] = [
        (
            "pool start, 2 workers ready (ms)",
            "start_ms_spawn",
            "start_ms_fork",
            "start_ms_spawn",
            false,
        ),
        (
            "apply round trip (us)",
            "apply_rtt_us",
            "pipe_pingpong_us",
            "apply_rtt_us",
            false,
        ),
        (
            "map tiny job, chunksize 1 (us/task)",
            "map_chunk1_us_per_task",
            "",
            "map_chunk1_us_per_task",
            false,
        ),
        (
            "map tiny job, default chunks (ns/task)",
            "map_default_ns_per_task",
            "rayon_map_ns_per_task",
            "map_default_ns_per_task",
            false,
        ),
        (
            "CPU-bound 8 x 50 ms: speedup over serial",
            "cpu_speedup",
            "rayon_cpu_speedup",
            "cpu_speedup",
            true,
        ),
        (
            "16 MiB payload round trip (MB/s)",
            "payload_mb_per_s",
            "memcpy_mb_per_s",
            "payload_mb_per_s",
            true,
        ),
        (
            "idle worker resident memory (MiB)",
            "idle_worker_rss_mib",
            "",
            "idle_worker_rss_mib",
            false,
        ),
    ];
    let get = |k: &str| ours.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>16}",
        "figure", "procpool", "baseline", "python", "vs python (>1:"
    );
    println!("{:>92}", "procpool better)");
    for (label, key, base, py, higher_better) in rows {
        let base = if base.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", get(base))
        };
        let pyv = python.get(py).copied();
        let ratio = pyv.map_or("-".to_owned(), |v| {
            let r = if higher_better {
                get(key) / v
            } else {
                v / get(key)
            };
            format!("{r:.2}x")
        });
        let pyv = pyv.map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "{label:<42} {:>10.2} {base:>10} {pyv:>10} {ratio:>16}",
            get(key)
        );
    }
    println!(
        "(baseline: Fork start, raw pipe ping-pong, rayon, rayon, memcpy; python: spawn \
         start; {} reps, medians)",
        s.reps
    );
    println!(
        "procpool ForkServer start: {:.1} ms",
        get("start_ms_forkserver")
    );
    if !python.is_empty() {
        println!(
            "python start: fork {:.1} ms, spawn {:.1} ms, forkserver {:.1} ms",
            python.get("start_ms_fork").copied().unwrap_or(f64::NAN),
            python.get("start_ms_spawn").copied().unwrap_or(f64::NAN),
            python
                .get("start_ms_forkserver")
                .copied()
                .unwrap_or(f64::NAN),
        );
    }
    let json =
        serde_json::json!({ "procpool": ours, "python": python, "quick": quick, "reps": s.reps });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(format!("{dir}/pool.json"), json.to_string());
    }
}
