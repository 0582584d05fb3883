//! The kernel's view of every unix socket of the network namespace, through
//! sock_diag (sock_diag(7), net/unix/diag.c): peer, name, accept queue, queue
//! lengths and shutdown state, by inode.

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, UnixRequest};
use std::collections::HashMap;

/// What sock_diag reports of one unix socket.
#[derive(Debug, Clone, Default)]
pub struct DiagSock {
    pub ino: u64,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7) or TCP_LISTEN (10).
    pub state: u8,
    /// Inode of the peer; 0 when the peer has no inode (a connection still in a
    /// listener's queue, or a closed peer).
    pub peer: u64,
    /// Inode and device of the bound socket file.
    pub vfs: Option<(u32, u32)>,
    /// For a listener: the inodes of the connecting sockets whose connections wait
    /// in its accept queue, in queue order.
    pub icons: Vec<u64>,
    /// Receive queue: bytes (stream, seqpacket), the first datagram's length
    /// (datagram) or pending connections (listener); and the send side's count.
    pub rqlen: (u32, u32),
    /// sk_shutdown: RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2.
    pub shutdown: u8,
}

/// Every unix socket of crtool's network namespace, by inode.
pub fn dump_all() -> std::io::Result<HashMap<u64, DiagSock>> {
    let req = UnixRequest {
        state_flags: crate::sys::sock::all_unix_states(),
        inode: 0,
        show_flags: ShowFlags::VFS | ShowFlags::PEER | ShowFlags::ICONS | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    };
    let mut out = HashMap::new();
    for m in crate::sys::sock::sock_diag_dump(SockDiagMessage::UnixRequest(req))? {
        let SockDiagMessage::UnixResponse(r) = m else { continue };
        let s = DiagSock {
            ino: r.header.inode as u64,
            state: r.header.state,
            peer: r.peer().unwrap_or(0) as u64,
            vfs: r.nlas.iter().find_map(|n| match n {
                netlink_packet_sock_diag::unix::nlas::Nla::Vfs(v) => Some(vfs_fields(v)),
                _ => None,
            }),
            icons: r.pending_connections().unwrap_or(&[]).iter().map(|&i| i as u64).collect(),
            rqlen: r.nlas.iter().find_map(|n| match n {
                netlink_packet_sock_diag::unix::nlas::Nla::ReceiveQueueLength(a, b) => Some((*a, *b)),
                _ => None,
            }).unwrap_or((0, 0)),
            shutdown: r.shutdown_state().unwrap_or(0),
        };
        out.insert(s.ino, s);
    }
    Ok(out)
}

/// The (inode, device) of a `Vfs` attribute (its fields are private: read back
/// through its emitted bytes).
fn vfs_fields(v: &netlink_packet_sock_diag::unix::nlas::Vfs) -> (u32, u32) {
    use netlink_packet_utils::traits::Emitable;
    let mut b = [0u8; 8];
    v.emit(&mut b);
    (u32::from_ne_bytes(b[0..4].try_into().unwrap()), u32::from_ne_bytes(b[4..8].try_into().unwrap()))
}
