//! `apply_async` with completion callbacks, as in the seeds' pool example: results are
//! collected by callbacks as each task finishes, and a failing task reports its error
//! through the same callback.
//!
//! cargo run --example callback

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Takes longer for smaller inputs, so results arrive out of submission order.
#[procpool::job]
fn slow_cube(x: u64) -> Result<u64, String> {
    if x == 4 {
        return Err("four is unlucky".into());
    }
    std::thread::sleep(Duration::from_millis(50 * (8 - x)));
    Ok(x * x * x)
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = procpool::Pool::builder().processes(4).build()?;
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (1..8u64)
        .map(|x| {
            let r = pool.apply_async(slow_cube, x)?;
            let arrived = arrived.clone();
            r.on_complete(move |outcome| match outcome {
                Ok(v) => arrived
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{x}^3 = {v}")),
                Err(e) => arrived
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{x}: {e}")),
            });
            Ok(r)
        })
        .collect::<Result<_, procpool::JobError>>()?;
    for r in &handles {
        r.wait();
    }
    println!("in the order they finished:");
    for line in arrived.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("  {line}");
    }
    pool.close();
    pool.join()?;
    Ok(())
}
