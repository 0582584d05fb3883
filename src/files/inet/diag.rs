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

/// The remote address of a datagram, raw or ping socket connected to port 0,
/// which getpeername(2) does not show (it answers ENOTCONN while the destination
/// port is 0, net/ipv4/af_inet.c inet_getname) but the kernel's socket table of
/// the holder's namespace does (`/proc/PID/net/{udp,raw,icmp}[6]`, parsed by
/// procfs): as sockaddr bytes with port 0, or None when it is not connected.
pub fn port_zero_peer(pid: i32, family: i32, ty: i32, protocol: i32, ino: u64) -> std::io::Result<Option<Vec<u8>>> {
    use procfs::FromReadSI;
    let table = match (ty, protocol) {
        (libc::SOCK_RAW, _) => "raw",
        (_, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => "icmp",
        _ => "udp",
    };
    let six = if family == libc::AF_INET6 { "6" } else { "" };
    let path = format!("/proc/{pid}/net/{table}{six}");
    let rows = procfs::net::UdpNetEntries::from_file(&path, procfs::current_system_info()).map_err(|e| std::io::Error::other(format!("{path}: {e}")))?;
    let Some(row) = rows.0.iter().find(|r| r.inode == ino) else { return Ok(None) };
    if row.state != procfs::net::UdpState::Established {
        return Ok(None);
    }
    sockaddr(&std::net::SocketAddr::new(row.remote_address.ip(), 0)).map(Some)
}

/// The peer of a TCP socket still connecting (SYN_SENT), which getpeername(2)
/// does not show (ENOTCONN): from `/proc/PID/net/tcp[6]` (procfs).
pub fn syn_sent_peer(pid: i32, family: i32, ino: u64) -> std::io::Result<Vec<u8>> {
    use procfs::FromReadSI;
    let path = format!("/proc/{pid}/net/tcp{}", if family == libc::AF_INET6 { "6" } else { "" });
    let rows = procfs::net::TcpNetEntries::from_file(&path, procfs::current_system_info()).map_err(|e| std::io::Error::other(format!("{path}: {e}")))?;
    let row = rows.0.iter().find(|r| r.inode == ino).ok_or_else(|| std::io::Error::other(format!("socket:[{ino}] is not in {path}")))?;
    sockaddr(&row.remote_address)
}

/// sockaddr_in / sockaddr_in6 bytes of `a` (flow info and scope 0: a link-local
/// IPv6 address, whose scope these tables do not show, is refused).
fn sockaddr(a: &std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::with_capacity(28);
    match a.ip() {
        IpAddr::V4(ip) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&ip.octets());
            b.extend_from_slice(&[0; 8]);
        }
        IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80 => {
            return Err(std::io::Error::other(format!("it is connected to the link-local {ip} whose scope the kernel does not show")));
        }
        IpAddr::V6(ip) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&ip.octets());
            b.extend_from_slice(&[0; 4]);
        }
    }
    Ok(b)
}
