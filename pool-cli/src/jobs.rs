//! `procpool jobs`: what each job of a worker takes and returns, as the JSON a person
//! types, and what it does.

use std::io::{self, Write};
use std::process::ExitCode;

use procpool::{JobInfo, TaskOptions};

use crate::cli::JobsArgs;
use crate::run::{CliError, setup};
use crate::worker;

/// Lists the worker's jobs, two lines each:
///
/// ```text
/// sleep       int (ms) -> int
///             Sleeps ms milliseconds, like waiting for I/O, and returns ms.
/// ```
pub fn jobs(args: &JobsArgs) -> Result<ExitCode, CliError> {
    let worker = worker::find(args.worker.as_deref())?;
    let pool = worker::start_pool(&worker, 1, TaskOptions::default(), true)?;
    let mut out = io::stdout().lock();
    write!(out, "{}", listing(pool.jobs()))?;
    out.flush()?;
    pool.close();
    pool.join().map_err(|e| setup(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

fn listing(jobs: &[JobInfo]) -> String {
    let width = jobs.iter().map(|j| j.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for job in jobs {
        // A worker that does not describe its jobs (another procpool version) still
        // says their Rust types.
        let input = if job.input.is_empty() {
            &job.input_type
        } else {
            &job.input
        };
        let output = if job.output.is_empty() {
            &job.output_type
        } else {
            &job.output
        };
        text.push_str(&format!("{:width$}  {input} -> {output}\n", job.name));
        if !job.description.is_empty() {
            text.push_str(&format!("{:width$}  {}\n", "", job.description));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_is_its_json_then_its_description() {
        let info = |name: &str, input: &str, description: &str| JobInfo {
            name: name.into(),
            input_type: "u64".into(),
            output_type: "u64".into(),
            input: input.into(),
            output: "int".into(),
            description: description.into(),
            path: String::new(),
        };
        let text = listing(&[
            info("sleep", "int (ms)", "Sleeps ms milliseconds."),
            info("cpu_bound", "", ""),
        ]);
        assert_eq!(
            text,
            "sleep      int (ms) -> int\n           Sleeps ms milliseconds.\n\
             cpu_bound  u64 -> int\n"
        );
    }
}
