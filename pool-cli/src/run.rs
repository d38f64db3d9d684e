//! `procpool run`: a job over every input line, one record per line.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use procpool::{Codec, JobError, TaskOptions};

use crate::cli::RunArgs;
use crate::input::{self, Feed, FeedState};
use crate::interrupt;
use crate::records::{Outcome, Records, Tally, plural};
use crate::worker;

/// A usage or setup problem: the message says what to fix. Exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Setup(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

pub fn setup(message: impl Into<String>) -> CliError {
    CliError::Setup(message.into())
}

fn open_output(path: &Path) -> Result<Box<dyn Write>, CliError> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(io::stdout())));
    }
    let file = File::create(path)
        .map_err(|e| setup(format!("cannot create output {}: {e}", path.display())))?;
    Ok(Box::new(BufWriter::new(file)))
}

fn progress_bar(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::new(n),
            "{bar:40} {pos}/{len} done, {msg}, {rate}, eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} done, {msg}, {rate}",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(state.per_sec()));
            },
        ));
    }
    bar
}

/// Inputs per second, to three significant digits at most (`8.92/s`, `1234/s`).
fn rate(per_sec: f64) -> String {
    let decimals = match per_sec {
        r if r >= 100.0 => 0,
        r if r >= 10.0 => 1,
        _ => 2,
    };
    format!("{per_sec:.decimals$}/s")
}

fn task_options(args: &RunArgs) -> TaskOptions {
    let options = TaskOptions::default().retries(args.retries);
    match args.timeout {
        Some(limit) => options.timeout(limit),
        None => options,
    }
}

/// `procpool run`.
pub fn run(args: &RunArgs) -> Result<ExitCode, CliError> {
    if args.chunksize == 0 {
        return Err(setup("--chunksize must be at least 1"));
    }
    let options = task_options(args);
    let processes = match args.workers {
        Some(0) => return Err(setup("--workers must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let worker = worker::find(args.worker.as_deref())?;
    let input = input::open(&args.input)?;
    let mut records = Records::new(open_output(&args.output)?, !args.unordered);

    let pool = Arc::new(worker::start_pool(&worker, processes, options, false)?);
    if !pool.jobs().iter().any(|j| j.name == args.job) {
        return Err(setup(format!(
            "{} has no job `{}`; `procpool jobs{}` lists the jobs it has",
            worker.display(),
            args.job,
            match &args.worker {
                Some(w) => format!(" --worker {}", w.display()),
                None => String::new(),
            }
        )));
    }
    interrupt::install(pool.clone()).map_err(|e| setup(format!("cannot handle Ctrl-C: {e}")))?;

    let bar = progress_bar(input.lines, args.quiet);
    let state = Rc::new(RefCell::new(FeedState::default()));
    let feed = Feed::new(input.reader, state.clone());
    let results = pool
        .imap_encoded(&args.job, Codec::Json, feed, false)
        .chunksize(args.chunksize)
        .with_positions();
    for (sent, result) in results {
        for (index, outcome) in state.borrow_mut().rejected.drain(..) {
            records.add(index, outcome)?;
            bar.inc(1);
        }
        let Some(index) = state.borrow_mut().lines.remove(&sent) else {
            tracing::error!(sent, "a result for an input that was never sent");
            continue;
        };
        let outcome = match result {
            // Cut short by Ctrl-C: not a result, so no record.
            Err(JobError::Terminated) if interrupt::interrupted() => continue,
            Ok(json) => Outcome::Ok(json),
            Err(e @ JobError::Codec { .. }) => Outcome::Err {
                kind: e.kind().into(),
                message: input::locate_decode_error(&e.to_string(), index + 1),
            },
            Err(e) => Outcome::Err {
                kind: e.kind().into(),
                message: e.to_string(),
            },
        };
        records.add(index, outcome)?;
        bar.inc(1);
        bar.set_message(format!("{} failed", records.tally.failed()));
    }
    for (index, outcome) in state.borrow_mut().rejected.drain(..) {
        records.add(index, outcome)?;
    }
    records.finish()?;
    bar.finish_and_clear();
    if let Some(e) = state.borrow_mut().read_error.take() {
        return Err(setup(format!(
            "error reading {}: {e}",
            args.input.display()
        )));
    }

    if interrupt::interrupted() {
        let read = state.borrow().read as u64;
        eprintln!(
            "procpool: {}",
            interrupted_summary(&records.tally, read, input.lines)
        );
        return Ok(ExitCode::from(130));
    }
    pool.close();
    pool.join().map_err(|e| setup(e.to_string()))?;
    if records.tally.failed() > 0 {
        eprintln!("procpool: {}", records.tally.summary());
        return Ok(ExitCode::from(1));
    }
    if !args.quiet {
        eprintln!("procpool: {}", records.tally.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary after Ctrl-C: what was done, and how many inputs were not run (all the
/// rest, when the input's length is known; otherwise those read and not run, and that
/// the rest was not read).
fn interrupted_summary(tally: &Tally, read: u64, lines: Option<u64>) -> String {
    let done = tally.total();
    let outcome = if done == 0 {
        String::new()
    } else {
        format!(" ({})", tally.outcome())
    };
    match lines {
        Some(total) => format!(
            "interrupted: {done} of {} done{outcome}, {} not run",
            plural(total, "input"),
            total.saturating_sub(done)
        ),
        None => format!(
            "interrupted: {} done{outcome}, {} read but not run, the rest of the input not read",
            plural(done, "input"),
            read.saturating_sub(done)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_have_three_significant_digits_at_most() {
        assert_eq!(rate(8.923_123), "8.92/s");
        assert_eq!(rate(12.345), "12.3/s");
        assert_eq!(rate(1234.4), "1234/s");
        assert_eq!(rate(0.0), "0.00/s");
    }

    #[test]
    fn an_interrupted_run_says_how_many_inputs_were_not_run() {
        let tally = Tally {
            ok: 28,
            ..Tally::default()
        };
        assert_eq!(
            interrupted_summary(&tally, 32, Some(100)),
            "interrupted: 28 of 100 inputs done (all succeeded), 72 not run"
        );
        assert_eq!(
            interrupted_summary(&tally, 32, None),
            "interrupted: 28 inputs done (all succeeded), 4 read but not run, \
             the rest of the input not read"
        );
        assert_eq!(
            interrupted_summary(&Tally::default(), 0, Some(1)),
            "interrupted: 0 of 1 input done, 1 not run"
        );
    }
}
