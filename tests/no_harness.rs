//! A test binary that forgot `procpool::test_harness!()`: its pools cannot start
//! workers (the harness owns `main`, so nothing serves), and the error says what to add.

#[procpool::job]
fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn a_pool_in_a_test_binary_without_the_harness_macro_says_to_add_it() {
    let built = procpool::Pool::builder()
        .processes(1)
        .max_start_failures(1)
        .build();
    // In the worker this very test runs again (the harness is its main) and is told
    // it was started as a worker; either way the message points at the macro.
    let message = match built {
        Ok(_) => panic!("a pool started without anything serving its jobs"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("procpool::test_harness!()"), "{message}");
    let _ = square;
}
