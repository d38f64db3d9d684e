//! The default worker executable: the built-in jobs, served to whichever supervisor
//! starts it (the `procpool` command, or a pool built with `.worker_executable(..)`).
//! The jobs live here, in the binary, not in the library: a program that links
//! `pool-worker` for its own jobs must not find these in its registry as well.

mod builtin;

fn main() {
    pool_worker::serve_if_worker();
    eprintln!(
        "pool-worker serves jobs to a procpool supervisor and is not meant to be run by hand \
         (try `procpool jobs` to list its jobs)"
    );
    std::process::exit(2);
}
