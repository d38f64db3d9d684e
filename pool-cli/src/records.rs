//! Output records: one JSON line per input, in input order unless asked otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct OkRecord<'a> {
    index: usize,
    ok: &'a RawValue,
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    index: usize,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
}

/// What became of one input.
pub enum Outcome {
    /// The job's result, as JSON text.
    Ok(Vec<u8>),
    /// Why there is no result: a `JobError` kind, or `InvalidInput` for a bad line.
    Err { kind: String, message: String },
}

/// Counts by outcome, for the summary line and the exit status.
#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Inputs with a record.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    /// `all succeeded`, or `5 succeeded, 2 failed (1 Failed, 1 InvalidInput)`.
    pub fn outcome(&self) -> String {
        if self.failed.is_empty() {
            return "all succeeded".into();
        }
        let kinds: Vec<String> = self
            .failed
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!(
            "{} succeeded, {} failed ({})",
            self.ok,
            self.failed(),
            kinds.join(", ")
        )
    }

    /// The closing line: `7 inputs: 5 succeeded, 2 failed (...)`.
    pub fn summary(&self) -> String {
        format!("{}: {}", plural(self.total(), "input"), self.outcome())
    }
}

/// `1 input`, `2 inputs`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Writes records, holding back the ones that arrive ahead of their turn.
pub struct Records<W: Write> {
    out: W,
    ordered: bool,
    next: usize,
    early: HashMap<usize, Vec<u8>>,
    pub tally: Tally,
}

impl<W: Write> Records<W> {
    pub fn new(out: W, ordered: bool) -> Self {
        Records {
            out,
            ordered,
            next: 0,
            early: HashMap::new(),
            tally: Tally::default(),
        }
    }

    pub fn add(&mut self, index: usize, outcome: Outcome) -> io::Result<()> {
        let line = self.render(index, outcome);
        if !self.ordered {
            self.write_line(&line)?;
        } else {
            self.early.insert(index, line);
            while let Some(line) = self.early.remove(&self.next) {
                self.write_line(&line)?;
                self.next += 1;
            }
        }
        // Each record is flushed: the next may be a long time coming, and a reader
        // (or an interrupted run) should see every finished result.
        self.out.flush()
    }

    fn render(&mut self, index: usize, outcome: Outcome) -> Vec<u8> {
        let ok = match &outcome {
            Outcome::Ok(json) => std::str::from_utf8(json)
                .ok()
                .and_then(|text| RawValue::from_string(text.to_owned()).ok()),
            Outcome::Err { .. } => None,
        };
        let rendered = match (&outcome, ok) {
            (_, Some(raw)) => {
                self.tally.ok += 1;
                serde_json::to_vec(&OkRecord { index, ok: &raw })
            }
            (Outcome::Err { kind, message }, None) => {
                *self.tally.failed.entry(kind.clone()).or_default() += 1;
                serde_json::to_vec(&ErrorRecord {
                    index,
                    error: ErrorBody { kind, message },
                })
            }
            (Outcome::Ok(_), None) => {
                *self.tally.failed.entry("Codec".into()).or_default() += 1;
                serde_json::to_vec(&ErrorRecord {
                    index,
                    error: ErrorBody {
                        kind: "Codec",
                        message: "the worker's result is not JSON",
                    },
                })
            }
        };
        // Serializing these small structs cannot fail; keep the record even if it did.
        rendered.unwrap_or_else(|e| {
            format!("{{\"index\":{index},\"error\":{{\"kind\":\"Codec\",\"message\":\"{e}\"}}}}")
                .into_bytes()
        })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }

    /// Writes every held-back record (after an interrupt, gaps stay gaps), and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut rest: Vec<(usize, Vec<u8>)> = self.early.drain().collect();
        rest.sort_unstable_by_key(|(i, _)| *i);
        for (_, line) in rest {
            self.write_line(&line)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(records: Records<Vec<u8>>) -> String {
        String::from_utf8(records.out).unwrap()
    }

    #[test]
    fn ordered_records_wait_for_their_turn() {
        let mut r = Records::new(Vec::new(), true);
        r.add(1, Outcome::Ok(b"1".to_vec())).unwrap();
        assert_eq!(r.out.len(), 0);
        r.add(0, Outcome::Ok(b"{\"a\":0}".to_vec())).unwrap();
        r.add(
            2,
            Outcome::Err {
                kind: "Failed".into(),
                message: "no \"good\"".into(),
            },
        )
        .unwrap();
        r.finish().unwrap();
        assert_eq!(
            r.tally.summary(),
            "3 inputs: 2 succeeded, 1 failed (1 Failed)"
        );
        assert_eq!(
            text(r),
            "{\"index\":0,\"ok\":{\"a\":0}}\n{\"index\":1,\"ok\":1}\n\
             {\"index\":2,\"error\":{\"kind\":\"Failed\",\"message\":\"no \\\"good\\\"\"}}\n"
        );
    }

    #[test]
    fn one_input_is_singular() {
        let tally = Tally {
            ok: 1,
            ..Tally::default()
        };
        assert_eq!(tally.summary(), "1 input: all succeeded");
    }

    #[test]
    fn a_result_that_is_not_json_is_a_codec_error() {
        let mut r = Records::new(Vec::new(), false);
        r.add(0, Outcome::Ok(b"not json".to_vec())).unwrap();
        r.finish().unwrap();
        assert_eq!(r.tally.failed.get("Codec"), Some(&1));
    }
}
