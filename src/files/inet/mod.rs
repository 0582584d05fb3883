//! Inet sockets (ip(7), ipv6(7), tcp(7), udp(7)): TCP and UDP over IPv4 and IPv6.
//! Dump reads a socket through crtool's duplicate of the task's fd: addresses
//! (getsockname/getpeername), state and backlog (TCP_INFO), the options that
//! differ from a new socket's (`opts`); an established TCP connection only with
//! --tcp-established, through TCP_REPAIR (`repair`) behind a network lock
//! (`lock`). Restore makes every socket in crtool before the tree is forked: bound,
//! listening, connected (UDP), or an established connection rebuilt in repair
//! mode and let go once the tree exists.

mod diag;
mod dump;
mod fin;
mod mcast;
pub mod lock;
mod opts;
mod repair;
pub(crate) mod restore;

pub use dump::InetTable;
pub use restore::Restorer;

use images_format::pb;

/// tcp_states.h.
pub const TCP_ESTABLISHED: u32 = 1;
/// The peer has closed its side (its FIN received); ours is open.
pub const TCP_CLOSE_WAIT: u32 = 8;

/// Our side has closed (shutdown SHUT_WR), its FIN acknowledged; the peer's open.
pub const TCP_FIN_WAIT2: u32 = 5;
/// Our side has closed, its FIN not acknowledged yet.
pub const TCP_FIN_WAIT1: u32 = 4;
/// The peer's side closed first, then ours; our FIN not acknowledged yet.
pub const TCP_LAST_ACK: u32 = 9;
/// Both sides closed at once; our FIN not acknowledged yet.
pub const TCP_CLOSING: u32 = 11;
/// Both FINs exchanged and acknowledged (a socket with an fd then shows CLOSE).
pub const TCP_TIME_WAIT: u32 = 6;

/// Connecting: our SYN sent, no answer yet.
pub const TCP_SYN_SENT: u32 = 2;

/// Whether a TCP state is a connection crtool dumps with --tcp-established.
pub fn is_connection(state: u32) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_SYN_SENT | TCP_CLOSE_WAIT | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING)
}

/// Whether the peer's FIN is in (CLOSE_WAIT, LAST_ACK, CLOSING).
pub fn fin_received(state: u32) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

/// Whether our FIN is queued and not acknowledged (FIN_WAIT1, LAST_ACK, CLOSING).
pub fn fin_queued(state: u32) -> bool {
    matches!(state, TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSING)
}
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

/// The name of a TCP state (tcp_states.h).
pub fn state_text(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "?",
    }
}

/// "ADDR:PORT" ("[ADDR]:PORT" for IPv6) of raw sockaddr bytes; "-" for none.
pub fn addr_text(a: &[u8]) -> String {
    match parse_addr(a) {
        Some((std::net::IpAddr::V4(ip), port)) => format!("{ip}:{port}"),
        Some((std::net::IpAddr::V6(ip), port)) => format!("[{ip}]:{port}"),
        None => "-".into(),
    }
}

/// The address and port of raw sockaddr_in / sockaddr_in6 bytes.
pub fn parse_addr(a: &[u8]) -> Option<(std::net::IpAddr, u16)> {
    let family = u16::from_ne_bytes([*a.first()?, *a.get(1)?]) as i32;
    let port = u16::from_be_bytes([*a.get(2)?, *a.get(3)?]);
    match family {
        libc::AF_INET if a.len() >= 8 => Some((std::net::IpAddr::from([a[4], a[5], a[6], a[7]]), port)),
        libc::AF_INET6 if a.len() >= 24 => {
            let b: [u8; 16] = a[8..24].try_into().ok()?;
            Some((std::net::IpAddr::from(b), port))
        }
        _ => None,
    }
}

/// One line about a socket, for `show` and messages.
pub fn describe(s: &pb::InetSocket) -> String {
    let proto = match (s.r#type as i32, s.protocol as i32, s.family as i32) {
        (libc::SOCK_RAW, _, libc::AF_INET) => "raw",
        (libc::SOCK_RAW, _, _) => "raw6",
        (_, libc::IPPROTO_ICMP, _) => "ping",
        (_, libc::IPPROTO_ICMPV6, _) => "ping6",
        (_, libc::IPPROTO_TCP, libc::AF_INET) => "tcp",
        (_, libc::IPPROTO_TCP, _) => "tcp6",
        (_, libc::IPPROTO_UDP, libc::AF_INET) => "udp",
        (_, libc::IPPROTO_UDP, _) => "udp6",
        _ => "inet",
    };
    let mut d = format!("{proto} socket:[{}] {}", s.ino, addr_text(&s.local));
    if !s.peer.is_empty() {
        d.push_str(&format!(" -> {}", addr_text(&s.peer)));
    }
    if s.protocol as i32 == libc::IPPROTO_TCP {
        d.push_str(&format!(" {}", state_text(s.state)));
    }
    if s.state == TCP_LISTEN {
        d.push_str(&format!(" (backlog {})", s.backlog));
    }
    if let Some(t) = &s.tcp {
        d.push_str(&format!(" ({} bytes to send, {} unread)", t.send_queue.len(), t.recv_queue.len()));
    }
    if !s.queue.is_empty() {
        d.push_str(&format!(" ({} datagrams queued)", s.queue.len()));
    }
    d
}
