//! Jobs and the registry that lets a worker find one by name.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{Codec, OutcomesWriter};
use crate::journal::TaskLog;
use crate::payload::{Encoded, SpillTo};
use crate::protocol::{ENV_DESCRIBE_JOBS, ItemFailure, JobInfo, Outcome};
use crate::shape;

/// A function that can run in a worker process.
///
/// Implemented by the unit struct that `#[job]` puts in place of a function; call sites
/// pass that struct (`pool.map(square, ..)`) and only the job's name crosses to the
/// worker. Write `#[job]` rather than implementing this by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a procpool job",
    label = "not a function marked `#[procpool::job]`",
    note = "a pool runs a job in another process and finds it there by name: mark a \
            function with `#[procpool::job]` and pass that function's name \
            (`pool.map(square, inputs)`); a closure or an unmarked function cannot \
            cross to a worker"
)]
pub trait Job: Copy + Send + Sync + 'static {
    /// The argument (a tuple when the function takes several).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The value of a successful call.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The name the registry knows the job by (the function's name unless renamed).
    const NAME: &'static str;
    /// The first paragraph of the function's doc comment, on one line (`procpool
    /// jobs` shows it); empty without one.
    const DESCRIPTION: &'static str = "";
    /// The function's argument names, in order (shown beside the argument's shape).
    const ARGUMENTS: &'static [&'static str] = &[];
    /// The Rust path of the function (`my_app::jobs::square`), to tell apart two jobs
    /// given one name.
    const PATH: &'static str = "";
    /// Runs the job here, in this process; `Err` carries the job's error as text.
    fn run(input: Self::Input) -> Result<Self::Output, String>;
}

/// One registered job, as collected from every `#[job]` linked into the executable.
pub struct JobEntry {
    name: &'static str,
    description: &'static str,
    path: &'static str,
    input_type: fn() -> &'static str,
    output_type: fn() -> &'static str,
    shapes: fn() -> (String, String),
    call: fn(Codec, &[u8]) -> Outcome,
    call_batch: CallBatch,
}

inventory::collect!(JobEntry);

impl JobEntry {
    /// The entry for job `J`; `#[job]` submits one of these to the registry.
    pub const fn of<J: Job>() -> Self {
        JobEntry {
            name: J::NAME,
            description: J::DESCRIPTION,
            path: J::PATH,
            input_type: std::any::type_name::<J::Input>,
            output_type: std::any::type_name::<J::Output>,
            shapes: shapes::<J>,
            call: call_job::<J>,
            call_batch: call_batch::<J>,
        }
    }

    /// The job's registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the worker announces about this job in its handshake (its JSON shapes only
    /// when [`ENV_DESCRIBE_JOBS`] is set).
    pub fn info(&self) -> JobInfo {
        static DESCRIBE: OnceLock<bool> = OnceLock::new();
        let describe = *DESCRIBE.get_or_init(|| std::env::var_os(ENV_DESCRIBE_JOBS).is_some());
        let (input, output) = if describe {
            (self.shapes)()
        } else {
            (String::new(), String::new())
        };
        JobInfo {
            name: self.name.to_owned(),
            input_type: (self.input_type)().to_owned(),
            output_type: (self.output_type)().to_owned(),
            input,
            output,
            description: self.description.to_owned(),
            path: self.path.to_owned(),
        }
    }

    /// Decodes one argument, runs the job, encodes its result; never panics.
    pub fn call(&self, codec: Codec, argument: &[u8]) -> Outcome {
        (self.call)(codec, argument)
    }

    /// Runs a bincode batch of arguments (a `Vec` of the job's argument type) and
    /// returns the encoded `BatchOutcomes<Output>` (large ones written where `out`
    /// says), or why the batch as a whole did not decode or its outcomes did not
    /// encode. Each argument is decoded as its turn comes, and each value encoded as
    /// it is returned, so neither is held all at once. Never panics.
    pub(crate) fn call_batch(
        &self,
        batch: &[u8],
        from: u32,
        out: SpillTo,
        log: Option<&mut TaskLog<'_>>,
    ) -> Result<Encoded, String> {
        (self.call_batch)(batch, from, out, log)
    }
}

/// The JSON shapes of a job's argument (with the argument names) and result; a Rust
/// type name where a type cannot be traced.
fn shapes<J: Job>() -> (String, String) {
    // A type's `Deserialize` is user code, fed placeholders here: one that panics on
    // them is shown by its type name, like one that refuses them.
    let traced = |trace: fn() -> Option<shape::Shape>| catch_unwind(trace).ok().flatten();
    let input = traced(shape::trace::<J::Input>).map_or_else(
        || std::any::type_name::<J::Input>().to_owned(),
        |s| s.render_arguments(J::ARGUMENTS),
    );
    let output = traced(shape::trace::<J::Output>).map_or_else(
        || std::any::type_name::<J::Output>().to_owned(),
        |s| s.render(),
    );
    (input, output)
}

/// Longest error text kept from a decoder: serde echoes a bad string whole
/// (`invalid type: string "..."`), and an input can be megabytes long.
const MAX_ERROR_TEXT: usize = 300;

/// `text`, at most about 300 bytes (`MAX_ERROR_TEXT`): its middle is cut out (at character
/// boundaries) and replaced by a note of how much, so that both its start and its end
/// (where serde_json says the position) stay.
fn capped(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let mut head = MAX_ERROR_TEXT * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - MAX_ERROR_TEXT / 3;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}...({} bytes cut)...{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// A job's batch runner: encoded arguments, where to start in them, where large
/// outcomes go, who is told of each outcome.
type CallBatch = fn(&[u8], u32, SpillTo, Option<&mut TaskLog<'_>>) -> Result<Encoded, String>;

/// Runs the batch's arguments from place `from` on (the ones before ran already, on a
/// worker that died after them), telling `log` of each outcome as it comes; failures
/// are numbered from 0 at `from` (the outcomes are of the arguments run).
fn call_batch<J: Job>(
    batch: &[u8],
    from: u32,
    out: SpillTo,
    mut log: Option<&mut TaskLog<'_>>,
) -> Result<Encoded, String> {
    let undecodable = |e: String| {
        format!(
            "arguments of job `{}` do not decode as {}: {}",
            J::NAME,
            std::any::type_name::<J::Input>(),
            capped(e)
        )
    };
    let unencodable = |e: String| format!("result of job `{}` does not encode: {e}", J::NAME);
    let mut inputs = Codec::decode_each::<J::Input>(batch).map_err(undecodable)?;
    let mut out = OutcomesWriter::new(out).map_err(unencodable)?;
    for done in inputs.by_ref().take(from as usize) {
        done.map_err(undecodable)?;
    }
    let mut failures = Vec::new();
    let mut index = 0u32;
    for input in inputs.by_ref() {
        let failure = match run_caught::<J>(input.map_err(undecodable)?) {
            Ok(Ok(value)) => {
                // The value is dropped (user code) before its outcome counts as
                // journaled: a crash in its drop is this argument's, not the next one's.
                let encoded = out.value_bytes(&value).map_err(unencodable)?;
                drop(value);
                if let Some(log) = log.as_deref_mut() {
                    log.value(encoded.and_then(|range| out.written(range)));
                }
                None
            }
            Ok(Err(message)) => Some((false, message)),
            Err(message) => Some((true, message)),
        };
        if let Some((panicked, message)) = failure {
            let failure = ItemFailure {
                index,
                panicked,
                message,
            };
            if let Some(log) = log.as_deref_mut() {
                log.failure(&failure);
            }
            failures.push(failure);
        }
        index = index.saturating_add(1);
    }
    inputs.finish().map_err(undecodable)?;
    out.finish(&failures).map_err(unencodable)
}

/// Runs the job, catching a panic as its message.
fn run_caught<J: Job>(input: J::Input) -> Result<Result<J::Output, String>, String> {
    // The job is user code: whatever state it leaves behind after a panic is its own,
    // and the worker only reports the panic, so asserting unwind safety is sound here.
    catch_unwind(AssertUnwindSafe(|| J::run(input)))
        .map_err(|payload| panic_message(payload.as_ref()))
}

fn call_job<J: Job>(codec: Codec, argument: &[u8]) -> Outcome {
    let input: J::Input = match codec.decode(argument) {
        Ok(input) => input,
        Err(e) => {
            return Outcome::Codec(format!(
                "argument of job `{}` does not decode as {}: {}",
                J::NAME,
                std::any::type_name::<J::Input>(),
                capped(e)
            ));
        }
    };
    match run_caught::<J>(input) {
        Ok(Ok(output)) => match codec.encode(&output) {
            Ok(bytes) => Outcome::Ok(bytes.into()),
            Err(e) => Outcome::Codec(format!("result of job `{}` does not encode: {e}", J::NAME)),
        },
        Ok(Err(message)) => Outcome::Failed(message),
        Err(message) => Outcome::Panicked(message),
    }
}

/// The text of a panic payload (`panic!("..")` gives `&str` or `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Every job linked into this executable, in name order (the order of the handshake,
/// so a job's index in it is the number tasks use on the wire). Two jobs with one
/// name are both announced; the supervisor refuses such a worker, since the name would
/// not say which function runs.
pub struct Registry {
    entries: Vec<&'static JobEntry>,
}

impl Registry {
    /// The process-wide registry, built on first use.
    pub fn global() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| Registry::from_entries(inventory::iter::<JobEntry>()))
    }

    fn from_entries(entries: impl IntoIterator<Item = &'static JobEntry>) -> Registry {
        let mut entries: Vec<&'static JobEntry> = entries.into_iter().collect();
        entries.sort_by_key(|e| e.name);
        Registry { entries }
    }

    /// The jobs, in wire order.
    pub fn entries(&self) -> &[&'static JobEntry] {
        &self.entries
    }

    /// The job at wire index `index`.
    pub fn get(&self, index: u32) -> Option<&'static JobEntry> {
        self.entries.get(index as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_keeps_its_start_and_end() {
        assert_eq!(capped("short"), "short");
        let long = format!(
            "invalid type: string \"{}é\", expected u64 at line 1 column 9",
            "x".repeat(1 << 20)
        );
        let cut = capped(&long);
        assert!(cut.len() < MAX_ERROR_TEXT + 40, "{} bytes", cut.len());
        assert!(cut.starts_with("invalid type: string \"xxx"));
        assert!(
            cut.ends_with("xé\", expected u64 at line 1 column 9"),
            "{cut}"
        );
        assert!(cut.contains("bytes cut)"));
    }
}
