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
