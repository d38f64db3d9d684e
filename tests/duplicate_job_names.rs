//! Two jobs of one name that `#[job]` cannot see together, as when two crates each
//! define one: a pool refuses such workers at `build()`, naming both functions and
//! how to rename one. (`#[job]` refuses the same name twice in one crate as it
//! compiles: see tests/ui/duplicate_job_name.rs.) The second job here is registered by
//! hand, as another crate's `#[job]` would register it.

use procpool::{Job, JobEntry};

procpool::test_harness!();

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
fn a_pool_refuses_workers_with_two_jobs_of_one_name_naming_both() {
    let message = match procpool::Pool::builder().processes(1).build() {
        Ok(_) => panic!("a pool started with two jobs named `process`"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("`process`"), "{message}");
    assert!(
        message.contains("duplicate_job_names::process"),
        "{message}"
    );
    assert!(message.contains("other_crate::process"), "{message}");
    assert!(message.contains("#[job(name"), "{message}");
    assert_eq!(process(2), 2);
}
