//! Shared by the integration tests. Every test binary that includes this module also
//! invokes `procpool::test_harness!()`, so the test binary itself is the worker
//! executable (the `init()` path, with the harness owning `main`).

#![allow(dead_code, unused_imports)]

mod jobs;
mod process;

pub use jobs::*;
pub use process::*;
