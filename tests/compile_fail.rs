//! Mistakes with `#[job]` are reported at the user's code, saying what to do instead:
//! a borrowed argument or result, a closure passed as a job, two jobs of one name.
//! Each case is a small program under `tests/ui/` with the compiler's expected output
//! beside it (`TRYBUILD=overwrite cargo test --test compile_fail` rewrites them after
//! a deliberate change of message).

#[test]
fn job_mistakes_are_explained_at_the_users_code() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
