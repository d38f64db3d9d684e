//! A worker's captured stderr: forwarded line by line as `tracing` events, with the
//! last lines kept for the `WorkerLost` of a worker that dies.

use std::collections::VecDeque;
use std::io::{self, Read};

use mio::unix::pipe::Receiver;

pub(crate) struct StderrTap {
    pub pipe: Receiver,
    partial: Vec<u8>,
    tail: VecDeque<String>,
    keep: usize,
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

    /// Reads what is available; true at end of stream.
    pub fn drain(&mut self, pid: u32) -> bool {
        let mut buf = [0u8; 8192];
        loop {
            match self.pipe.read(&mut buf) {
                Ok(0) => {
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        self.line(pid, &rest);
                    }
                    return true;
                }
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = self.partial.drain(..=end).collect();
                        self.line(pid, &line[..line.len() - 1]);
                    }
                    // A worker writing one endless line must not grow this forever.
                    if self.partial.len() > 64 * 1024 {
                        let long = std::mem::take(&mut self.partial);
                        self.line(pid, &long);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
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
