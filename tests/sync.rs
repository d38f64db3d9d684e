//! The shared primitives across real processes: every one handed to a `Process` (or a
//! pool task) as a job argument, used on both sides, and a clear error instead of a
//! hang when the other side dies.

mod common;

use std::time::Duration;

use common::*;
use procpool::{
    Array, Event, JoinableQueue, Lock, Pipe, Process, Queue, Semaphore, SyncError, Value, job,
};

procpool::test_harness!();

/// Puts `from..from + n` into the queue; returns how many it put.
#[job]
fn produce(q: Queue<u64>, from: u64, n: u64) -> Result<u64, String> {
    for i in from..from + n {
        q.put(&i).map_err(|e| e.to_string())?;
    }
    Ok(n)
}

/// Takes items until `None`; returns them.
#[job]
fn consume(q: Queue<Option<u64>>) -> Result<Vec<u64>, String> {
    let mut got = Vec::new();
    while let Some(x) = q.get().map_err(|e| e.to_string())? {
        got.push(x);
    }
    Ok(got)
}

/// Forwards items of `from` to `to` until `None` (forwarded too), marking each done.
#[job]
fn stage(
    from: JoinableQueue<Option<String>>,
    to: JoinableQueue<Option<String>>,
    verb: String,
) -> Result<u32, String> {
    let mut n = 0;
    loop {
        let item = from.get().map_err(|e| e.to_string())?;
        let next = item.as_ref().map(|dish| format!("{dish} {verb}"));
        let last = next.is_none();
        to.put(&next).map_err(|e| e.to_string())?;
        from.task_done().map_err(|e| e.to_string())?;
        if last {
            return Ok(n);
        }
        n += 1;
    }
}

/// Takes items until no other handle of the queue is left; returns how many.
#[job]
fn drain(q: Queue<u64>) -> Result<u64, String> {
    let mut n = 0;
    loop {
        match q.get() {
            Ok(_) => n += 1,
            Err(SyncError::Disconnected) => return Ok(n),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Puts one item, then sleeps until killed.
#[job]
fn put_one_then_hang(q: Queue<u64>) -> Result<(), String> {
    q.put(&7).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// Holds its end of a pipe and does nothing until killed.
#[job]
fn hold_pipe(end: Pipe<u64>, ready: Event) {
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(end);
}

/// Answers each number with its double until the other end is gone; returns how many.
#[job]
fn echo_double(end: Pipe<u64>) -> Result<u64, String> {
    let mut n = 0;
    loop {
        match end.recv() {
            Ok(x) => end.send(&(x * 2)).map_err(|e| e.to_string())?,
            Err(SyncError::Disconnected) => return Ok(n),
            Err(e) => return Err(e.to_string()),
        }
        n += 1;
    }
}

/// Waits for `go`, then sets `done`.
#[job]
fn relay(go: Event, done: Event) -> Result<bool, String> {
    let ok = go
        .wait_timeout(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    done.set();
    Ok(ok)
}

/// Holds an event and a semaphore, says so, and does nothing until killed.
#[job]
fn hold_and_hang(event: Event, permits: Semaphore, ready: Event) {
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
    drop((event, permits));
}

/// Takes the lock, says so, and holds it until killed.
#[job]
fn hold_lock(lock: Lock, locked: Event) {
    let _guard = lock.lock();
    locked.set();
    std::thread::sleep(Duration::from_secs(600));
}

/// Takes the lock and panics while holding it.
#[job]
fn panic_holding(lock: Lock) {
    let _guard = lock.lock();
    panic!("deliberate panic under the lock");
}

/// The seeds' shared counter: `n` increments under the lock, each a separate read and
/// write (which without the lock would lose updates). Starts when `go` is set, after
/// signalling `ready`, so that the processes really overlap.
#[job]
fn count_with_lock(
    counter: Value<u64>,
    lock: Lock,
    ready: Semaphore,
    go: Event,
    n: u64,
) -> Result<(), String> {
    ready.release().map_err(|e| e.to_string())?;
    go.wait().map_err(|e| e.to_string())?;
    for _ in 0..n {
        let _guard = lock.lock();
        counter.set(counter.get() + 1);
    }
    Ok(())
}

/// `n` atomic increments, and `n` under the value's own lock.
#[job]
fn count_atomically(counter: Value<u64>, locked: Value<i64>, n: u64) {
    for _ in 0..n {
        counter.fetch_add(1);
        locked.update(|v| v + 1);
    }
}

/// Enters the semaphore `rounds` times, recording the most holders seen at once.
#[job]
fn crowd(
    permits: Semaphore,
    inside: Value<u32>,
    most: Value<u32>,
    rounds: u32,
) -> Result<(), String> {
    for _ in 0..rounds {
        let _permit = permits.acquire().map_err(|e| e.to_string())?;
        let now = inside.fetch_add(1) + 1;
        most.update(|m| m.max(now));
        std::thread::sleep(Duration::from_millis(5));
        inside.fetch_sub(1);
    }
    Ok(())
}

/// Fills element `i` of each row with `i * 10 + row`.
#[job]
fn fill(a: Array<f64>, row: usize, width: usize) {
    for i in 0..width {
        a.set(row * width + i, (i * 10 + row) as f64);
    }
}

fn join_all<T>(procs: &[Process<T>]) {
    for p in procs {
        assert_eq!(
            p.join_timeout(PATIENCE),
            Some(0),
            "{} exits cleanly",
            p.name()
        );
    }
    assert_gone(&procs.iter().map(|p| p.pid()).collect::<Vec<_>>());
}

#[test]
fn queue_carries_every_item_exactly_once_between_producers_and_consumers() {
    let q = Queue::<u64>::new().expect("queue");
    let items = Queue::<Option<u64>>::new().expect("queue");
    let producers: Vec<_> = (0..3)
        .map(|k| Process::spawn(produce, (q.clone(), k * 1000, 500)).expect("producer"))
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::spawn(consume, items.clone()).expect("consumer"))
        .collect();
    // The parent relays: it is a consumer of the first queue and the producer of the
    // second, so both directions cross process boundaries.
    for _ in 0..1500 {
        let x = q.get_timeout(PATIENCE).expect("an item");
        items.put(&Some(x)).expect("relay");
    }
    for _ in &consumers {
        items.put(&None).expect("stop");
    }
    let mut seen: Vec<u64> = consumers
        .iter()
        .flat_map(|c| c.result().expect("consumer result"))
        .collect();
    seen.sort_unstable();
    let expected: Vec<u64> = (0..3).flat_map(|k| k * 1000..k * 1000 + 500).collect();
    assert_eq!(seen, expected);
    for p in &producers {
        assert_eq!(p.result(), Ok(500));
    }
    join_all(&producers);
    join_all(&consumers);
}

#[test]
fn a_bounded_queue_holds_back_its_producer() {
    let q = Queue::<u64>::bounded(3).expect("queue");
    let producer = Process::spawn(produce, (q.clone(), 0, 50)).expect("producer");
    assert!(
        eventually(|| q.len() == 3),
        "the queue fills to its capacity"
    );
    // Full: the producer waits rather than overfilling.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q.len(), 3);
    assert!(producer.is_alive());
    assert_eq!(q.try_put(&99), Err(SyncError::Full));
    let got: Vec<u64> = (0..50)
        .map(|_| q.get_timeout(PATIENCE).expect("item"))
        .collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "in order");
    assert_eq!(producer.result(), Ok(50));
    join_all(&[producer]);
}

#[test]
fn washer_and_dryer_joinable_queues() {
    let to_wash = JoinableQueue::<Option<String>>::new().expect("queue");
    let to_dry = JoinableQueue::<Option<String>>::new().expect("queue");
    let done = JoinableQueue::<Option<String>>::new().expect("queue");
    let washer = Process::builder()
        .name("washer")
        .spawn(stage, (to_wash.clone(), to_dry.clone(), "washed".into()))
        .expect("washer");
    let dryer = Process::builder()
        .name("dryer")
        .spawn(stage, (to_dry.clone(), done.clone(), "dried".into()))
        .expect("dryer");
    let dishes = ["salad", "bread", "entree", "dessert"];
    for dish in dishes {
        to_wash.put(&Some(dish.to_string())).expect("put");
    }
    to_wash.put(&None).expect("put");
    to_wash.join_timeout(PATIENCE).expect("all washed");
    to_dry.join_timeout(PATIENCE).expect("all dried");
    let mut finished = Vec::new();
    while let Some(dish) = done.get_timeout(PATIENCE).expect("a dish") {
        finished.push(dish);
        done.task_done().expect("done");
    }
    done.task_done().expect("done");
    assert_eq!(
        finished,
        dishes.map(|d| format!("{d} washed dried")).to_vec()
    );
    assert_eq!(washer.result(), Ok(4));
    assert_eq!(dryer.result(), Ok(4));
    assert_eq!(done.task_done(), Err(SyncError::TaskDone));
    done.join().expect("nothing unfinished");
    join_all(&[washer, dryer]);
}

#[test]
fn get_after_the_last_producer_died_is_disconnected_not_a_hang() {
    let q = Queue::<u64>::new().expect("queue");
    let producer = Process::spawn(put_one_then_hang, q.clone()).expect("producer");
    assert_eq!(q.get_timeout(PATIENCE), Ok(7));
    producer.kill();
    assert_eq!(producer.join(), -9);
    assert_eq!(q.get_timeout(PATIENCE), Err(SyncError::Disconnected));
    assert_gone(&[producer.pid()]);
}

#[test]
fn a_consumer_process_sees_its_producer_drop_the_queue() {
    let q = Queue::<u64>::new().expect("queue");
    // The copy in flight counts until the child opens it, so dropping the parent's
    // last handle right away neither strands the child nor loses the region.
    let consumer = Process::spawn(drain, q.clone()).expect("consumer");
    for i in 0..10 {
        q.put(&i).expect("put");
    }
    drop(q);
    assert_eq!(consumer.result(), Ok(10));
    join_all(&[consumer]);
}

#[test]
fn put_on_a_full_queue_whose_consumers_are_gone_is_disconnected() {
    let q = Queue::<u64>::bounded(1).expect("queue");
    let other = q.clone();
    q.put(&1).expect("room for one");
    assert_eq!(
        q.put_timeout(&2, Duration::from_millis(50)),
        Err(SyncError::Timeout)
    );
    drop(other);
    assert_eq!(q.put(&2), Err(SyncError::Disconnected));
    assert_eq!(q.get(), Ok(1), "nothing lost");
}

#[test]
fn pipe_is_duplex_and_the_far_end_sees_the_near_end_go() {
    let (near, far) = Pipe::<u64>::pair().expect("pipe");
    let echo = Process::spawn(echo_double, far).expect("echo");
    for x in 0..100 {
        near.send(&x).expect("send");
        assert_eq!(near.recv_timeout(PATIENCE), Ok(x * 2));
    }
    drop(near);
    assert_eq!(echo.result(), Ok(100), "the child's recv saw Disconnected");
    join_all(&[echo]);
}

#[test]
fn recv_on_a_pipe_whose_peer_died_is_disconnected() {
    let (near, far) = Pipe::<u64>::pair().expect("pipe");
    let ready = Event::new().expect("event");
    let holder = Process::spawn(hold_pipe, (far, ready.clone())).expect("holder");
    assert_eq!(ready.wait_timeout(PATIENCE), Ok(true));
    assert_eq!(near.try_recv(), Err(SyncError::Empty));
    holder.kill();
    assert_eq!(near.recv_timeout(PATIENCE), Err(SyncError::Disconnected));
    assert_eq!(near.send(&1), Err(SyncError::Disconnected));
    assert_gone(&[holder.pid()]);
}

#[test]
fn events_cross_processes_both_ways() {
    let (go, done) = (Event::new().expect("event"), Event::new().expect("event"));
    let child = Process::spawn(relay, (go.clone(), done.clone())).expect("child");
    assert_eq!(done.wait_timeout(Duration::from_millis(50)), Ok(false));
    go.set();
    assert_eq!(done.wait_timeout(PATIENCE), Ok(true));
    assert_eq!(child.result(), Ok(true));
    go.clear();
    assert!(!go.is_set());
    join_all(&[child]);
}

#[test]
fn waits_on_an_event_or_semaphore_whose_other_holders_died_are_disconnected() {
    let (event, permits) = (
        Event::new().expect("event"),
        Semaphore::new(0).expect("sem"),
    );
    let ready = Event::new().expect("event");
    let holder = Process::spawn(
        hold_and_hang,
        (event.clone(), permits.clone(), ready.clone()),
    )
    .expect("holder");
    assert_eq!(ready.wait_timeout(PATIENCE), Ok(true));
    // While the holder lives, it could set or release: the waits time out.
    assert_eq!(event.wait_timeout(Duration::from_millis(100)), Ok(false));
    assert_eq!(
        permits.acquire_timeout(Duration::from_millis(100)).err(),
        Some(SyncError::Timeout)
    );
    holder.kill();
    assert_eq!(event.wait_timeout(PATIENCE), Err(SyncError::Disconnected));
    assert_eq!(
        permits.acquire_timeout(PATIENCE).err(),
        Some(SyncError::Disconnected)
    );
    assert_gone(&[holder.pid()]);
}

#[test]
fn a_lock_whose_holder_was_killed_is_taken_over_and_says_so() {
    let lock = Lock::new().expect("lock");
    let locked = Event::new().expect("event");
    let holder = Process::spawn(hold_lock, (lock.clone(), locked.clone())).expect("holder");
    assert_eq!(locked.wait_timeout(PATIENCE), Ok(true));
    assert_eq!(
        lock.lock_timeout(Duration::from_millis(50)).err(),
        Some(SyncError::Timeout)
    );
    holder.kill();
    let guard = lock
        .lock_timeout(PATIENCE)
        .expect("taken over from the dead holder");
    assert_eq!(guard.previous_owner_died(), Some(holder.pid()));
    drop(guard);
    assert_eq!(
        lock.lock().previous_owner_died(),
        None,
        "an ordinary release after"
    );
    assert_gone(&[holder.pid()]);
}

#[test]
fn a_panic_under_the_lock_releases_it() {
    let lock = Lock::new().expect("lock");
    let p = Process::spawn(panic_holding, lock.clone()).expect("process");
    assert_eq!(p.join(), 1);
    assert!(matches!(
        p.result(),
        Err(procpool::JobError::Panicked { .. })
    ));
    let guard = lock.try_lock().expect("released during unwinding");
    assert_eq!(guard.previous_owner_died(), None);
}

#[test]
fn four_processes_count_to_forty_thousand_exactly() {
    let counter = Value::new(0u64).expect("value");
    let lock = Lock::new().expect("lock");
    let (ready, go) = (
        Semaphore::new(0).expect("sem"),
        Event::new().expect("event"),
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let args = (
                counter.clone(),
                lock.clone(),
                ready.clone(),
                go.clone(),
                10_000,
            );
            Process::spawn(count_with_lock, args).expect("worker")
        })
        .collect();
    for _ in &workers {
        ready.acquire_timeout(PATIENCE).expect("all ready").forget();
    }
    go.set();
    join_all(&workers);
    assert_eq!(counter.get(), 40_000);

    let atomic = Value::new(0u64).expect("value");
    let locked = Value::new(0i64).expect("value");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            Process::spawn(count_atomically, (atomic.clone(), locked.clone(), 10_000))
                .expect("worker")
        })
        .collect();
    join_all(&workers);
    assert_eq!((atomic.get(), locked.get()), (40_000, 40_000));
}

#[test]
fn a_semaphore_admits_at_most_its_permits() {
    let permits = Semaphore::bounded(2).expect("semaphore");
    let inside = Value::new(0u32).expect("value");
    let most = Value::new(0u32).expect("value");
    let people: Vec<_> = (0..5)
        .map(|_| {
            Process::spawn(crowd, (permits.clone(), inside.clone(), most.clone(), 20)).expect("p")
        })
        .collect();
    join_all(&people);
    assert!(
        (1..=2).contains(&most.get()),
        "at most 2 inside, saw {}",
        most.get()
    );
    assert_eq!(inside.get(), 0);
    assert_eq!(permits.value(), 2, "every permit came back");
}

#[test]
fn arrays_are_written_by_several_processes() {
    let (rows, width) = (4, 8);
    let a = Array::<f64>::new(rows * width).expect("array");
    let writers: Vec<_> = (0..rows)
        .map(|row| Process::spawn(fill, (a.clone(), row, width)).expect("writer"))
        .collect();
    join_all(&writers);
    let expected: Vec<f64> = (0..rows)
        .flat_map(|row| (0..width).map(move |i| (i * 10 + row) as f64))
        .collect();
    assert_eq!(a.to_vec(), expected);
}

#[test]
fn pool_tasks_take_queues_as_arguments() {
    let pool = pool(2);
    let q = Queue::<u64>::new().expect("queue");
    let puts = pool
        .map(produce, (0..8).map(|k| (q.clone(), k * 100, 25)))
        .expect("tasks");
    assert_eq!(puts, vec![25; 8]);
    let mut got: Vec<u64> = (0..200).map(|_| q.try_get().expect("item")).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..8)
            .flat_map(|k| k * 100..k * 100 + 25)
            .collect::<Vec<_>>()
    );
    // Every task resolved and every worker dropped its copy: nobody can put now.
    assert_eq!(q.get_timeout(PATIENCE), Err(SyncError::Disconnected));
    close_and_check(pool);
}

#[test]
fn a_handle_decoded_as_another_type_or_after_its_sender_dropped_it_is_an_error() {
    let codec = procpool::Codec::Bincode;
    let q = Queue::<u64>::new().expect("queue");
    let bytes = codec.encode(&q).expect("encodes");
    let wrong = codec
        .decode::<Queue<String>>(&bytes)
        .expect_err("another item type");
    assert!(wrong.contains("element type"), "{wrong}");
    let lock = codec.decode::<Lock>(&bytes).expect_err("not a lock");
    assert!(lock.contains("not a lock"), "{lock}");
    drop(q);
    let gone = codec
        .decode::<Queue<u64>>(&bytes)
        .expect_err("sender dropped it");
    assert!(gone.contains("keep its handle"), "{gone}");
}

#[test]
fn a_consumer_killed_before_or_after_opening_its_queue_leaves_no_phantom_holder() {
    let q = Queue::<u64>::new().expect("queue");
    // Killed at once: it may die before it opened its copy, whose hold then ends when
    // it is reaped, or after, when its registration dies with it.
    let consumer = Process::spawn(drain, q.clone()).expect("consumer");
    consumer.kill();
    assert_eq!(consumer.join(), -9);
    assert_eq!(q.get_timeout(PATIENCE), Err(SyncError::Disconnected));
    assert_gone(&[consumer.pid()]);
}
