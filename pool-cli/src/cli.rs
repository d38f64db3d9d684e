//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run registered jobs in a pool of worker processes, over JSON lines.
///
/// Like `xargs -P` or GNU parallel, but each input is a job argument and each output a
/// JSON record; a worker that crashes fails only its own input; Ctrl-C stops cleanly.
#[derive(Debug, Parser)]
#[command(
    name = "procpool",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        procpool jobs\n  \
        seq 1 1000 | procpool run square > squares.jsonl\n  \
        procpool run hash_file --input books.jsonl --workers 4 --timeout 60 --retries 1\n\n\
        Input lines are JSON job arguments (`12`, `{\"path\": \"book.txt\"}`, `[1, 2]` for a \
        job of two arguments)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log what the pool does on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the jobs a worker executable offers, with argument and result types.
    Jobs(JobsArgs),
    /// Run a job over JSON lines: one argument per input line, one record per output line.
    ///
    /// Each output line is `{"index": i, "ok": value}` or
    /// `{"index": i, "error": {"kind": ..., "message": ...}}`, where `i` is the input
    /// line's 0-based index. Exit status: 0 if every input succeeded, 1 if some failed,
    /// 2 for a usage or setup error, 130 after Ctrl-C.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Worker executable. Default: the `pool-worker` next to this program.
    #[arg(long, value_name = "PATH")]
    pub worker: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the job to run (see `procpool jobs`).
    pub job: String,

    /// JSON lines to read, one job argument per line; `-` is standard input.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub input: PathBuf,

    /// Where to write the result records; `-` is standard output.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,

    /// Number of worker processes. Default: the number of CPUs.
    #[arg(short, long, value_name = "N")]
    pub workers: Option<usize>,

    /// Inputs sent to a worker at once (larger is faster for tiny jobs; a crash fails
    /// the whole chunk).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub chunksize: usize,

    /// Time limit per task in seconds; a task past it fails with `Timeout` and its
    /// worker is replaced.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Re-run an input whose worker died (crash, kill) up to N times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Write records as tasks finish instead of in input order.
    #[arg(long)]
    pub unordered: bool,

    /// Worker executable. Default: the `pool-worker` next to this program.
    #[arg(long, value_name = "PATH")]
    pub worker: Option<PathBuf>,

    /// No progress bar and no summary line unless something failed.
    #[arg(short, long)]
    pub quiet: bool,
}
