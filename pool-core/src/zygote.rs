//! The supervisor's side of the fork server (`StartMethod::ForkServer`).
//!
//! The fork server is the worker program executed once with `PROCPOOL_ZYGOTE_FD`; it
//! forks a worker for each request, receiving the worker's stream (and stderr pipe)
//! over the SEQPACKET control socket. It reaps its children and reports their exits,
//! so for these workers the supervisor learns exit codes and peak RSS from it, and
//! signals them through it, never by pid itself.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use pool_worker::Codec;
use pool_worker::os::{self, Reaped};
use pool_worker::protocol::{ENV_ZYGOTE_FD, ZygoteReply, ZygoteRequest};

use crate::launch::{self, LaunchSpec, Launched};

pub(crate) struct Zygote {
    pub pid: u32,
    control: OwnedFd,
    /// Exits reported and not yet collected by the supervisor.
    exits: HashMap<u32, Reaped>,
    alive: bool,
}

impl Zygote {
    /// Executes the fork server. Its stderr is inherited; its address space uncapped
    /// (the cap applies to each worker it forks).
    pub fn start(spec: &LaunchSpec) -> io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut own = spec.clone();
        own.capture_stderr = false;
        own.address_space = None;
        let (pid, _) = launch::spawn(&own, theirs, ENV_ZYGOTE_FD)?;
        tracing::debug!(pid, "fork server started");
        Ok(Zygote {
            pid,
            control: ours,
            exits: HashMap::new(),
            alive: true,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Asks for a worker and waits (at most `timeout`) for its pid.
    pub fn fork(&mut self, spec: &LaunchSpec, timeout: Duration) -> io::Result<Launched> {
        let (ours, theirs) = UnixStream::pair()?;
        let pipe = launch::stderr_pipe(spec)?;
        let mut fds = vec![theirs.as_raw_fd()];
        if let Some((_, write)) = &pipe {
            fds.push(write.as_raw_fd());
        }
        let request = ZygoteRequest::Fork {
            stderr: pipe.is_some(),
            quiet_stdout: spec.quiet_stdout,
            address_space: spec.address_space,
        };
        os::send_datagram(self.control.as_raw_fd(), &request, &fds)?;
        drop(theirs);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fork server did not answer",
                ));
            }
            let mut fds = [PollFd::new(self.control.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match self.receive(true)? {
                Some(ZygoteReply::Forked { pid }) => {
                    return Ok(Launched {
                        pid,
                        stream: ours,
                        stderr: pipe.map(|(read, _)| read),
                    });
                }
                Some(ZygoteReply::ForkFailed { message }) => return Err(io::Error::other(message)),
                Some(ZygoteReply::Exited { .. }) | None => {}
            }
        }
    }

    /// Takes one message; exits are recorded. `None` when nothing (more) is waiting.
    fn receive(&mut self, wait: bool) -> io::Result<Option<ZygoteReply>> {
        let Some(bytes) = os::recv_datagram(self.control.as_raw_fd(), wait)? else {
            return Ok(None);
        };
        if bytes.is_empty() {
            self.alive = false;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the fork server ended",
            ));
        }
        let reply: ZygoteReply = Codec::Bincode.decode(&bytes).map_err(io::Error::other)?;
        if let ZygoteReply::Exited {
            pid,
            exitcode,
            peak_rss,
        } = reply
        {
            self.exits.insert(
                pid,
                Reaped {
                    pid,
                    exitcode,
                    peak_rss,
                },
            );
        }
        Ok(Some(reply))
    }

    /// Records every exit reported so far.
    pub fn collect_exits(&mut self) {
        loop {
            match self.receive(false) {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    if self.alive {
                        tracing::warn!(error = %e, "fork server channel failed");
                    }
                    self.alive = false;
                    return;
                }
            }
        }
    }

    /// The exit of worker `pid`, once reported (or, if the fork server itself died,
    /// assumed: its workers died with it, by SIGKILL).
    pub fn take_exit(&mut self, pid: u32) -> Option<Reaped> {
        self.exits.remove(&pid).or_else(|| {
            (!self.alive).then_some(Reaped {
                pid,
                exitcode: -(Signal::SIGKILL as i32),
                peak_rss: 0,
            })
        })
    }

    /// Signals worker `pid` through the fork server, which alone may (it reaps it).
    pub fn signal(&self, pid: u32, signal: Signal) {
        let request = ZygoteRequest::Signal {
            pid,
            signal: signal as i32,
        };
        let _ = os::send_datagram(self.control.as_raw_fd(), &request, &[]);
    }
}
