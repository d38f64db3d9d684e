//! Everything that runs inside a procpool worker process.
//!
//! A worker is an executable that contains registered jobs and, when a supervisor
//! starts it, serves them: it announces its jobs, then runs the tasks it is sent, one
//! at a time, in order, until its stream closes. This crate knows nothing about pools;
//! `pool-core` is the supervisor's side.
//!
//! - [`Job`] and [`JobEntry`]: what `#[job]` generates and the registry collects;
//!   a job's description and argument names come with it, and its JSON shapes are
//!   traced from its types' `Deserialize` (`shape`) when `procpool jobs` asks.
//! - [`Registry`]: every job linked into this executable, in wire order.
//! - [`protocol`]: the frames and messages on a worker's stream.
//! - [`payload`]: large arguments and results in shared memory instead of the stream:
//!   the supervisor's reused regions, or a worker's sealed memfd.
//! - [`slots`]: the shared page that settles whether a task sent ahead starts here or
//!   is taken back by the supervisor.
//! - [`serve_if_worker`]: the serve loop; `procpool::init()` calls it.
//!
//! A separate worker executable links the crates that define the jobs, and its `main`
//! is this (the `procpool` command is one, with its built-in jobs):
//!
//! ```no_run
//! pool_worker::serve_if_worker(); // serves, then exits, when a supervisor started us
//! eprintln!("this program is a procpool worker; a supervisor starts it");
//! std::process::exit(2);
//! ```
//!
//! Panics inside a job are caught and reported as such, so a job must not be built
//! with `panic = "abort"` if its panics are to be told from crashes.

// Unsafe code lives in `sys` alone, where each block says why it holds.
#![deny(unsafe_code)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "procpool runs on Linux only: it needs memfd, PR_SET_PDEATHSIG, futexes and \
     close_range (Linux 5.9 or later)"
);

mod bounded;
mod codec;
mod job;
pub mod journal;
mod panic_hook;
pub mod payload;
pub mod protocol;
mod serve;
mod shape;
pub mod slots;
#[allow(unsafe_code)]
mod sys;
mod zygote;

pub use codec::Codec;
pub use job::{Job, JobEntry, Registry, panic_message};
pub use serve::{launched_as_worker, missing_init, serve_if_worker};

/// Process plumbing shared by the supervisor and the fork server: forking a worker,
/// reaping children with their resource usage. Not part of the job API.
pub mod os {
    pub use crate::panic_hook::install as prepare_fork;
    pub use crate::sys::{ForkedWorker, Reaped, SharedMemory, become_forked_worker, fork, reap};
    pub use crate::zygote::{recv as recv_datagram, send as send_datagram};
}

/// Used by the code that `#[job]` generates; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
