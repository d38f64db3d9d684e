//! Ctrl-C. The first stops the run: no more inputs are read, the pool is terminated,
//! and what finished is written before exiting with 130. A second one exits at once.
//! Workers ignore SIGINT themselves, so it is this process that decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use procpool::Pool;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler for `pool`.
pub fn install(pool: Arc<Pool>) -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(move || {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // Workers die with this process (PR_SET_PDEATHSIG), so leaving is safe.
            std::process::exit(130);
        }
        pool.terminate();
    })
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
