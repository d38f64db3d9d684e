//! A job handle whose name exists in the worker with other types is refused at
//! submit, naming both signatures. (Its own binary: a second `square` would clash
//! with the shared test jobs' one in the registry.)

use procpool::JobError;

/// Same name as the procpool command's built-in `square(u64) -> u64`, other types.
#[procpool::job]
fn square(x: i32) -> i32 {
    x * x
}

#[path = "common/process.rs"]
#[allow(dead_code)]
mod common_paths;

#[test]
fn a_job_with_other_types_is_refused_at_submit() {
    let pool = common_paths::builtin_worker_pool(1);
    match pool.apply_async(square, 3) {
        Err(JobError::UnknownJob { name, detail }) => {
            assert_eq!(name, "square");
            assert!(detail.contains("i32") && detail.contains("u64"), "{detail}");
        }
        other => panic!("expected UnknownJob for mismatched types, got {other:?}"),
    }
    common_paths::close_and_check(pool);
}
