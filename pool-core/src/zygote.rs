//! The supervisor's side of the fork server (`StartMethod::ForkServer`).
//!
//! The fork server is the worker program executed once with `PROCPOOL_ZYGOTE_FD`; it
//! forks a worker for each request, receiving the worker's stream (and stderr pipe)
//! over the SEQPACKET control socket. It reaps its children and reports their exits,
//! so for these workers the supervisor learns exit codes and peak RSS from it, and
//! signals them through it, never by pid itself.
//!
//! A worker is known by its [`ZygoteChild`], not by its pid alone: once the server has
//! reaped a worker, a later fork may get the same pid. The server's datagrams come in
//! order, and it reports an exit before it can fork again into that pid, so each
//! `Exited` belongs to the live fork that has the pid when it arrives.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use pool_worker::Codec;
use pool_worker::os::{self, Reaped};
use pool_worker::protocol::{ENV_ZYGOTE_FD, ZygoteReply, ZygoteRequest};

use crate::launch::{self, LaunchSpec, Launched};
use crate::sys;

/// Numbers fork servers and their forks, across every pool of the process: an
/// identity no later server or fork reuses, as pids are reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// How long a fork server that is being ended may take to die.
const END_WAIT: Duration = Duration::from_secs(5);

/// One worker forked by a fork server: which server, and which of its forks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ZygoteChild {
    server: u64,
    fork: u64,
    pid: u32,
}

pub(crate) struct Zygote {
    pub pid: u32,
    /// This server's identity in the [`ZygoteChild`]s of its workers.
    id: u64,
    /// A descriptor of the server's process, to end it by and to see it end.
    pidfd: Option<OwnedFd>,
    control: OwnedFd,
    /// The forks it reported and whose exit it has not: pid to fork.
    live: HashMap<u32, u64>,
    /// Exits reported and not yet collected by the supervisor, by fork.
    exits: HashMap<u64, Reaped>,
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
        Ok(Zygote::adopt(pid, ours))
    }

    /// The fork server running as `pid`, on `control`.
    fn adopt(pid: u32, control: OwnedFd) -> Zygote {
        Zygote {
            pid,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pidfd: sys::pidfd_open(pid),
            control,
            live: HashMap::new(),
            exits: HashMap::new(),
            alive: true,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Whether `child` is a worker of this fork server.
    pub fn forked(&self, child: ZygoteChild) -> bool {
        child.server == self.id
    }

    /// Asks for a worker and waits (at most `timeout`) for its pid.
    pub fn fork(
        &mut self,
        spec: &LaunchSpec,
        timeout: Duration,
    ) -> io::Result<(Launched, ZygoteChild)> {
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
                // Its answer, if it comes late, would be taken for the next fork's (a
                // reply names no request): a server that does not answer in time is
                // lost, ended with its children, and replaced.
                let e = io::Error::new(io::ErrorKind::TimedOut, "the fork server did not answer");
                self.lost(&e);
                return Err(e);
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
                    let child = ZygoteChild {
                        server: self.id,
                        fork: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                        pid,
                    };
                    if self.live.insert(pid, child.fork).is_some() {
                        // Its exit was reported before this fork, or the server lies.
                        tracing::warn!(
                            pid,
                            "the fork server reused a pid it had not reported free"
                        );
                    }
                    let launched = Launched {
                        pid,
                        stream: ours,
                        stderr: pipe.map(|(read, _)| read),
                    };
                    return Ok((launched, child));
                }
                Some(ZygoteReply::ForkFailed { message }) => return Err(io::Error::other(message)),
                Some(ZygoteReply::Exited { .. }) | None => {}
            }
        }
    }

    /// Takes one message; exits are recorded. `None` when nothing (more) is waiting.
    /// Once the channel fails (the server ended, or sent what does not decode) the
    /// server is ended: see [`lost`](Self::lost).
    fn receive(&mut self, wait: bool) -> io::Result<Option<ZygoteReply>> {
        let received = os::recv_datagram(self.control.as_raw_fd(), wait).and_then(|bytes| {
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the fork server ended",
                ));
            }
            Codec::Bincode
                .decode::<ZygoteReply>(&bytes)
                .map(Some)
                .map_err(|e| io::Error::other(format!("a message that does not decode: {e}")))
        });
        let reply = match received {
            Ok(reply) => reply,
            Err(e) => {
                self.lost(&e);
                return Err(e);
            }
        };
        if let Some(ZygoteReply::Exited {
            pid,
            exitcode,
            peak_rss,
        }) = reply
        {
            // A pid it never reported forked (a fork given up on) is no worker's.
            if let Some(fork) = self.live.remove(&pid) {
                let reaped = Reaped {
                    pid,
                    exitcode,
                    peak_rss,
                };
                self.exits.insert(fork, reaped);
            }
        }
        Ok(reply)
    }

    /// The channel failed: whatever the server says next cannot be trusted, and
    /// exits it would have reported may be lost. It is ended (SIGKILL) and waited for
    /// (not reaped: the supervisor reaps it), so that its workers, which get SIGKILL
    /// at its death, are dead before the supervisor takes them for dead.
    fn lost(&mut self, why: &io::Error) {
        if !self.alive {
            return;
        }
        self.alive = false;
        tracing::warn!(pid = self.pid, error = %why, "fork server channel failed; ending it");
        sys::signal_process(self.pid, self.pidfd.as_ref(), Signal::SIGKILL);
        if !self.wait_end(END_WAIT) {
            tracing::error!(pid = self.pid, "the fork server did not end");
        }
    }

    /// Waits at most `wait` for the server's process to end; whether it did.
    fn wait_end(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ended = match &self.pidfd {
                // Readable once the process has ended (reaped or not).
                Some(pidfd) => {
                    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
                }
                None => {
                    let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
                    match waitid(Id::Pid(pid), flags) {
                        Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {
                            std::thread::sleep(Duration::from_millis(1));
                            false
                        }
                        // Ended, or reaped already (SIGCHLD ignored): gone either way.
                        _ => true,
                    }
                }
            };
            if ended {
                return true;
            }
            if left.is_zero() {
                return false;
            }
        }
    }

    /// Records every exit reported so far.
    pub fn collect_exits(&mut self) {
        while let Ok(Some(_)) = self.receive(false) {}
    }

    /// The exit of worker `child`, once reported (or, if the fork server itself died,
    /// assumed: its workers died with it, by SIGKILL).
    pub fn take_exit(&mut self, child: ZygoteChild) -> Option<Reaped> {
        self.exits.remove(&child.fork).or_else(|| {
            (!self.alive).then_some(Reaped {
                pid: child.pid,
                exitcode: -(Signal::SIGKILL as i32),
                peak_rss: 0,
            })
        })
    }

    /// Signals worker `child` through the fork server, which alone may (it reaps it);
    /// nothing once its exit is reported (its pid may be another worker's by then).
    pub fn signal(&self, child: ZygoteChild, signal: Signal) {
        if self.live.get(&child.pid) != Some(&child.fork) {
            return;
        }
        let request = ZygoteRequest::Signal {
            pid: child.pid,
            signal: signal as i32,
        };
        let _ = os::send_datagram(self.control.as_raw_fd(), &request, &[]);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::process::Command;

    use nix::sys::socket::{MsgFlags, send};
    use pool_worker::protocol::ZygoteRequest;

    use super::*;
    use crate::launch::StartMethod;

    const WAIT: Duration = Duration::from_secs(10);

    fn spec() -> LaunchSpec {
        LaunchSpec {
            method: StartMethod::ForkServer,
            executable: PathBuf::from("/bin/true"),
            args: Vec::new(),
            env: Vec::new(),
            address_space: None,
            quiet_stdout: false,
            capture_stderr: false,
        }
    }

    /// A process to stand for a fork server (whatever the test does, no signal meant
    /// for the server reaches another process); killed and reaped on drop.
    struct StandIn(std::process::Child);

    impl StandIn {
        fn id(&self) -> u32 {
            self.0.id()
        }

        fn ended(&mut self) -> bool {
            self.0.try_wait().unwrap().is_some()
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn stand_in() -> StandIn {
        StandIn(Command::new("sleep").arg("600").spawn().unwrap())
    }

    /// A `Zygote` whose fork server is played by the test on the returned socket;
    /// `pid` stands for the server's process.
    fn played(pid: u32) -> (Zygote, OwnedFd) {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Zygote::adopt(pid, ours), theirs)
    }

    /// Plays the fork server: for each request, sends its replies.
    fn serve(server: OwnedFd, script: Vec<Vec<ZygoteReply>>) -> std::thread::JoinHandle<OwnedFd> {
        std::thread::spawn(move || {
            for replies in script {
                let request = os::recv_datagram(server.as_raw_fd(), true)
                    .unwrap()
                    .unwrap();
                let request: ZygoteRequest = Codec::Bincode.decode(&request).unwrap();
                assert!(matches!(request, ZygoteRequest::Fork { .. }), "{request:?}");
                for reply in replies {
                    os::send_datagram(server.as_raw_fd(), &reply, &[]).unwrap();
                }
            }
            server
        })
    }

    #[test]
    fn an_exit_is_not_taken_for_a_later_worker_with_the_same_pid() {
        // Issue 11, item 13: the fork server reaped worker 4242 and forked another that
        // got the same pid; the first one's exit must not end the second.
        let stand_in = stand_in();
        let (mut z, server) = played(stand_in.id());
        let server = serve(
            server,
            vec![
                vec![ZygoteReply::Forked { pid: 4242 }],
                vec![
                    ZygoteReply::Exited {
                        pid: 4242,
                        exitcode: 3,
                        peak_rss: 0,
                    },
                    ZygoteReply::Forked { pid: 4242 },
                ],
            ],
        );
        let (_, first) = z.fork(&spec(), WAIT).unwrap();
        let (_, second) = z.fork(&spec(), WAIT).unwrap();
        let server = server.join().unwrap();
        assert_eq!(z.take_exit(second), None, "the second worker runs");
        assert_eq!(z.take_exit(first).map(|r| r.exitcode), Some(3));
        // A signal meant for the first (gone) must not reach the second through its pid.
        z.signal(first, Signal::SIGKILL);
        assert_eq!(os::recv_datagram(server.as_raw_fd(), false).unwrap(), None);
        z.signal(second, Signal::SIGTERM);
        let request = os::recv_datagram(server.as_raw_fd(), false)
            .unwrap()
            .unwrap();
        let request: ZygoteRequest = Codec::Bincode.decode(&request).unwrap();
        assert!(
            matches!(request, ZygoteRequest::Signal { pid: 4242, .. }),
            "{request:?}"
        );
        assert!(z.is_alive());
        drop(stand_in);
    }

    #[test]
    fn a_bad_datagram_ends_the_fork_server_before_its_workers_count_as_dead() {
        // Issue 11, item 13: one datagram that does not decode made every worker of the
        // fork server count as killed while they ran. The channel cannot be trusted
        // after it, so the server is ended (its workers die with it, by their
        // parent-death signal), and only then are they taken for dead.
        let mut stand_in = stand_in();
        let (mut z, server) = played(stand_in.id());
        let server = serve(server, vec![vec![ZygoteReply::Forked { pid: 4242 }]]);
        let (_, worker) = z.fork(&spec(), WAIT).unwrap();
        let server = server.join().unwrap();
        send(server.as_raw_fd(), &[0xff; 40], MsgFlags::empty()).unwrap();
        z.collect_exits();
        let exit = z.take_exit(worker);
        let server_ended = stand_in.ended();
        drop(stand_in);
        assert!(
            exit.is_none() || server_ended,
            "its worker counts as dead ({exit:?}) while its fork server runs"
        );
        assert!(!z.is_alive());
    }
}
