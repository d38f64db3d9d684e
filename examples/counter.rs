//! The seeds' shared counter: 4 processes add 1 ten thousand times each to a `Value`
//! in shared memory. With a `Lock` around each read-and-write the total is exactly
//! 40,000; without it, increments that race overwrite each other and are lost. An
//! `Event` starts all four at once, when a `Semaphore` has counted them all ready.
//!
//! cargo run --example counter

use procpool::{Event, Lock, Process, Semaphore, SyncError, Value};

/// `n` increments, each a separate read and write, under `lock` when there is one.
#[procpool::job]
fn count(
    counter: Value<u64>,
    lock: Option<Lock>,
    ready: Semaphore,
    go: Event,
    n: u64,
) -> Result<(), SyncError> {
    ready.release()?;
    go.wait()?;
    for _ in 0..n {
        let _guard = lock.as_ref().map(Lock::lock);
        counter.set(counter.get() + 1);
    }
    Ok(())
}

/// `n` atomic increments: no lock needed.
#[procpool::job]
fn count_atomic(counter: Value<u64>, n: u64) {
    for _ in 0..n {
        counter.fetch_add(1);
    }
}

fn run(counter: &Value<u64>, lock: Option<Lock>) -> Result<u64, Box<dyn std::error::Error>> {
    let (ready, go) = (Semaphore::new(0)?, Event::new()?);
    let workers = (0..4)
        .map(|_| {
            let args = (
                counter.clone(),
                lock.clone(),
                ready.clone(),
                go.clone(),
                10_000,
            );
            Process::spawn(count, args)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for _ in &workers {
        ready.acquire()?.forget();
    }
    go.set();
    for w in &workers {
        w.result()?;
    }
    Ok(counter.get())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();
    let with_lock = run(&Value::new(0)?, Some(Lock::new()?))?;
    println!("4 processes x 10,000 increments with a lock:    {with_lock}");
    assert_eq!(with_lock, 40_000);

    let without = run(&Value::new(0)?, None)?;
    println!(
        "4 processes x 10,000 increments without a lock: {without} (lost {})",
        40_000 - without
    );

    let atomic = Value::new(0u64)?;
    let workers = (0..4)
        .map(|_| Process::spawn(count_atomic, (atomic.clone(), 10_000)))
        .collect::<Result<Vec<_>, _>>()?;
    for w in &workers {
        w.result()?;
    }
    println!(
        "4 processes x 10,000 atomic fetch_add:          {}",
        atomic.get()
    );
    assert_eq!(atomic.get(), 40_000);
    Ok(())
}
