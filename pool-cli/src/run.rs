//! `procpool run` and `procpool jobs`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pool_core::{Codec, JobError, Pool, TaskOptions};
use serde_json::value::RawValue;

use crate::cli::{JobsArgs, RunArgs};
use crate::interrupt;
use crate::records::{Outcome, Records};

/// A usage or setup problem: the message says what to fix. Exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Setup(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

fn setup(message: impl Into<String>) -> CliError {
    CliError::Setup(message.into())
}

/// The worker executable: the one given, or `pool-worker` next to this program.
fn worker_path(given: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(path) = given {
        if !path.is_file() {
            return Err(setup(format!(
                "worker executable {} does not exist",
                path.display()
            )));
        }
        return Ok(path.to_owned());
    }
    let candidate = std::env::current_exe()?.with_file_name("pool-worker");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(setup(format!(
            "cannot find the pool-worker executable at {}; build it with \
             `cargo build -p pool-worker` or pass --worker PATH",
            candidate.display()
        )))
    }
}

fn start_pool(worker: &Path, processes: usize, options: TaskOptions) -> Result<Pool, CliError> {
    let mut builder = Pool::builder()
        .processes(processes)
        .worker_executable(worker)
        .retries(options.retries);
    if let Some(limit) = options.timeout {
        builder = builder.task_timeout(limit);
    }
    builder.build().map_err(|e| {
        setup(format!(
            "cannot start workers from {}: {e}",
            worker.display()
        ))
    })
}

/// `procpool jobs`: one line per job, with its argument and result types.
pub fn jobs(args: &JobsArgs) -> Result<ExitCode, CliError> {
    let worker = worker_path(args.worker.as_deref())?;
    let pool = start_pool(&worker, 1, TaskOptions::default())?;
    let width = pool.jobs().iter().map(|j| j.name.len()).max().unwrap_or(0);
    let mut out = io::stdout().lock();
    for job in pool.jobs() {
        writeln!(
            out,
            "{:width$}  {} -> {}",
            job.name, job.input_type, job.output_type
        )?;
    }
    pool.close();
    pool.join().map_err(|e| setup(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// What the input feed shares with the loop that writes records.
#[derive(Default)]
struct FeedState {
    /// Input line of each argument sent, by its position among the arguments sent.
    lines: HashMap<usize, usize>,
    /// Lines that are not JSON: they become error records without being sent.
    rejected: Vec<(usize, Outcome)>,
    read_error: Option<io::Error>,
}

/// Reads input lines lazily; hands valid JSON on to the pool, sets bad lines aside.
struct Feed<R> {
    input: R,
    next_line: usize,
    next_sent: usize,
    state: Rc<RefCell<FeedState>>,
}

impl<R: BufRead> Iterator for Feed<R> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if interrupt::interrupted() {
                return None;
            }
            let mut line = Vec::new();
            match self.input.read_until(b'\n', &mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.state.borrow_mut().read_error = Some(e);
                    return None;
                }
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            let index = self.next_line;
            self.next_line += 1;
            let mut state = self.state.borrow_mut();
            match check_json(&line) {
                Ok(()) => {
                    state.lines.insert(self.next_sent, index);
                    self.next_sent += 1;
                    return Some(line);
                }
                Err(message) => state.rejected.push((
                    index,
                    Outcome::Err {
                        kind: "InvalidInput".into(),
                        message: format!("line {}: {message}", index + 1),
                    },
                )),
            }
        }
    }
}

fn check_json(line: &[u8]) -> Result<(), String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err("empty line; expected one JSON value".into());
    }
    serde_json::from_slice::<&RawValue>(line)
        .map(|_| ())
        .map_err(|e| format!("not JSON: {e}"))
}

fn open_input(path: &Path) -> Result<(Box<dyn BufRead>, Option<u64>), CliError> {
    if path == Path::new("-") {
        return Ok((Box::new(BufReader::new(io::stdin())), None));
    }
    let open = || {
        File::open(path).map_err(|e| setup(format!("cannot open input {}: {e}", path.display())))
    };
    // A file can be counted first, so the progress bar knows its length.
    let lines = count_lines(open()?)?;
    Ok((Box::new(BufReader::new(open()?)), Some(lines)))
}

fn count_lines(mut file: File) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
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
            "{bar:40} {pos}/{len} done, {msg}, {per_sec}, eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} {msg} {per_sec}",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn task_options(args: &RunArgs) -> Result<TaskOptions, CliError> {
    let mut options = TaskOptions::default().retries(args.retries);
    if let Some(secs) = args.timeout {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(setup(format!(
                "--timeout must be a positive number of seconds, not {secs}"
            )));
        }
        options = options.timeout(Duration::from_secs_f64(secs));
    }
    Ok(options)
}

/// `procpool run`.
pub fn run(args: &RunArgs) -> Result<ExitCode, CliError> {
    if args.chunksize == 0 {
        return Err(setup("--chunksize must be at least 1"));
    }
    let options = task_options(args)?;
    let processes = match args.workers {
        Some(0) => return Err(setup("--workers must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let worker = worker_path(args.worker.as_deref())?;
    let (input, total) = open_input(&args.input)?;
    let mut records = Records::new(open_output(&args.output)?, !args.unordered);

    let pool = Arc::new(start_pool(&worker, processes, options)?);
    if !pool.jobs().iter().any(|j| j.name == args.job) {
        return Err(setup(format!(
            "{} has no job `{}`; `procpool jobs` lists the jobs it has",
            worker.display(),
            args.job
        )));
    }
    interrupt::install(pool.clone()).map_err(|e| setup(format!("cannot handle Ctrl-C: {e}")))?;

    let bar = progress_bar(total, args.quiet);
    let state = Rc::new(RefCell::new(FeedState::default()));
    let feed = Feed {
        input,
        next_line: 0,
        next_sent: 0,
        state: state.clone(),
    };
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
        eprintln!("procpool: interrupted; {}", records.tally.summary());
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
