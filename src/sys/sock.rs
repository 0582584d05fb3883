//! Socket options nix does not wrap (SO_DOMAIN, SO_PEEK_OFF, SO_PASSSEC, ...), as
//! plain integers (socket(7), unix(7)).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// SO_PASSPIDFD (asm-generic/socket.h, Linux 6.5).
pub const SO_PASSPIDFD: i32 = 76;

/// getsockopt(fd, SOL_SOCKET, opt) of an `int` option.
pub fn get_int(fd: BorrowedFd, opt: i32) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
    Errno::result(r).map(|_| v)
}

/// setsockopt(fd, SOL_SOCKET, opt) of an `int` option.
pub fn set_int(fd: BorrowedFd, opt: i32, v: i32) -> Result<(), Errno> {
    // SAFETY: `v` is a valid int for the size given.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw const v).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    Errno::result(r).map(drop)
}

/// A sock_diag state mask with every TCP state bit, including the ones
/// netlink-packet-sock-diag's `StateFlags` does not name (a unix datagram socket
/// that is not connected is in TCP_CLOSE).
pub fn all_unix_states() -> netlink_packet_sock_diag::unix::StateFlags {
    // SAFETY: bitflags 1's from_bits_unchecked only stores the bits; the kernel
    // ignores states that do not exist (unix_diag.c: `(1 << sk->sk_state) & states`).
    unsafe { netlink_packet_sock_diag::unix::StateFlags::from_bits_unchecked(u32::MAX) }
}

/// SO_PEERGROUPS (asm-generic/socket.h): the supplementary groups of the peer as
/// recorded with SO_PEERCRED.
const SO_PEERGROUPS: i32 = 59;

/// getsockopt(SO_PEERGROUPS): the peer's supplementary groups.
pub fn peer_groups(fd: BorrowedFd) -> Result<Vec<u32>, Errno> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes; the kernel writes at most that.
        let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len) };
        match Errno::result(r) {
            Ok(_) => {
                groups.truncate(len as usize / 4);
                return Ok(groups);
            }
            // Too small: `len` says how much is needed.
            Err(Errno::ERANGE) if (len as usize / 4) > groups.len() => groups.resize(len as usize / 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// getsockopt(fd, level, opt) into a buffer of `max` bytes: the bytes the kernel
/// wrote.
pub fn get_raw(fd: BorrowedFd, level: i32, opt: i32, max: usize) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: `v` has room for `len` bytes; the kernel writes at most that.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, v.as_mut_ptr().cast(), &mut len) };
    Errno::result(r)?;
    v.truncate(len as usize);
    Ok(v)
}

/// setsockopt(fd, level, opt, bytes).
pub fn set_raw(fd: BorrowedFd, level: i32, opt: i32, v: &[u8]) -> Result<(), Errno> {
    // SAFETY: `v` is valid for reads of its length.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, v.as_ptr().cast(), v.len() as libc::socklen_t) };
    Errno::result(r).map(drop)
}

/// An `int` socket option at `level`.
pub fn get_int_at(fd: BorrowedFd, level: i32, opt: i32) -> Result<i32, Errno> {
    let v = get_raw(fd, level, opt, 4)?;
    Ok(i32::from_ne_bytes([v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0), v.get(2).copied().unwrap_or(0), v.get(3).copied().unwrap_or(0)]))
}

/// Sets an `int` socket option at `level`.
pub fn set_int_at(fd: BorrowedFd, level: i32, opt: i32, v: i32) -> Result<(), Errno> {
    set_raw(fd, level, opt, &v.to_ne_bytes())
}

/// ioctl SIOCINQ / SIOCOUTQ / SIOCOUTQNSD (tcp(7)): unread bytes, unacknowledged
/// plus unsent bytes, unsent bytes.
pub fn queue_len(fd: BorrowedFd, which: libc::Ioctl) -> Result<usize, Errno> {
    let mut n: libc::c_int = 0;
    // SAFETY: these ioctls write one int.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), which, &mut n) })?;
    Ok(n as usize)
}

pub const SIOCINQ: libc::Ioctl = libc::FIONREAD;
pub const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;
pub const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// The socket's own address (getsockname) and its peer's (getpeername, `None` if
/// not connected), as raw sockaddr bytes.
pub fn names(fd: BorrowedFd) -> Result<(Vec<u8>, Option<Vec<u8>>), Errno> {
    let get = |peer: bool| -> Result<Vec<u8>, Errno> {
        let mut ss = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
        let mut len = ss.len() as libc::socklen_t;
        // SAFETY: `ss` has room for `len` bytes of address.
        let r = unsafe {
            if peer { libc::getpeername(fd.as_raw_fd(), ss.as_mut_ptr().cast(), &mut len) } else { libc::getsockname(fd.as_raw_fd(), ss.as_mut_ptr().cast(), &mut len) }
        };
        Errno::result(r)?;
        Ok(ss[..len as usize].to_vec())
    };
    let me = get(false)?;
    let peer = match get(true) {
        Ok(p) => Some(p),
        Err(Errno::ENOTCONN | Errno::EOPNOTSUPP) => None,
        Err(e) => return Err(e),
    };
    Ok((me, peer))
}

/// bind(2) or connect(2) to raw sockaddr bytes.
pub fn bind_raw(fd: BorrowedFd, addr: &[u8], connect: bool) -> Result<(), Errno> {
    // SAFETY: `addr` holds a sockaddr of its length.
    let r = unsafe {
        if connect { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) } else { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) }
    };
    Errno::result(r).map(drop)
}

/// socket(domain, type | SOCK_CLOEXEC, protocol).
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let r = Errno::result(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: as above.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// listen(2).
pub fn listen(fd: BorrowedFd, backlog: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall.
    Errno::result(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// recv(fd, MSG_PEEK | MSG_DONTWAIT) of up to `len` bytes (in TCP repair mode, of
/// the queue TCP_REPAIR_QUEUE selects).
pub fn peek(fd: BorrowedFd, len: usize) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; len];
    // SAFETY: `v` has room for `len` bytes.
    let n = Errno::result(unsafe { libc::recv(fd.as_raw_fd(), v.as_mut_ptr().cast(), len, libc::MSG_PEEK | libc::MSG_DONTWAIT) })?;
    v.truncate(n as usize);
    Ok(v)
}

/// send(fd, data) until all is sent (in TCP repair mode, into the queue selected).
pub fn send_all(fd: BorrowedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length.
        let n = Errno::result(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Whether a classic BPF filter is attached (SO_ATTACH_FILTER): getsockopt
/// SO_GET_FILTER with no buffer answers with the number of instructions
/// (sk_get_filter; a buffer would be taken as room for that many 8-byte
/// instructions). An error (EACCES: an eBPF program) counts as attached.
pub fn has_filter(fd: BorrowedFd) -> bool {
    let mut len: libc::socklen_t = 0;
    // SAFETY: a null buffer of length 0; the kernel only writes `len`.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut len) };
    r != 0 || len != 0
}

/// send(fd, data, MSG_DONTWAIT) until all is sent; EAGAIN when the socket has no
/// room left.
pub fn send_all_now(fd: BorrowedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length.
        let n = Errno::result(unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// recvfrom(fd, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC) into `buf`: the datagram's
/// whole length and its sender (raw sockaddr bytes); `None` when nothing is queued.
pub fn peek_from(fd: BorrowedFd, buf: &mut [u8]) -> Result<Option<(usize, Vec<u8>)>, Errno> {
    let mut ss = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
    let mut len = ss.len() as libc::socklen_t;
    // SAFETY: `buf` and `ss` have room for the lengths given.
    let r = unsafe { libc::recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC, ss.as_mut_ptr().cast(), &mut len) };
    match Errno::result(r) {
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e),
        Ok(n) => Ok(Some((n as usize, ss[..len as usize].to_vec()))),
    }
}

/// sendto(fd, data, addr).
pub fn send_to(fd: BorrowedFd, data: &[u8], addr: &[u8]) -> Result<(), Errno> {
    // SAFETY: `data` and `addr` are valid for reads of their lengths.
    let r = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    let n = Errno::result(r)?;
    if n as usize != data.len() { Err(Errno::EMSGSIZE) } else { Ok(()) }
}

/// The inode of the network namespace socket `fd` belongs to (ioctl SIOCGSKNS,
/// which opens it).
pub fn netns_ino(fd: BorrowedFd) -> Result<u64, Errno> {
    const SIOCGSKNS: libc::Ioctl = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd we own.
    let r = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS) })?;
    // SAFETY: as above.
    let ns = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) };
    nix::sys::stat::fstat(&ns).map(|st| st.st_ino)
}

/// Whether socket `fd` held by `pid` is in `pid`'s network namespace.
pub fn in_holders_netns(fd: BorrowedFd, pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (netns_ino(fd), std::fs::metadata(format!("/proc/{pid}/ns/net"))) {
        (Ok(a), Ok(m)) => a == m.ino(),
        _ => true,
    }
}

/// One sock_diag dump request (sock_diag(7)) in the calling thread's network
/// namespace: every message the kernel answers with, until NLMSG_DONE.
pub fn sock_diag_dump(req: netlink_packet_sock_diag::SockDiagMessage) -> std::io::Result<Vec<netlink_packet_sock_diag::SockDiagMessage>> {
    use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(hdr, req.into());
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sock_diag: {e}"));
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < data.len() {
            let m = <NetlinkMessage<SockDiagMessage>>::deserialize(&data[at..]).map_err(|e| bad(e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(bad(format!("{e:?}"))),
                NetlinkPayload::InnerMessage(i) => out.push(i),
                _ => {}
            }
            if len == 0 {
                return Err(bad("a zero-length message".into()));
            }
            at += len;
        }
    }
}

/// The classic BPF filter attached to `fd` (SO_ATTACH_FILTER), as its
/// instructions' bytes (8 per struct sock_filter); empty when none. EACCES: an
/// eBPF program (SO_ATTACH_BPF), which cannot be read back.
pub fn get_filter(fd: BorrowedFd) -> Result<Vec<u8>, Errno> {
    let mut count: libc::socklen_t = 0;
    // SAFETY: a null buffer of length 0: the kernel answers with the count.
    Errno::result(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut count) })?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // SO_GET_FILTER takes the buffer's length in instructions (sk_get_filter).
    let mut buf = vec![0u8; count as usize * 8];
    let mut len = count;
    // SAFETY: `buf` has room for `count` 8-byte instructions.
    Errno::result(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, buf.as_mut_ptr().cast(), &mut len) })?;
    buf.truncate(len as usize * 8);
    Ok(buf)
}

/// Attaches the classic BPF filter `insns` (bytes of struct sock_filter).
pub fn set_filter(fd: BorrowedFd, insns: &[u8]) -> Result<(), Errno> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const u8,
    }
    let prog = SockFprog { len: (insns.len() / 8) as libc::c_ushort, filter: insns.as_ptr() };
    // SAFETY: `prog` points at `insns`, valid for the call.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&raw const prog).cast(), std::mem::size_of::<SockFprog>() as libc::socklen_t) };
    Errno::result(r).map(drop)
}

/// recvmsg(2) into `buf` with up to two fds passed as SCM_RIGHTS (taken as
/// owned, close-on-exec): the bytes read and the fds.
pub fn recv_with_fds(fd: BorrowedFd, buf: &mut [u8]) -> Result<(usize, Vec<std::os::fd::OwnedFd>), Errno> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let m = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in m.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    Ok((m.bytes, crate::sys::fd::take_received(fds)))
}
