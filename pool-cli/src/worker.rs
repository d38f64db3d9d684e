//! Which program serves the jobs: this one (it carries the built-in jobs), or the one
//! given with `--worker`, as a path or as a name on `PATH` (like a shell finds it).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use procpool::{Pool, TaskOptions};

use crate::run::{CliError, setup};

/// The worker executable for `given` (`None`: this program).
pub fn find(given: Option<&Path>) -> Result<PathBuf, CliError> {
    let Some(given) = given else {
        return std::env::current_exe()
            .map_err(|e| setup(format!("cannot find this program's own path: {e}")));
    };
    if given.components().count() == 1 && !given.as_os_str().is_empty() {
        if let Some(found) = on_path(given.as_os_str()) {
            return Ok(found);
        }
        return Err(setup(format!(
            "no executable named {} on PATH (for a file in this directory, write ./{})",
            given.display(),
            given.display()
        )));
    }
    if !given.is_file() {
        return Err(setup(format!(
            "worker executable {} does not exist",
            given.display()
        )));
    }
    Ok(given.to_owned())
}

/// The first executable file named `name` in the directories of `PATH`.
fn on_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A pool of `processes` workers of `worker`; `describe` asks them for their jobs'
/// JSON shapes (only `procpool jobs` needs them).
pub fn start_pool(
    worker: &Path,
    processes: usize,
    options: TaskOptions,
    describe: bool,
) -> Result<Pool, CliError> {
    let mut builder = Pool::builder()
        .processes(processes)
        .worker_executable(worker)
        .retries(options.retries);
    if describe {
        builder = builder.worker_env(procpool::ENV_DESCRIBE_JOBS, "1");
    }
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
