//! The `procpool` command: runs registered jobs over JSON lines, the way one would
//! reach for `xargs -P` or GNU parallel, with procpool's guarantees: one record per
//! input, crashes contained, clean Ctrl-C, no stray workers.
//!
//! ```text
//! procpool jobs                                  # the built-in jobs
//! seq 1 1000 | procpool run square > out.jsonl   # one result record per input line
//! procpool run my_job --worker my-worker         # jobs of your own program
//! ```
//!
//! This program is also its own default worker: a pool it starts runs this same
//! executable, which serves the built-in jobs (`builtin`) from `procpool::init()`.
//!
//! `cli` holds the arguments, `worker` finds the worker executable, `input` reads the
//! input lines, `jobs` and `run` are the two commands, `records` the output format and
//! `interrupt` Ctrl-C handling.

mod builtin;
mod cli;
mod input;
mod interrupt;
mod jobs;
mod records;
mod run;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Started by a pool as a worker: serve the built-in jobs and exit.
    procpool::init();
    let cli = cli::Cli::parse();
    if cli.verbose > 0 {
        let level = match cli.verbose {
            1 => "info",
            2 => "debug",
            _ => "trace",
        };
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .init();
    }
    let outcome = match &cli.command {
        cli::Command::Jobs(args) => jobs::jobs(args),
        cli::Command::Run(args) => run::run(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("procpool: {e}");
        ExitCode::from(2)
    })
}
