//! Two jobs of one name that `#[job]` cannot see together (as when two crates each
//! define one) are caught by the test that `procpool::test_harness!()` adds, naming
//! both functions. The second job here is registered by hand, as another crate's
//! `#[job]` would register it; this binary has no harness, since its test would fail.

use procpool::{Job, JobEntry};

#[procpool::job]
fn process(x: u64) -> u64 {
    x
}

/// Another crate's `process`, as its `#[job]` would register it.
#[derive(Clone, Copy)]
struct OtherCratesProcess;

impl Job for OtherCratesProcess {
    type Input = u64;
    type Output = u64;
    const NAME: &'static str = "process";
    const PATH: &'static str = "other_crate::process";
    fn run(input: u64) -> Result<u64, String> {
        Ok(input + 1)
    }
}

procpool::__private::inventory::submit! {
    JobEntry::of::<OtherCratesProcess>()
}

#[test]
fn the_harness_check_names_both_functions_of_a_shared_name() {
    let caught = std::panic::catch_unwind(procpool::__private::assert_unique_job_names)
        .expect_err("two jobs named `process` are caught");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("`process`"), "{message}");
    assert!(
        message.contains("duplicate_job_names::process"),
        "{message}"
    );
    assert!(message.contains("other_crate::process"), "{message}");
    assert!(message.contains("#[procpool::job(name"), "{message}");
    assert_eq!(process(2), 2);
}
