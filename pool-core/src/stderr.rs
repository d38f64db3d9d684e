//! A worker's captured stderr: forwarded line by line as `tracing` events, with the
//! last lines kept for the `WorkerLost` of a worker that dies.

use std::collections::VecDeque;
use std::io::{self, Read};

use mio::unix::pipe::Receiver;

/// How much one [`StderrTap::drain`] may do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Bytes read from the pipe.
    pub bytes: usize,
    /// Lines forwarded (each is a `tracing` event, which a subscriber may format: for
    /// short lines this, not the bytes, is the cost).
    pub lines: usize,
}

/// The budget of one drain per event-loop turn: a worker that floods its stderr gets
/// a share of the loop, not all of it.
pub(crate) const DRAIN_BUDGET: Budget = Budget {
    bytes: 64 * 1024,
    lines: 1024,
};
/// A line longer than this is forwarded in pieces: a worker writing one endless line
/// must not grow the buffer for ever.
const LONGEST_LINE: usize = 64 * 1024;

pub(crate) struct StderrTap {
    pub pipe: Receiver,
    partial: Vec<u8>,
    tail: VecDeque<String>,
    keep: usize,
}

/// Where a [`StderrTap::drain`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Drained {
    /// Nothing more to read for now; the poller reports the next bytes.
    Empty,
    /// The budget ran out with bytes still waiting. The pipe is edge-triggered, so no
    /// new event comes for them: the caller must drain again soon.
    More,
    /// The end of stream (or a read error): nothing will come any more.
    Ended,
}

impl StderrTap {
    pub fn new(pipe: Receiver, keep: usize) -> StderrTap {
        StderrTap {
            pipe,
            partial: Vec::new(),
            tail: VecDeque::new(),
            keep,
        }
    }

    /// Reads and forwards what is available, within `budget`.
    pub fn drain(&mut self, pid: u32, budget: Budget) -> Drained {
        let mut buf = [0u8; 8192];
        let mut read = 0;
        let mut lines = 0;
        loop {
            // Lines read by an earlier drain that ran out of budget go first.
            lines += self.forward_lines(pid, budget.lines.saturating_sub(lines));
            if lines >= budget.lines || read >= budget.bytes {
                return Drained::More;
            }
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    // Past any budget: nothing follows, and what is left is bounded.
                    self.forward_lines(pid, usize::MAX);
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        self.line(pid, &rest);
                    }
                    return Drained::Ended;
                }
                Ok(n) => {
                    read += n;
                    self.partial.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(_) => return Drained::Ended,
            }
        }
    }

    /// Forwards up to `most` complete lines of what has been read; how many it did. A
    /// rest with no newline that has grown past [`LONGEST_LINE`] counts as a line.
    fn forward_lines(&mut self, pid: u32, most: usize) -> usize {
        let pending = std::mem::take(&mut self.partial);
        let mut start = 0;
        let mut done = 0;
        while done < most {
            match pending[start..].iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.line(pid, &pending[start..start + end]);
                    start += end + 1;
                }
                None if pending.len() - start > LONGEST_LINE => {
                    self.line(pid, &pending[start..]);
                    start = pending.len();
                }
                None => break,
            }
            done += 1;
        }
        // The rest stays, in the same allocation.
        let mut pending = pending;
        pending.drain(..start);
        self.partial = pending;
        done
    }

    fn line(&mut self, pid: u32, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes).into_owned();
        tracing::info!(target: "procpool::worker_stderr", pid, "{line}");
        self.tail.push_back(line);
        while self.tail.len() > self.keep {
            self.tail.pop_front();
        }
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_drain_stops_at_its_budget_and_the_next_goes_on_where_it_stopped() {
        let (mut tx, rx) = mio::unix::pipe::new().unwrap();
        let mut tap = StderrTap::new(rx, 2);
        for i in 0..10 {
            writeln!(tx, "line {i}").unwrap();
        }
        let budget = Budget {
            bytes: usize::MAX,
            lines: 4,
        };
        assert_eq!(tap.drain(1, budget), Drained::More);
        assert_eq!(tap.tail(), ["line 2", "line 3"]);
        assert_eq!(tap.drain(1, budget), Drained::More);
        assert_eq!(tap.tail(), ["line 6", "line 7"]);
        assert_eq!(tap.drain(1, budget), Drained::Empty);
        assert_eq!(tap.tail(), ["line 8", "line 9"]);

        let bytes = Budget {
            bytes: 1,
            lines: usize::MAX,
        };
        tx.write_all(b"a\nb\nunfinished").unwrap();
        assert_eq!(tap.drain(1, bytes), Drained::More);
        drop(tx);
        assert_eq!(tap.drain(1, DRAIN_BUDGET), Drained::Ended);
        assert_eq!(tap.tail(), ["b", "unfinished"]);
    }

    #[test]
    fn an_endless_line_is_forwarded_in_pieces() {
        let (mut tx, rx) = mio::unix::pipe::new().unwrap();
        let mut tap = StderrTap::new(rx, 10);
        tx.write_all(&[b'x'; 60 * 1024]).unwrap();
        assert_eq!(tap.drain(1, DRAIN_BUDGET), Drained::Empty);
        assert!(tap.tail().is_empty());
        tx.set_nonblocking(false).unwrap();
        std::thread::spawn(move || tx.write_all(&[b'y'; 200 * 1024]));
        let mut turns = 0;
        while tap.tail().len() < 3 {
            if tap.drain(1, DRAIN_BUDGET) == Drained::Empty {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            turns += 1;
            assert!(turns < 100_000, "the pieces never came");
        }
        assert!(tap.tail().iter().all(|l| l.len() > LONGEST_LINE));
    }
}
