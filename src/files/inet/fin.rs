//! The peer's FIN of a connection in CLOSE_WAIT, LAST_ACK or CLOSING, handed to its restored socket
//! again: repair mode cannot put a FIN into a receive queue, so crtool sends the
//! segment the peer sent (FIN|ACK at the FIN's sequence number, acknowledging
//! what the peer had acknowledged) through a raw socket, as CRIU's libsoccr does.
//! The peer sees the restored socket's acknowledgement of a FIN it already had
//! acknowledged, which TCP ignores.

use crate::sys::sock;
use images_format::pb;
use nix::errno::Errno;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

/// The one's-complement sum of 16-bit words (RFC 1071), folded.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP header with FIN|ACK and its checksum over `pseudo` (the pseudo-header).
fn tcp_fin(sport: u16, dport: u16, seq: u32, ack: u32, window: u16, pseudo: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(5 << 4); // data offset: 5 words, no options
    t.push(0x11); // FIN | ACK
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let c = fold(sum(sum(0, pseudo), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// Sends the peer's FIN to `fd`'s connection `s` and waits until the socket is
/// in one of the states `want` (CLOSE_WAIT; CLOSING, or on once our FIN is
/// acknowledged, when ours was sent first).
pub fn deliver(fd: BorrowedFd, s: &pb::InetSocket, c: &pb::TcpConnection, want: &[u32]) -> Result<(), Errno> {
    let (Some((lip, lport)), Some((pip, pport))) = (super::parse_addr(&s.local), super::parse_addr(&s.peer)) else { return Err(Errno::EINVAL) };
    let seq = c.recv_seq.wrapping_add(c.recv_queue.len() as u32);
    let ack = c.send_seq;
    let window = (c.snd_wnd >> c.snd_wscale.min(14)).min(65535) as u16;
    match (pip.to_canonical(), lip.to_canonical()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
            let tcp = tcp_fin(pport, lport, seq, ack, window, &pseudo);
            // IPv4 header: the kernel fills in its checksum and id (raw(7)).
            let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0];
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&tcp);
            let raw = sock::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            let mut to = vec![0u8; 16];
            to[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            to[4..8].copy_from_slice(&dst.octets());
            sock::send_to(raw.as_fd(), &p, &to)?;
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, libc::IPPROTO_TCP as u8]);
            let tcp = tcp_fin(pport, lport, seq, ack, window, &pseudo);
            let mut p = vec![0x60, 0, 0, 0, 0, 20, libc::IPPROTO_TCP as u8, 64];
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&tcp);
            // (IPPROTO_RAW on an IPv6 socket means the header is ours.)
            let raw = sock::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            let mut to = vec![0u8; 28];
            to[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            to[8..24].copy_from_slice(&dst.octets());
            sock::send_to(raw.as_fd(), &p, &to)?;
        }
        _ => return Err(Errno::EINVAL),
    }
    wait_state(fd, want)
}

/// Waits (2 s at most) until socket `fd` is in one of the TCP states `want`.
pub fn wait_state(fd: BorrowedFd, want: &[u32]) -> Result<(), Errno> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let state = sock::get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 8).ok().and_then(|i| i.first().copied()).unwrap_or(0) as u32;
        if want.contains(&state) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Errno::ETIMEDOUT);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
