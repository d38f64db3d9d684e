//! Exactly once inside a chunk: when a worker dies in the middle of a chunk of `map`,
//! the arguments that finished keep their values, the ones that never started run
//! elsewhere, and only the one that was running is lost (or retried). Python's pool
//! and loky lose the whole chunk.

mod common;

use common::*;
use procpool::{JobError, Pool};

procpool::test_harness!();

fn inputs(text: &str, n: u64, bad: u64, crashes: usize) -> Vec<(String, u64, u64, usize)> {
    (0..n).map(|i| (text.to_owned(), i, bad, crashes)).collect()
}

#[test]
fn one_crash_in_a_chunk_fails_only_the_input_that_was_running() {
    let pool = Pool::builder().processes(2).build().unwrap();
    let path = scratch_dir("chunks-one-crash").join("ledger");
    let text = path.to_string_lossy().into_owned();
    // 1,000 inputs in default chunks (125 each on 2 workers): input 437 aborts.
    let outcomes = pool
        .map_results(ledger_abort, inputs(&text, 1000, 437, usize::MAX))
        .unwrap();
    let starts = ledger_starts(&path);
    for (i, outcome) in outcomes.iter().enumerate() {
        let i = i as u64;
        if i == 437 {
            assert!(
                matches!(
                    outcome,
                    Err(JobError::WorkerLost {
                        exitcode: -6,
                        attempts: 1,
                        ..
                    })
                ),
                "{outcome:?}"
            );
        } else {
            assert_eq!(outcome, &Ok(i), "input {i}");
        }
        assert_eq!(starts.get(&i), Some(&1), "input {i} started once");
    }
    close_and_check(pool);
}

#[test]
fn with_retries_the_input_that_was_running_runs_again_and_nothing_else_does() {
    let pool = Pool::builder().processes(2).retries(2).build().unwrap();
    let path = scratch_dir("chunks-retry").join("ledger");
    let text = path.to_string_lossy().into_owned();
    // Input 70 aborts the first time only.
    let values = pool
        .map_chunked(ledger_abort, inputs(&text, 200, 70, 1), 50)
        .unwrap();
    assert_eq!(values, (0..200).collect::<Vec<u64>>());
    let starts = ledger_starts(&path);
    for i in 0..200u64 {
        let expected = if i == 70 { 2 } else { 1 };
        assert_eq!(starts.get(&i), Some(&expected), "starts of input {i}");
    }
    close_and_check(pool);
}

#[test]
fn crashes_at_the_start_and_end_of_chunks_lose_nothing_else() {
    let pool = Pool::builder().processes(1).build().unwrap();
    for bad in [0u64, 9, 10, 19] {
        let path = scratch_dir(&format!("chunks-edge-{bad}")).join("ledger");
        let text = path.to_string_lossy().into_owned();
        let outcomes = pool
            .map_results_chunked(ledger_abort, inputs(&text, 20, bad, usize::MAX), 10)
            .unwrap();
        let starts = ledger_starts(&path);
        for (i, outcome) in outcomes.iter().enumerate() {
            let i = i as u64;
            match outcome {
                Ok(v) => assert_eq!(*v, i),
                Err(JobError::WorkerLost { .. }) => assert_eq!(i, bad, "input {i} lost"),
                other => panic!("input {i}: {other:?}"),
            }
            assert_eq!(
                starts.get(&i),
                Some(&1),
                "bad {bad}: input {i} started once"
            );
        }
    }
    close_and_check(pool);
}

#[test]
fn the_same_holds_for_inputs_encoded_one_by_one() {
    // imap_encoded sends each argument encoded on its own (what the CLI does).
    let pool = Pool::builder().processes(1).build().unwrap();
    let path = scratch_dir("chunks-encoded").join("ledger");
    let text = path.to_string_lossy().into_owned();
    let encoded: Vec<Vec<u8>> = inputs(&text, 30, 12, usize::MAX)
        .iter()
        .map(|a| procpool::Codec::Bincode.encode(a).unwrap())
        .collect();
    let outcomes: Vec<_> = pool
        .imap_encoded("ledger_abort", procpool::Codec::Bincode, encoded, true)
        .chunksize(10)
        .collect();
    assert_eq!(outcomes.len(), 30);
    let starts = ledger_starts(&path);
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let i = i as u64;
        if i == 12 {
            assert!(
                matches!(outcome, Err(JobError::WorkerLost { .. })),
                "{outcome:?}"
            );
        } else {
            let bytes = outcome.unwrap_or_else(|e| panic!("input {i}: {e:?}"));
            assert_eq!(procpool::Codec::Bincode.decode::<u64>(&bytes), Ok(i));
        }
        assert_eq!(starts.get(&i), Some(&1), "input {i} started once");
    }
    close_and_check(pool);
}
