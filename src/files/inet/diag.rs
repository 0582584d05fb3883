//! Half-open TCP connections (SYN_RECV requests in listeners' queues) through
//! sock_diag's INET_DIAG (sock_diag(7), net/ipv4/inet_diag.c): they have no fd, so
//! only the kernel can show them.

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use std::net::IpAddr;

/// The local (address, port) of every SYN_RECV request of the calling thread's
/// network namespace.
pub fn syn_recv() -> std::io::Result<Vec<(IpAddr, u16)>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let socket_id = if family == libc::AF_INET as u8 { SocketId::new_v4() } else { SocketId::new_v6() };
        let req = InetRequest { family, protocol: libc::IPPROTO_TCP as u8, extensions: ExtensionFlags::empty(), states: StateFlags::SYN_RECV, socket_id };
        for m in crate::sys::sock::sock_diag_dump(SockDiagMessage::InetRequest(req))? {
            if let SockDiagMessage::InetResponse(r) = m {
                out.push((r.header.socket_id.source_address, r.header.socket_id.source_port));
            }
        }
    }
    Ok(out)
}
