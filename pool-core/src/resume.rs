//! A chunk cut at the argument its worker died in.
//!
//! A task is a chunk of arguments; when its worker dies in the middle of it, the
//! worker's journal (`pool_worker::journal`) holds the outcomes of the arguments that
//! finished, and its slot says how many. Those keep their outcomes, the argument that
//! was running is the one lost with the worker (retried, or `WorkerLost`), and the
//! arguments after it, which never started, run elsewhere as a task resumed from there.
//! Python's pool and loky lose the whole chunk.

use pool_worker::Codec;
use pool_worker::protocol::{self, Outcome, Request};

use crate::result::{Delivery, Payload, raw_outcome};
use crate::supervisor::Task;

/// What a worker's journal holds of a task it died in: `items` arguments have an
/// outcome, `values` of them a value (encoded one after another in `value_bytes`), the
/// others a failure (in `failure_bytes`). Written by the worker: decoded as hostile.
pub(crate) struct Partial {
    pub items: usize,
    pub values: usize,
    pub value_bytes: Vec<u8>,
    pub failure_bytes: Vec<u8>,
}

/// The outcomes of the first `partial.items` arguments of `task`, as a delivery of
/// that many outcomes (checked when it is decoded, like any worker's reply).
pub(crate) fn finished(task: &Task, partial: Partial) -> Result<Delivery, String> {
    let count = |n: usize| (n as u64).to_le_bytes();
    match request(task)? {
        // Each argument's encoded outcome, one after another: a `Vec<Outcome>`.
        Request::Run { .. } => {
            let mut bytes = count(partial.items).to_vec();
            bytes.extend_from_slice(&partial.value_bytes);
            let outcomes: Vec<Outcome> = Codec::Bincode.decode(&bytes)?;
            if outcomes.len() != partial.items {
                return Err("the journal's outcomes do not match its count".into());
            }
            Ok(Delivery::Items(
                outcomes.into_iter().map(raw_outcome).collect(),
            ))
        }
        // The values and the failures: a `BatchOutcomes` of the job's result type.
        Request::RunBatch { .. } | Request::RunBatchShared { .. } => {
            let failures = partial.items - partial.values;
            let mut bytes =
                Vec::with_capacity(16 + partial.value_bytes.len() + partial.failure_bytes.len());
            bytes.extend_from_slice(&count(partial.values));
            bytes.extend_from_slice(&partial.value_bytes);
            bytes.extend_from_slice(&count(failures));
            bytes.extend_from_slice(&partial.failure_bytes);
            Ok(Delivery::Batch {
                count: partial.items,
                bytes: Payload::Owned(bytes),
            })
        }
        _ => Err("not a task's request".into()),
    }
}

/// Makes `task` run its arguments from `skip` places further on (those before have
/// their outcomes): its request is encoded again, and it has that many arguments fewer.
pub(crate) fn skip(task: &mut Task, skip: usize) -> Result<(), String> {
    if skip == 0 {
        return Ok(());
    }
    if skip > task.arguments {
        return Err(format!("{skip} of {} arguments", task.arguments));
    }
    let moved = u32::try_from(skip).map_err(|e| e.to_string())?;
    let request = match request(task)? {
        Request::Run {
            task,
            job,
            codec,
            mut arguments,
        } => {
            arguments.drain(..skip);
            Request::Run {
                task,
                job,
                codec,
                arguments,
            }
        }
        Request::RunBatch {
            task,
            job,
            count,
            from,
            batch,
        } => Request::RunBatch {
            task,
            job,
            count,
            from: from + moved,
            batch,
        },
        Request::RunBatchShared {
            task,
            job,
            count,
            from,
            len,
        } => Request::RunBatchShared {
            task,
            job,
            count,
            from: from + moved,
            len,
        },
        _ => return Err("not a task's request".into()),
    };
    task.frame = protocol::frame(&request).map_err(|e| e.to_string())?.into();
    task.arguments -= skip;
    Ok(())
}

/// The request of `task`, decoded from its frame (encoded here, so it decodes).
fn request(task: &Task) -> Result<Request, String> {
    let body = task.frame.get(4..).ok_or("a frame without its length")?;
    protocol::decode(body).map_err(|e| e.to_string())
}
