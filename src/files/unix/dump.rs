//! Dump side of unix sockets: what each socket is (through crtool's duplicate of it
//! and sock_diag), how the sockets of the tree are connected, and what waits in
//! their receive queues (peeked with SO_PEEK_OFF, never consumed).

use super::diag::{self, DiagSock};
use super::{TCP_ESTABLISHED, TCP_LISTEN, addr_bytes, describe, name_text};
use crate::error::{Error, Result};
use crate::sys::sock;
use images_format::pb;
use nix::sys::socket::{self as so, MsgFlags, UnixAddr, sockopt};
use std::collections::{BTreeMap, HashMap};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A socket of the tree: where crtool found it, and crtool's duplicate of it.
struct Held {
    /// (pid, fd) of the first holder; (crtool's pid, -1) for a socket found in flight.
    pid: i32,
    fd: i32,
    dup: OwnedFd,
    sock: Option<pb::UnixSocket>,
}

/// The unix sockets of the tree, collected fd by fd and resolved at the end.
#[derive(Default)]
pub struct UnixTable {
    held: BTreeMap<u64, Held>,
    diag: Option<HashMap<u64, DiagSock>>,
}

/// A message peeked from a receive queue, with the files passed along (crtool's
/// duplicates, turned into file ids by the caller).
pub struct Peeked {
    pub packet: pb::SkPacket,
    pub files: Vec<OwnedFd>,
}

fn refuse(pid: i32, fd: i32, what: String, hint: &'static str) -> Error {
    Error::Unsupported { pid, fd: (fd >= 0).then_some(fd), what, hint: Some(hint) }
}

impl UnixTable {
    /// Registers the socket behind `dup` (fd `fd` of `pid`): refused unless AF_UNIX.
    pub fn add(&mut self, pid: i32, fd: i32, link: &str, dup: &OwnedFd, ino: u64) -> Result<()> {
        if self.held.contains_key(&ino) {
            return Ok(());
        }
        let domain = sock::get_int(dup.as_fd(), libc::SO_DOMAIN).map_err(|e| Error::sys(format!("pid {pid} fd {fd}: SO_DOMAIN"), e))?;
        if domain != libc::AF_UNIX {
            let fam = match domain {
                libc::AF_INET => "IPv4",
                libc::AF_INET6 => "IPv6",
                libc::AF_NETLINK => "netlink",
                libc::AF_PACKET => "packet",
                _ => "non-unix",
            };
            return Err(refuse(pid, fd, format!("{fam} socket {link} (address family {domain})"), "only unix sockets are supported yet"));
        }
        let dup = dup.try_clone().map_err(|e| Error::io(format!("/proc/{pid}/fd/{fd}"), e))?;
        self.held.insert(ino, Held { pid, fd, dup, sock: None });
        Ok(())
    }

    /// Where socket `ino` was found: (pid, fd) as crtool sees them.
    pub fn holder(&self, ino: u64) -> (i32, i32) {
        self.held.get(&ino).map_or((0, -1), |h| (h.pid, h.fd))
    }

    /// Inodes of the sockets registered but not described yet.
    pub fn undescribed(&self) -> Vec<u64> {
        self.held.iter().filter(|(_, h)| h.sock.is_none()).map(|(&i, _)| i).collect()
    }

    /// Describes socket `ino` (options, names, credentials) and peeks its queue.
    /// `vpid` maps crtool's pids into the tree's namespace.
    pub fn describe(&mut self, ino: u64, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Vec<Peeked>> {
        if self.diag.is_none() {
            self.diag = Some(diag::dump_all().map_err(|e| Error::io("sock_diag (NETLINK_SOCK_DIAG)", e))?);
        }
        let diag = self.diag.as_ref().unwrap();
        let h = self.held.get_mut(&ino).expect("registered socket");
        let (pid, fd) = (h.pid, h.fd);
        let d = diag.get(&ino).cloned().ok_or_else(|| refuse(pid, fd, format!("socket:[{ino}] is not known to sock_diag"), "is it in another network namespace?"))?;
        let f = h.dup.as_fd();
        let sys = |what: &str, e: nix::errno::Errno| Error::sys(format!("pid {pid} fd {fd} socket:[{ino}]: {what}"), e);
        let ty = so::getsockopt(&f, sockopt::SockType).map_err(|e| sys("SO_TYPE", e))? as i32 as u32;
        let name = so::getsockname::<UnixAddr>(f.as_raw_fd()).map(|a| addr_bytes(&a)).map_err(|e| sys("getsockname", e))?;
        let mut s = pb::UnixSocket { ino, r#type: ty, state: d.state as u32, name: name.clone(), ..Default::default() };
        // A path name: its socket file, as it is now.
        if !name.is_empty() && name[0] != 0 {
            let mut path = super::addr_of(&name).ok().and_then(|a| a.path().map(|p| p.to_path_buf())).unwrap_or_default();
            if path.is_relative() {
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                s.name_dir = cwd.to_string_lossy().into_owned();
                path = cwd.join(path);
            }
            use std::os::unix::fs::MetadataExt;
            if let (Ok(md), Some((vino, _))) = (std::fs::symlink_metadata(&path), d.vfs)
                && md.ino() == vino as u64
                && md.mode() & libc::S_IFMT == libc::S_IFSOCK
            {
                {
                    s.file_exists = true;
                    s.file_mode = md.mode() & 0o7777;
                    s.file_uid = md.uid();
                    s.file_gid = md.gid();
                }
            }
            // A relative name is bound again in the holder's cwd: if that holds
            // another file of this name, the cwd changed since the bind.
            if !s.name_dir.is_empty() && !s.file_exists {
                return Err(refuse(
                    pid,
                    fd,
                    format!("socket:[{ino}] is bound to the relative path {}, and {} is not its socket file (the cwd changed since the bind, or the file was removed)", name_text(&name), path.display()),
                    "bind unix sockets to absolute paths",
                ));
            }
        }
        s.shutdown = d.shutdown as u32;
        if s.state == TCP_LISTEN {
            s.backlog = d.rqlen.1;
        }
        s.passcred = so::getsockopt(&f, sockopt::PassCred).map_err(|e| sys("SO_PASSCRED", e))?;
        s.passsec = sock::get_int(f, libc::SO_PASSSEC).map_err(|e| sys("SO_PASSSEC", e))? != 0;
        s.sndbuf = so::getsockopt(&f, sockopt::SndBuf).map_err(|e| sys("SO_SNDBUF", e))? as u32;
        s.rcvbuf = so::getsockopt(&f, sockopt::RcvBuf).map_err(|e| sys("SO_RCVBUF", e))? as u32;
        let us = |t: nix::sys::time::TimeVal| (t.tv_sec() as u64) * 1_000_000 + t.tv_usec() as u64;
        s.sndtimeo_us = us(so::getsockopt(&f, sockopt::SendTimeout).map_err(|e| sys("SO_SNDTIMEO", e))?);
        s.rcvtimeo_us = us(so::getsockopt(&f, sockopt::ReceiveTimeout).map_err(|e| sys("SO_RCVTIMEO", e))?);
        s.peek_off = sock::get_int(f, libc::SO_PEEK_OFF).map_err(|e| sys("SO_PEEK_OFF", e))?;
        s.rcvlowat = sock::get_int(f, libc::SO_RCVLOWAT).map_err(|e| sys("SO_RCVLOWAT", e))?;
        s.passpidfd = sock::get_int(f, sock::SO_PASSPIDFD).unwrap_or(0) != 0;
        // A BPF filter (SO_ATTACH_FILTER) cannot be read back exactly enough here.
        if sock::has_filter(f) {
            return Err(refuse(pid, fd, format!("socket:[{ino}] has a socket filter attached (SO_ATTACH_FILTER)"), "socket filters are not supported"));
        }
        if s.state == TCP_ESTABLISHED || s.state == TCP_LISTEN {
            if let Ok(c) = so::getsockopt(&f, sockopt::PeerCredentials) {
                let outer = c.pid();
                let inner = if outer == 0 { Some(0) } else { vpid(outer) };
                let groups = sock::peer_groups(f).unwrap_or_default();
                s.peercred = Some(pb::UnixCreds { pid: inner.unwrap_or(outer), uid: c.uid(), gid: c.gid(), outside: inner.is_none(), groups });
            }
            if s.state == TCP_ESTABLISHED && let Ok(a) = so::getpeername::<UnixAddr>(f.as_raw_fd()) {
                s.peer_name = addr_bytes(&a);
            }
        }
        // A pending error (SO_ERROR, which reading clears) shows as POLLERR; an
        // out-of-band byte as what MSG_OOB|MSG_PEEK returns: neither is restorable.
        let mut pfd = [nix::poll::PollFd::new(f, nix::poll::PollFlags::empty())];
        if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).is_ok() && pfd[0].revents().is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR)) {
            return Err(refuse(pid, fd, format!("{} has a pending socket error (SO_ERROR)", describe(&s)), "the error cannot be read without clearing it; dump once the task has seen it"));
        }
        if s.r#type == libc::SOCK_STREAM as u32 && s.state == TCP_ESTABLISHED {
            let mut b = [0u8; 1];
            if so::recv(f.as_raw_fd(), &mut b, MsgFlags::MSG_OOB | MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) == Ok(1) {
                return Err(refuse(pid, fd, format!("{} has an out-of-band byte (MSG_OOB) queued", describe(&s)), "out-of-band data is not supported"));
            }
        }
        let peeked = if s.state == TCP_LISTEN { Vec::new() } else { peek_queue(f, &s, vpid).map_err(|e| refuse(pid, fd, format!("socket:[{ino}]: reading its queue: {e}"), "the task was left as it was"))? };
        h.sock = Some(s);
        Ok(peeked)
    }

    /// Connects the described sockets to each other: peers, accepted connections,
    /// connections waiting in an accept queue, peers outside the tree (refused
    /// unless `ext_unix_sk`). Returns the sockets in inode order.
    pub fn resolve(&mut self, ext_unix_sk: bool, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Vec<pb::UnixSocket>> {
        let diag = self.diag.take().unwrap_or_default();
        let held: std::collections::BTreeSet<u64> = self.held.keys().copied().collect();
        let held_pids: std::collections::BTreeSet<i32> = self.held.values().map(|h| h.pid).collect();
        // Which listener (anywhere) each waiting connection is queued on.
        let mut queued_on: HashMap<u64, (u64, u32)> = HashMap::new();
        for d in diag.values().filter(|d| d.state as u32 == TCP_LISTEN) {
            for (i, &c) in d.icons.iter().enumerate() {
                if c != 0 {
                    queued_on.insert(c, (d.ino, i as u32));
                }
            }
        }
        let listener_names: std::collections::BTreeSet<Vec<u8>> =
            self.held.values().filter_map(|h| h.sock.as_ref()).filter(|s| s.state == TCP_LISTEN && !s.name.is_empty()).map(|s| s.name.clone()).collect();
        let names: HashMap<u64, Vec<u8>> = self.held.iter().filter_map(|(&i, h)| h.sock.as_ref().map(|s| (i, s.name.clone()))).collect();
        let mut out = Vec::new();
        for (&ino, h) in &self.held {
            let mut s = h.sock.clone().expect("described");
            let d = diag.get(&ino).cloned().unwrap_or_default();
            let (pid, fd) = (h.pid, h.fd);
            let connected_kind = s.r#type != libc::SOCK_DGRAM as u32;
            if s.state == TCP_LISTEN {
                for &c in d.icons.iter() {
                    if c == 0 {
                        return Err(refuse(pid, fd, format!("{} has a connection waiting to be accepted whose client has closed", describe(&s)), "data it may have sent cannot be read without accepting it; dump once the task has accepted it"));
                    }
                    if !held.contains(&c) {
                        return Err(refuse(pid, fd, format!("{} has a connection from socket:[{c}] outside the dumped tree waiting to be accepted", describe(&s)), "dump the tree that holds both ends"));
                    }
                }
            } else if let Some(&(l, pos)) = queued_on.get(&ino) {
                if !held.contains(&l) {
                    return Err(refuse(pid, fd, format!("{} is connecting to socket:[{l}] {} outside the dumped tree (not accepted yet)", describe(&s), name_text(&s.peer_name)), "dump once the connection is accepted, or dump the tree that holds the listener"));
                }
                if d.rqlen.1 > 0 {
                    return Err(refuse(pid, fd, format!("{} sent data on a connection that socket:[{l}] has not accepted yet", describe(&s)), "such data cannot be read without accepting the connection; dump once it is accepted"));
                }
                s.in_queue_of = l;
                s.queue_pos = pos;
                s.connector = Some(holder_creds(pid, vpid));
            } else if s.state == TCP_ESTABLISHED && d.peer == 0 {
                s.peer_closed = true;
                // A named connected socket whose peer closed: taken as the accepting
                // side of a connection (it carries its listener's name).
                s.accepted = connected_kind && !s.name.is_empty();
            } else if d.peer != 0 && !held.contains(&d.peer) {
                if !ext_unix_sk {
                    let key = format!("socket:[{}]", d.peer);
                    let holder = crate::files::pipe::outside_holders(&held_pids, &[key.clone()].into_iter().collect()).remove(&key);
                    let by = match holder {
                        Some((opid, ofd)) => format!("held by pid {opid} ({}) fd {ofd}", std::fs::read_to_string(format!("/proc/{opid}/comm")).unwrap_or_default().trim()),
                        None => "held by no process (in flight in a message, or in a cycle of sockets only messages hold)".to_string(),
                    };
                    return Err(refuse(
                        pid,
                        fd,
                        format!("{} is connected to socket:[{}] {} outside the dumped tree, {by}", describe(&s), d.peer, name_text(&s.peer_name)),
                        "dump the tree that holds both ends, or pass --ext-unix-sk (then restore reconnects a datagram socket by name, and takes a stream socket from --inherit-fd fd[N]:socket:[INO])",
                    ));
                }
                s.external = true;
                if !connected_kind && s.peer_name.is_empty() {
                    return Err(refuse(pid, fd, format!("{} is connected to an unbound datagram socket outside the tree", describe(&s)), "restore could not find that peer again"));
                }
            } else if d.peer != 0 {
                s.peer = d.peer;
                // Through a listener, the accepting side carries the listener's name.
                if connected_kind && !s.name.is_empty() {
                    let peer_name = names.get(&d.peer).cloned().unwrap_or_default();
                    // Both named (the client bound itself): the one with a listener's
                    // name, else the later one (made by connect(2) after the client).
                    let mine = listener_names.contains(&s.name);
                    let theirs = listener_names.contains(&peer_name);
                    s.accepted = peer_name.is_empty() || (mine && !theirs) || (mine == theirs && ino > d.peer);
                }
            }
            out.push(s);
        }
        // Both ends of an in-tree connection agree on who accepted.
        let by_ino: HashMap<u64, usize> = out.iter().enumerate().map(|(i, s)| (s.ino, i)).collect();
        for i in 0..out.len() {
            if out[i].accepted && let Some(&j) = by_ino.get(&out[i].peer) && out[j].accepted {
                out[j].accepted = false;
            }
        }
        Ok(out)
    }
}

/// The pid (in the tree's namespace), effective uid and gid of process `pid`.
fn holder_creds(pid: i32, vpid: &dyn Fn(i32) -> Option<i32>) -> pb::UnixCreds {
    let ids = |k| crate::procinfo::ids(pid, k).and_then(|v| v.get(1).copied()).unwrap_or(0) as u32;
    let groups = crate::procinfo::ids(pid, "Groups").unwrap_or_default().into_iter().map(|g| g as u32).collect();
    pb::UnixCreds { pid: vpid(pid).unwrap_or(0), uid: ids("Uid"), gid: ids("Gid"), outside: false, groups }
}

/// Peeks every message queued on `f` from offset 0 (SO_PEEK_OFF is set for the
/// reading and put back after). Stream bytes with the same credentials and no
/// files are merged, so that the images do not depend on how the bytes were split.
fn peek_queue(f: std::os::fd::BorrowedFd, s: &pb::UnixSocket, vpid: &dyn Fn(i32) -> Option<i32>) -> std::result::Result<Vec<Peeked>, String> {
    let old = s.peek_off;
    sock::set_int(f, libc::SO_PEEK_OFF, 0).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    let r = peek_all(f, s, vpid);
    let back = sock::set_int(f, libc::SO_PEEK_OFF, old);
    let out = r?;
    back.map_err(|e| format!("putting SO_PEEK_OFF back: {e}"))?;
    Ok(out)
}

fn peek_all(f: std::os::fd::BorrowedFd, s: &pb::UnixSocket, vpid: &dyn Fn(i32) -> Option<i32>) -> std::result::Result<Vec<Peeked>, String> {
    let stream = s.r#type == libc::SOCK_STREAM as u32;
    let dgram = s.r#type == libc::SOCK_DGRAM as u32;
    let mut buf = vec![0u8; 1 << 16];
    let mut out: Vec<Peeked> = Vec::new();
    let mut empties = 0usize;
    let shut_down = s.shutdown & 1 != 0;
    let mut tentative = 0usize;
    loop {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred);
        // MSG_TRUNC: a datagram's whole length (on a stream socket it would mean
        // "discard").
        let trunc = if stream { MsgFlags::empty() } else { MsgFlags::MSG_TRUNC };
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | trunc;
        let (n, truncated, sender, files, creds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = match so::recvmsg::<UnixAddr>(f.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(format!("recvmsg(MSG_PEEK): {e}")),
            };
            let mut files = Vec::new();
            let mut creds = None;
            for c in r.cmsgs().map_err(|e| format!("control messages: {e}"))? {
                match c {
                    so::ControlMessageOwned::ScmRights(fds) => {
                        files.extend(crate::sys::fd::take_received(fds));
                    }
                    so::ControlMessageOwned::ScmCredentials(c) => creds = Some(c),
                    _ => {}
                }
            }
            let sender = r.address.map(|a| addr_bytes(&a)).unwrap_or_default();
            (r.bytes, r.flags.contains(MsgFlags::MSG_CTRUNC), sender, files, creds)
        };
        if truncated {
            return Err("too many files in one message".into());
        }
        if n > buf.len() {
            // A datagram larger than the buffer: read it again whole.
            let back = sock::get_int(f, libc::SO_PEEK_OFF).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
            sock::set_int(f, libc::SO_PEEK_OFF, back - buf.len().min(n) as i32).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
            buf.resize(n.next_power_of_two(), 0);
            continue;
        }
        if n == 0 && files.is_empty() && stream {
            break; // end of stream
        }
        if n == 0 && files.is_empty() && !dgram && shut_down {
            // A seqpacket socket whose peer shut down: 0 is the end, or an empty
            // record (each is returned once, then skipped). Empty records are kept
            // if a record with data follows them; trailing ones cannot be told
            // from the end (README).
            tentative += 1;
            if tentative > 4096 {
                break;
            }
            continue;
        }
        if n > 0 || !files.is_empty() {
            for _ in 0..std::mem::take(&mut tentative) {
                out.push(Peeked { packet: pb::SkPacket { ino: s.ino, data: Vec::new(), sender: Vec::new(), fds: Vec::new(), creds: None }, files: Vec::new() });
            }
        }
        if n == 0 {
            empties += 1;
            if empties > 1 << 20 {
                return Err("the queue does not end".into());
            }
        }
        let creds = creds.filter(|_| s.passcred).map(|c| {
            let outer = c.pid();
            let inner = if outer == 0 { Some(0) } else { vpid(outer) };
            pb::UnixCreds { pid: inner.unwrap_or(outer), uid: c.uid(), gid: c.gid(), outside: inner.is_none(), groups: Vec::new() }
        });
        let data = buf[..n].to_vec();
        if stream && files.is_empty() && let Some(last) = out.last_mut() && last.files.is_empty() && last.packet.creds == creds {
            last.packet.data.extend_from_slice(&data);
            continue;
        }
        out.push(Peeked { packet: pb::SkPacket { ino: s.ino, data, sender: if dgram { sender } else { Vec::new() }, fds: Vec::new(), creds }, files });
    }
    Ok(out)
}
