//! Squares with `map`, `apply_async` and `imap`: the seeds' first pool example.
//!
//! cargo run --example squares

use std::time::Duration;

#[procpool::job]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = procpool::Pool::builder().processes(4).build()?;
    println!("workers: {:?}", pool.worker_pids());

    let squares: Vec<u64> = pool.map(square, 0..10_000)?;
    println!(
        "map: {} squares, the last is {}",
        squares.len(),
        squares[9_999]
    );

    let r = pool.apply_async(square, 12)?;
    println!(
        "apply_async: 12^2 = {}",
        r.get_timeout(Duration::from_secs(5))?
    );

    let streamed: u64 = pool
        .imap(square, 0..1_000)
        .chunksize(50)
        .sum::<Result<u64, _>>()?;
    println!("imap: the sum of the first 1000 squares is {streamed}");

    pool.close();
    pool.join()?;
    Ok(())
}
