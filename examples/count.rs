//! The seeds' CPU-bound demo: count from 0 to n^n, several times, first serially in
//! this process and then on a pool with one worker per core; prints both times and the
//! speedup.
//!
//! cargo run --release --example count            # n = 9, 2 tasks per core
//! cargo run --release --example count -- 8 16    # n = 8, 16 tasks

use std::time::Instant;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(9);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let tasks: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2 * cores);
    let inputs = vec![n; tasks];
    println!(
        "counting to {n}^{n} = {} {tasks} times",
        u64::from(n).pow(n)
    );

    let start = Instant::now();
    let serial: Vec<u64> = inputs
        .iter()
        .map(|&n| count_to_n_pow_n(n))
        .collect::<Result<_, _>>()?;
    let serial_time = start.elapsed();
    println!("serial, this process:   {serial_time:>10.2?}");

    let start = Instant::now();
    let pool = procpool::Pool::builder().processes(cores).build()?;
    let started = start.elapsed();
    let pooled: Vec<u64> = pool.map_chunked(count_to_n_pow_n, inputs, 1)?;
    let pool_time = start.elapsed();
    println!(
        "pool of {cores} processes:   {pool_time:>10.2?} (of which {started:.2?} starting the workers)"
    );

    assert_eq!(serial, pooled, "both ways count the same");
    println!(
        "speedup: {:.2}x on {cores} cores",
        serial_time.as_secs_f64() / pool_time.as_secs_f64()
    );
    pool.close();
    pool.join()?;
    Ok(())
}
