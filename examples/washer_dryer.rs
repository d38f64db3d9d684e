//! The seeds' washer and dryer, as processes joined by `JoinableQueue`s: one washer,
//! two dryers, and the main process putting dishes away. `join` on a queue returns
//! once every dish put into it was marked done.
//!
//! cargo run --example washer_dryer

use std::time::Duration;

use procpool::{JoinableQueue, Process, SyncError};

type Dishes = JoinableQueue<Option<String>>;

/// Washes each dish of `sink` and hands it to `rack`, until `None`.
#[procpool::job]
fn wash(sink: Dishes, rack: Dishes, dryers: u32) -> Result<u32, SyncError> {
    let mut washed = 0;
    while let Some(dish) = sink.get()? {
        std::thread::sleep(Duration::from_millis(20));
        rack.put(&Some(dish))?;
        sink.task_done()?;
        washed += 1;
    }
    sink.task_done()?;
    for _ in 0..dryers {
        rack.put(&None)?;
    }
    Ok(washed)
}

/// Dries each dish of `rack` and hands it to `shelf`, until `None`.
#[procpool::job]
fn dry(rack: Dishes, shelf: Dishes) -> Result<u32, SyncError> {
    let mut dried = 0;
    while let Some(dish) = rack.get()? {
        std::thread::sleep(Duration::from_millis(35));
        shelf.put(&Some(format!("{dish} (dried by {})", std::process::id())))?;
        rack.task_done()?;
        dried += 1;
    }
    rack.task_done()?;
    Ok(dried)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();
    let (sink, rack, shelf) = (Dishes::new()?, Dishes::new()?, Dishes::new()?);
    let washer = Process::builder()
        .name("washer")
        .spawn(wash, (sink.clone(), rack.clone(), 2))?;
    let dryers = [
        Process::builder()
            .name("dryer-1")
            .spawn(dry, (rack.clone(), shelf.clone()))?,
        Process::builder()
            .name("dryer-2")
            .spawn(dry, (rack.clone(), shelf.clone()))?,
    ];
    let dishes = ["salad", "bread", "entree", "dessert", "cup", "saucer"];
    for dish in dishes {
        println!("Washing {dish} dish");
        sink.put(&Some(dish.to_string()))?;
    }
    sink.put(&None)?;
    sink.join()?; // every dish washed
    rack.join()?; // every dish dried
    for _ in dishes {
        let dish = shelf.get()?.ok_or("a dish, not the end")?;
        println!("Putting away {dish}");
        shelf.task_done()?;
    }
    println!("{} washed {} dishes", washer.name(), washer.result()?);
    for d in &dryers {
        println!(
            "{} dried {} dishes (exitcode {})",
            d.name(),
            d.result()?,
            d.join()
        );
    }
    Ok(())
}
