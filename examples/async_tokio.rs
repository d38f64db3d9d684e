//! procpool from async code: a plain `main` calls `procpool::init()` first, then
//! builds the tokio runtime. (With `#[tokio::main]`, every worker would start a
//! runtime of its own before `init()` could serve: threads and memory for nothing.)
//!
//! An `AsyncResult` is a `Future` (no runtime of procpool's own), so tasks are awaited
//! like any other; under a timeout, `cancel_on_drop()` stops the task that lost.
//!
//! cargo run --example async_tokio

use std::time::Duration;

/// Sleeps ms milliseconds in a worker process (a stand-in for CPU-heavy or crash-prone
/// work), then returns ms.
#[procpool::job]
fn work(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init(); // in a worker: serves jobs and exits, before any runtime exists
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let pool = procpool::Pool::builder().processes(2).build()?;

    // Awaited side by side: both run at once, each in a worker.
    let (a, b) = (pool.apply_async(work, 200)?, pool.apply_async(work, 100)?);
    println!("awaited both: {} and {}", a.await?, b.await?);

    // A task that takes too long: the timeout drops the future, and with
    // cancel_on_drop the task stops too (its worker is killed and replaced). A plain
    // AsyncResult dropped this way would leave the task running to its end.
    let slow = pool.apply_async(work, 60_000)?.cancel_on_drop();
    match tokio::time::timeout(Duration::from_millis(300), slow).await {
        Ok(value) => println!("finished in time: {value:?}"),
        Err(_) => println!("gave up after 300 ms; the task was cancelled"),
    }

    // The pool goes on with a fresh worker.
    println!("after the cancel: {}", pool.apply_async(work, 10)?.await?);
    pool.close();
    // join blocks: tell the runtime, so its other tasks move to other threads.
    tokio::task::block_in_place(|| pool.join())?;
    Ok(())
}
