//! The `procpool` command: runs a worker executable's registered jobs over JSON lines,
//! the way one would reach for `xargs -P` or GNU parallel, with procpool's guarantees:
//! one record per input, crashes contained, clean Ctrl-C, no stray workers.
//!
//! ```text
//! procpool jobs                                  # what the default worker offers
//! seq 1 1000 | procpool run square > out.jsonl   # one result record per input line
//! ```
//!
//! `cli` holds the arguments, `run` the two commands, `records` the output format and
//! `interrupt` Ctrl-C handling.

mod cli;
mod interrupt;
mod records;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.verbose > 0 {
        let level = match cli.verbose {
            1 => "info",
            2 => "debug",
            _ => "trace",
        };
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .init();
    }
    let outcome = match &cli.command {
        cli::Command::Jobs(args) => run::jobs(args),
        cli::Command::Run(args) => run::run(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("procpool: {e}");
        ExitCode::from(2)
    })
}
