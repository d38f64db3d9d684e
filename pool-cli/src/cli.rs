//! The command line, as clap parses it.

use std::path::PathBuf;
use std::time::Duration;

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
        procpool run hash_file --input books.jsonl --workers 4 --timeout 60 --retries 1\n  \
        procpool run my_job --worker target/release/my-worker < inputs.jsonl\n\n\
        Input lines are JSON job arguments (`12`, `{\"path\": \"book.txt\"}`, `[1, 2]` for a \
        job of two arguments); `procpool jobs` shows what each job takes."
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
    /// List the jobs a worker offers: the JSON each takes and returns, and what it does.
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
    /// Worker executable: a path, or a name looked up on PATH. Default: this program,
    /// with its built-in jobs.
    #[arg(long, value_name = "PROGRAM")]
    pub worker: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the job to run (see `procpool jobs`).
    pub job: String,

    /// JSON lines to read, one job argument per line: a file, a pipe or a FIFO; `-` is
    /// standard input.
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
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Re-run an input whose worker died (crash, kill) up to N times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Write records as tasks finish instead of in input order.
    #[arg(long)]
    pub unordered: bool,

    /// Worker executable: a path, or a name looked up on PATH. Default: this program,
    /// with its built-in jobs.
    #[arg(long, value_name = "PROGRAM")]
    pub worker: Option<PathBuf>,

    /// No progress bar and no summary line unless something failed.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `--timeout`: a positive, finite number of seconds that a `Duration` can hold.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("must be a positive number of seconds, not {text}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text} seconds is too long a time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_positive_finite_and_in_range() {
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "abc", "1e30"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
