//! The fork server (`StartMethod::ForkServer`): a process executed once per pool, in
//! which no job has run and no pool exists, that forks each worker on request. Forking
//! it is as fast as forking the supervisor, without copying the supervisor's threads,
//! locks or memory into the workers.
//!
//! It speaks datagrams on a SEQPACKET control socket: a `Fork` request carries the new
//! worker's descriptors; every child it forks is its own to reap, and it reports each
//! exit (with peak RSS) back, so the supervisor learns exit codes as for its own
//! children. Signals go through it for the same reason: only the reaper may signal a
//! pid without racing its reuse. It ends when the control socket closes; its workers
//! die with it (their parent-death signal).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::codec::Codec;
use crate::protocol::{ZygoteReply, ZygoteRequest};
use crate::sys::{self, ForkedWorker};

/// Serves fork requests on control descriptor `fd` until it closes; the exit code.
pub(crate) fn run(fd: &str) -> i32 {
    let control = match fd
        .parse::<RawFd>()
        .map_err(|e| e.to_string())
        .and_then(|fd| sys::adopt_fd(fd).map_err(|e| e.to_string()))
    {
        Ok(control) => control,
        Err(e) => {
            // A fork server has no channel to report on: stderr is all there is.
            eprintln!("procpool fork server: {fd:?}: {e}");
            return 2;
        }
    };
    let fd = control.as_raw_fd();
    sys::ignore_sigint();
    sys::default_sigchld();
    // Each child with a pidfd, so its exit wakes the loop at once; without pidfds (old
    // kernels) the loop looks for exits every 20 ms.
    let mut children: HashMap<u32, Option<OwnedFd>> = HashMap::new();
    loop {
        for exited in reap_all(&mut children) {
            if send(fd, &exited, &[]).is_err() {
                return 0;
            }
        }
        let mut fds = vec![PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            children
                .values()
                .flatten()
                .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = if children.values().all(Option::is_some) {
            PollTimeout::NONE
        } else {
            PollTimeout::from(20u16)
        };
        let control_ready = match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => fds[0].revents().is_some_and(|r| !r.is_empty()),
            Err(_) => return 2,
        };
        drop(fds);
        if !control_ready {
            continue; // a child exited: reaped at the top of the loop
        }
        let mut buf = [0u8; 256];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, passed) = match recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty()) {
            Ok(msg) => {
                let mut passed = Vec::new();
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        passed.extend(fds.into_iter().map(sys::own_received));
                    }
                }
                (msg.bytes, passed)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 2,
        };
        if len == 0 {
            return 0; // the supervisor closed the control socket
        }
        let reply = match Codec::Bincode.decode::<ZygoteRequest>(&buf[..len]) {
            Ok(ZygoteRequest::Fork {
                stderr,
                quiet_stdout,
                address_space,
            }) => fork_one(
                fd,
                &passed,
                stderr,
                quiet_stdout,
                address_space,
                &mut children,
            ),
            Ok(ZygoteRequest::Signal { pid, signal }) => {
                if children.contains_key(&pid) {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
                    }
                }
                None
            }
            Err(e) => Some(ZygoteReply::ForkFailed {
                message: format!("bad request: {e}"),
            }),
        };
        // The passed descriptors belong to the child now (or to nobody): close ours.
        drop(passed);
        if let Some(reply) = reply {
            if send(fd, &reply, &[]).is_err() {
                return 0;
            }
        }
    }
}

fn fork_one(
    control: RawFd,
    passed: &[OwnedFd],
    stderr: bool,
    quiet_stdout: bool,
    address_space: Option<u64>,
    children: &mut HashMap<u32, Option<OwnedFd>>,
) -> Option<ZygoteReply> {
    let Some(stream) = passed.first() else {
        return Some(ZygoteReply::ForkFailed {
            message: "no stream descriptor came with the request".into(),
        });
    };
    let worker = ForkedWorker {
        stream: stream.as_raw_fd(),
        stderr: if stderr {
            passed.get(1).map(AsRawFd::as_raw_fd)
        } else {
            None
        },
        quiet_stdout,
        address_space,
        parent: std::process::id() as i32,
    };
    let _ = control; // closed in the child by sys::close_from
    match sys::fork() {
        Ok(None) => sys::become_forked_worker(&worker),
        Ok(Some(pid)) => {
            children.insert(pid, sys::pidfd(pid));
            Some(ZygoteReply::Forked { pid })
        }
        Err(e) => Some(ZygoteReply::ForkFailed {
            message: e.to_string(),
        }),
    }
}

fn reap_all(children: &mut HashMap<u32, Option<OwnedFd>>) -> Vec<ZygoteReply> {
    let mut exited = Vec::new();
    while let Ok(Some(r)) = sys::reap(None, false) {
        children.remove(&r.pid);
        exited.push(ZygoteReply::Exited {
            pid: r.pid,
            exitcode: r.exitcode,
            peak_rss: r.peak_rss,
        });
    }
    exited
}

/// Sends one datagram, with `fds` attached.
pub fn send<M: serde::Serialize>(fd: RawFd, message: &M, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = Codec::Bincode
        .encode(message)
        .map_err(std::io::Error::other)?;
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(fd, &[IoSlice::new(&bytes)], &cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one datagram (with up to two passed descriptors, which are closed: the
/// supervisor never expects any). `Ok(None)` when nothing is waiting and `wait` is false;
/// an empty message means the peer closed.
pub fn recv(fd: RawFd, wait: bool) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let flags = if wait {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    loop {
        match recvmsg::<()>(fd, &mut iov, None, flags) {
            Ok(msg) => {
                let len = msg.bytes;
                return Ok(Some(iov[0][..len].to_vec()));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
