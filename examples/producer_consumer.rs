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

/// Takes items until `None`; returns (items, total length).
#[procpool::job]
fn consume(q: Queue<Option<(String, usize)>>) -> Result<(usize, usize), SyncError> {
    let (mut items, mut total) = (0, 0);
    while let Some((_who, len)) = q.get()? {
        items += 1;
        total += len;
    }
    Ok((items, total))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();
    let text = "the quick brown fox jumps over the lazy dog and keeps running far away";
    let words: Vec<String> = text.split(' ').map(String::from).collect();
    let (left, right) = words.split_at(words.len() / 2);

    let q = Queue::bounded(4)?; // back-pressure: producers wait while 4 items wait
    let producers = [
        Process::spawn(produce, (q.clone(), "left".into(), left.to_vec()))?,
        Process::spawn(produce, (q.clone(), "right".into(), right.to_vec()))?,
    ];
    let consumers = [
        Process::spawn(consume, q.clone())?,
        Process::spawn(consume, q.clone())?,
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
