//! The input: one JSON job argument per line, from a file, a pipe, a FIFO or standard
//! input, read once and lazily.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use serde_json::value::RawValue;

use crate::interrupt;
use crate::records::Outcome;
use crate::run::{CliError, setup};

/// An opened input.
pub struct Input {
    pub reader: Box<dyn BufRead>,
    /// Its number of lines, when it could be counted without being consumed.
    pub lines: Option<u64>,
}

/// Opens `path` (`-`: standard input) once. A regular file is counted first, for the
/// progress bar, and rewound; anything else (a pipe such as `<(cmd)` or `/dev/stdin`,
/// a FIFO, a terminal) can only be read once, so it is read as it comes, uncounted.
pub fn open(path: &Path) -> Result<Input, CliError> {
    if path == Path::new("-") {
        return Ok(Input {
            reader: Box::new(BufReader::new(io::stdin())),
            lines: None,
        });
    }
    let cannot = |e: io::Error| setup(format!("cannot read input {}: {e}", path.display()));
    let mut file = File::open(path).map_err(cannot)?;
    let kind = file.metadata().map_err(cannot)?.file_type();
    if kind.is_dir() {
        return Err(setup(format!(
            "cannot read input {}: it is a directory",
            path.display()
        )));
    }
    let lines = if kind.is_file() {
        let lines = count_lines(&mut file).map_err(cannot)?;
        file.seek(SeekFrom::Start(0)).map_err(cannot)?;
        Some(lines)
    } else {
        None
    };
    Ok(Input {
        reader: Box::new(BufReader::new(file)),
        lines,
    })
}

fn count_lines(file: &mut File) -> io::Result<u64> {
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

/// What the feed shares with the loop that writes records.
#[derive(Default)]
pub struct FeedState {
    /// Input line (0-based) of each argument sent, by its position among those sent.
    pub lines: HashMap<usize, usize>,
    /// Lines that are not JSON: they become error records without being sent.
    pub rejected: Vec<(usize, Outcome)>,
    /// Lines read so far.
    pub read: usize,
    pub read_error: Option<io::Error>,
}

/// Reads input lines lazily, as the pool asks for arguments; hands valid JSON on, sets
/// bad lines aside. Stops at Ctrl-C.
pub struct Feed {
    input: Box<dyn BufRead>,
    next_sent: usize,
    state: Rc<RefCell<FeedState>>,
}

impl Feed {
    pub fn new(input: Box<dyn BufRead>, state: Rc<RefCell<FeedState>>) -> Self {
        Feed {
            input,
            next_sent: 0,
            state,
        }
    }
}

impl Iterator for Feed {
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
            let mut state = self.state.borrow_mut();
            let index = state.read;
            state.read += 1;
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
                        message: format!("line {}{message}", index + 1),
                    },
                )),
            }
        }
    }
}

/// `Ok` for a line that is one JSON value; otherwise the rest of an error message that
/// starts with the line number (`, column 4: not JSON: ...`).
fn check_json(line: &[u8]) -> Result<(), String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(": empty line; expected one JSON value".into());
    }
    serde_json::from_slice::<&RawValue>(line)
        .map(|_| ())
        .map_err(|e| {
            format!(
                ", column {}: not JSON: {}",
                e.column(),
                without_position(&e)
            )
        })
}

/// serde_json's message without its trailing " at line L column C": the line is the
/// input's, which the caller knows better.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&position).unwrap_or(&text).to_owned()
}

/// A worker's decode error for input line `line` (1-based), with serde_json's
/// position inside the line ("at line 1 column 5") turned into the input's.
pub fn locate_decode_error(message: &str, line: usize) -> String {
    if let Some((head, column)) = message.rsplit_once(" at line 1 column ") {
        if column.parse::<u64>().is_ok() {
            return format!("line {line}, column {column}: {head}");
        }
    }
    format!("line {line}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_is_placed_by_input_line_and_column() {
        assert_eq!(
            check_json(b"[1, 2"),
            Err(", column 5: not JSON: EOF while parsing a list".into())
        );
        assert_eq!(check_json(b"  {\"a\": 1}  "), Ok(()));
        assert!(check_json(b"   ").unwrap_err().contains("empty line"));
    }

    #[test]
    fn worker_decode_errors_name_the_input_line() {
        assert_eq!(
            locate_decode_error(
                "codec error: invalid type: string \"x\", expected u64 at line 1 column 3",
                7
            ),
            "line 7, column 3: codec error: invalid type: string \"x\", expected u64"
        );
        assert_eq!(
            locate_decode_error("job failed: no", 2),
            "line 2: job failed: no"
        );
    }
}
