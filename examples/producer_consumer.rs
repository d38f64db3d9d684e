//! Producer and consumer processes over a `Queue`: the seeds' producer/consumer, with
//! processes instead of threads. Two producers hash words, two consumers total them up,
//! and a `None` per consumer says "no more".
//!
//! cargo run --example producer_consumer

use procpool::{Process, Queue, SyncError};

/// Puts the lengths of `words` into `q`, tagged with the producer's name.
#[procpool::job]
fn produce(
    q: Queue<Option<(String, usize)>>,
    who: String,
    words: Vec<String>,
) -> Result<usize, SyncError> {
    for w in &words {
        q.put(&Some((who.clone(), w.len())))?;
    }
    Ok(words.len())
}

/// Says it is ready on `ready`, then takes items until `None`, spending a moment on
/// each (a consumer that does real work); returns (items, total length).
#[procpool::job]
fn consume(
    q: Queue<Option<(String, usize)>>,
    ready: Queue<()>,
) -> Result<(usize, usize), SyncError> {
    ready.put(&())?;
    let (mut items, mut total) = (0, 0);
    while let Some((_who, len)) = q.get()? {
        std::thread::sleep(std::time::Duration::from_millis(2));
        items += 1;
        total += len;
    }
    Ok((items, total))
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let text = "the quick brown fox jumps over the lazy dog and keeps running far away";
    let words: Vec<String> = text.split(' ').map(String::from).collect();
    let (left, right) = words.split_at(words.len() / 2);

    let q = Queue::bounded(4)?; // back-pressure: producers wait while 4 items wait
    // Both consumers wait for words before the first is produced, so both get some.
    let ready = Queue::new()?;
    let mut consumers = Vec::new();
    for name in ["consumer-1", "consumer-2"] {
        let consumer = Process::builder().name(name);
        consumers.push(consumer.spawn(consume, (q.clone(), ready.clone()))?);
    }
    for _ in &consumers {
        ready.get()?;
    }
    let producers = [
        Process::spawn(produce, (q.clone(), "left".into(), left.to_vec()))?,
        Process::spawn(produce, (q.clone(), "right".into(), right.to_vec()))?,
    ];
    let produced: usize = producers
        .iter()
        .map(|p| p.result())
        .sum::<Result<usize, _>>()?;
    for _ in &consumers {
        q.put(&None)?;
    }
    let (mut items, mut total) = (0, 0);
    for c in &consumers {
        let (n, len) = c.result()?;
        println!("{} (pid {}) took {n} words", c.name(), c.pid());
        items += n;
        total += len;
    }
    println!("produced {produced} words, consumed {items}, {total} letters in all");
    assert_eq!((items, total), (words.len(), text.replace(' ', "").len()));
    Ok(())
}
