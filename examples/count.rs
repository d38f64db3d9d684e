//! The seeds' CPU-bound demo: count from 0 to n^n, many times, first serially in this
//! process and then on a pool with one worker per core; prints both times, the
//! speedup, and how much CPU each side really got (on a shared machine a pool of two
//! workers may get far less than two cores, and the speedup says so only together
//! with that figure).
//!
//! cargo run --release --example count            # n = 9, 16 tasks per core
//! cargo run --release --example count -- 8 64    # n = 8, 64 tasks

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// Counts to `n^n` one step at a time; `black_box` keeps the optimiser from replacing
/// the loop with its closed form, so the work is really done.
#[procpool::job]
fn count_to_n_pow_n(n: u32) -> Result<u64, String> {
    let limit = u64::from(n)
        .checked_pow(n)
        .ok_or_else(|| format!("{n}^{n} does not fit in u64"))?;
    let mut count = 0u64;
    for _ in 0..limit {
        count = std::hint::black_box(count + 1);
    }
    Ok(count)
}

/// CPU time (user and system) used so far by this process, or by its children that
/// have ended and been reaped (the pool's workers, once it is joined).
fn cpu_time(who: UsageWho) -> Duration {
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    getrusage(who).map_or(Duration::ZERO, |usage| {
        time(usage.user_time()) + time(usage.system_time())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(9);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    // Many tasks, so that the last ones to finish leave the other cores idle only
    // briefly, and a few seconds of work, so that a burst of load elsewhere is a small
    // part of it.
    let tasks: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16 * cores);
    let inputs = vec![n; tasks];
    println!(
        "counting to {n}^{n} = {} {tasks} times; {cores} CPUs available to this process",
        u64::from(n).pow(n)
    );

    let (start, cpu_before) = (Instant::now(), cpu_time(UsageWho::RUSAGE_SELF));
    let serial: Vec<u64> = inputs
        .iter()
        .map(|&n| count_to_n_pow_n(n))
        .collect::<Result<_, _>>()?;
    let serial_time = start.elapsed();
    let serial_cpus =
        (cpu_time(UsageWho::RUSAGE_SELF) - cpu_before).as_secs_f64() / serial_time.as_secs_f64();
    println!("serial, this process:  {serial_time:>10.2?}, using {serial_cpus:.2} CPUs");

    let (start, cpu_before) = (Instant::now(), cpu_time(UsageWho::RUSAGE_CHILDREN));
    let pool = procpool::Pool::builder().processes(cores).build()?;
    let started = start.elapsed();
    let pooled: Vec<u64> = pool.map_chunked(count_to_n_pow_n, inputs, 1)?;
    let pool_time = start.elapsed();
    pool.close();
    pool.join()?; // the workers are reaped, so their CPU time is counted
    let pool_cpus =
        (cpu_time(UsageWho::RUSAGE_CHILDREN) - cpu_before).as_secs_f64() / pool_time.as_secs_f64();
    println!(
        "pool of {cores} processes: {pool_time:>10.2?}, using {pool_cpus:.2} CPUs \
         (of which {started:.2?} starting the workers)"
    );

    assert_eq!(serial, pooled, "both ways count the same");
    println!(
        "speedup: {:.2}x with {cores} workers; the CPUs they really got allow {:.2}x",
        serial_time.as_secs_f64() / pool_time.as_secs_f64(),
        pool_cpus / serial_cpus.max(f64::EPSILON)
    );
    Ok(())
}
