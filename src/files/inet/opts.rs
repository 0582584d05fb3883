//! The socket options an inet socket keeps: each read from the socket and from a
//! new socket of the same kind; those that differ are saved and set again
//! (socket(7), ip(7), ipv6(7), tcp(7), udp(7)).

use crate::sys::sock;
use images_format::pb;
use std::os::fd::{AsFd, BorrowedFd};

/// (level, option, size in bytes) of every option kept. Buffer sizes come back
/// with SO_{RCV,SND}BUFFORCE.
const SOCKET: &[(i32, i32, usize)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, 4),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, 4),
    (libc::SOL_SOCKET, libc::SO_MARK, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, 16),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, 4),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 4),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 4),
    (libc::SOL_SOCKET, libc::SO_BUSY_POLL, 4),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, 4),
    (libc::SOL_SOCKET, libc::SO_SELECT_ERR_QUEUE, 4),
    (libc::SOL_SOCKET, libc::SO_PEEK_OFF, 4),
];
const BUFFERS: &[(i32, i32, usize)] = &[(libc::SOL_SOCKET, libc::SO_RCVBUF, 4), (libc::SOL_SOCKET, libc::SO_SNDBUF, 4)];
const IPV4: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS, 4),
    (libc::IPPROTO_IP, libc::IP_TTL, 4),
    (libc::IPPROTO_IP, libc::IP_RECVERR, 4),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, 4),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, 4),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, 4),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, 4),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, 4),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, 4),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 4),
    (libc::IPPROTO_IP, libc::IP_NODEFRAG, 4),
    (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, 4),
];
const IPV6: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 4),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 4),
    (libc::IPPROTO_IPV6, 78, 4), // IPV6_FREEBIND
    (libc::IPPROTO_IPV6, 75, 4), // IPV6_TRANSPARENT
    (libc::IPPROTO_IPV6, 70, 4), // IPV6_AUTOFLOWLABEL
    (libc::IPPROTO_IPV6, 62, 4), // IPV6_DONTFRAG
];
const TCP: &[(i32, i32, usize)] = &[
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, libc::TCP_CORK, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, 4),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 4),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4),
    (libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, 4),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 4),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 4),
    (libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, 4),
];
/// Set by the kernel itself once a connection is up: kept only on sockets that
/// are not connected.
const TCP_UNCONNECTED: &[(i32, i32, usize)] = &[(libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4), (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, 4)];
/// Multicast options (EINVAL on stream sockets).
const MULTICAST4: &[(i32, i32, usize)] = &[(libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 4), (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 4), (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, 4), (libc::IPPROTO_IP, libc::IP_MULTICAST_IF, 4)];
const MULTICAST6: &[(i32, i32, usize)] = &[(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 4), (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 4), (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, 4)];
const UDP: &[(i32, i32, usize)] = &[(libc::IPPROTO_UDP, libc::UDP_CORK, 4), (libc::IPPROTO_UDP, 103, 4), (libc::IPPROTO_UDP, 104, 4)];

/// Raw sockets (raw(7), icmp(7), icmp6): IP_HDRINCL/IPV6_HDRINCL, the ICMP type
/// filters, IPV6_CHECKSUM.
const RAW4: &[(i32, i32, usize)] = &[(libc::IPPROTO_IP, libc::IP_HDRINCL, 4), (libc::SOL_RAW, 1, 4)];
const RAW6: &[(i32, i32, usize)] = &[(libc::IPPROTO_IPV6, 36, 4), (libc::IPPROTO_IPV6, 7, 4), (58, 1, 32)];

fn table(family: i32, ty: i32, protocol: i32, connected: bool) -> Vec<(i32, i32, usize)> {
    if ty == libc::SOCK_RAW || protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6 {
        let mut t: Vec<(i32, i32, usize)> = SOCKET.to_vec();
        t.extend_from_slice(BUFFERS);
        t.extend_from_slice(if family == libc::AF_INET { IPV4 } else { IPV6 });
        if ty == libc::SOCK_RAW {
            t.extend_from_slice(if family == libc::AF_INET { RAW4 } else { RAW6 });
        }
        t.extend_from_slice(if family == libc::AF_INET { MULTICAST4 } else { MULTICAST6 });
        return t;
    }
    let mut t: Vec<(i32, i32, usize)> = SOCKET.to_vec();
    // An established connection's buffers are tuned by the kernel as it runs.
    if !(protocol == libc::IPPROTO_TCP && connected) {
        t.extend_from_slice(BUFFERS);
    }
    t.extend_from_slice(if family == libc::AF_INET { IPV4 } else { IPV6 });
    if protocol == libc::IPPROTO_TCP {
        t.extend_from_slice(TCP);
        if !connected {
            t.extend_from_slice(TCP_UNCONNECTED);
        }
    } else {
        t.extend_from_slice(UDP);
        t.extend_from_slice(if family == libc::AF_INET { MULTICAST4 } else { MULTICAST6 });
    }
    t
}

/// The options of `fd` that differ from a new socket's (`fresh`, of the same
/// family, type and protocol). Options the kernel does not know are skipped.
pub fn capture(fd: BorrowedFd, fresh: BorrowedFd, family: i32, ty: i32, protocol: i32, connected: bool) -> Vec<pb::SockOpt> {
    let mut out = Vec::new();
    for (level, name, size) in table(family, ty, protocol, connected) {
        let Ok(v) = sock::get_raw(fd, level, name, size) else { continue };
        let Ok(f) = sock::get_raw(fresh, level, name, size) else { continue };
        if v != f {
            out.push(pb::SockOpt { level, name, value: v });
        }
    }
    out
}

/// Sets `opts` on `fd` (before it is bound).
pub fn apply(fd: BorrowedFd, opts: &[pb::SockOpt]) -> Result<(), String> {
    for o in opts {
        let r = match (o.level, o.name) {
            // The kernel reports twice what was asked (socket(7)).
            (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_SNDBUF) => {
                let v = i32::from_ne_bytes(o.value.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                let force = if o.name == libc::SO_RCVBUF { libc::SO_RCVBUFFORCE } else { libc::SO_SNDBUFFORCE };
                sock::set_int_at(fd.as_fd(), libc::SOL_SOCKET, force, v / 2)
            }
            // A string option: up to its NUL.
            (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) | (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
                let end = o.value.iter().position(|&b| b == 0).unwrap_or(o.value.len());
                sock::set_raw(fd, o.level, o.name, &o.value[..end])
            }
            _ => sock::set_raw(fd, o.level, o.name, &o.value),
        };
        r.map_err(|e| format!("setsockopt({}, {}): {e}", o.level, o.name))?;
    }
    Ok(())
}
