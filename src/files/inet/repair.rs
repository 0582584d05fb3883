//! TCP_REPAIR (tcp(7); net/ipv4/tcp.c do_tcp_setsockopt): an established
//! connection's state read without sending anything, and a socket put into that
//! state without a handshake.

use crate::sys::sock::{self, SIOCINQ, SIOCOUTQ, SIOCOUTQNSD};
use images_format::pb;
use nix::errno::Errno;
use std::os::fd::BorrowedFd;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
/// Leaves repair mode without a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// tcp_info.tcpi_options bits.
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

fn tcp(fd: BorrowedFd, opt: i32, v: i32) -> Result<(), Errno> {
    sock::set_int_at(fd, libc::IPPROTO_TCP, opt, v)
}

/// Puts the socket into repair mode (it sends nothing from now on, and closing it
/// sends nothing either).
pub fn enter(fd: BorrowedFd) -> Result<(), Errno> {
    tcp(fd, TCP_REPAIR, 1)
}

/// Leaves repair mode; `probe`: with a window probe (restore), else silently
/// (a dump letting the connection run on).
pub fn leave(fd: BorrowedFd, probe: bool) -> Result<(), Errno> {
    tcp(fd, TCP_REPAIR, if probe { 0 } else { TCP_REPAIR_OFF_NO_WP })
}

/// Reads the connection (in repair mode): queues with their sequence numbers,
/// options, timestamp, window. `fin_queued`: our FIN is in the send queue, not
/// acknowledged (it counts in SIOCOUTQ and write_seq, not in the queue's bytes).
pub fn dump(fd: BorrowedFd, fin_queued: bool) -> Result<pb::TcpConnection, Errno> {
    // MSG_PEEK starts at the peek offset (SO_PEEK_OFF) and moves it: off while
    // peeking, put back after.
    let peek_off = sock::get_int(fd, libc::SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        sock::set_int(fd, libc::SO_PEEK_OFF, -1)?;
    }
    let r = read_queues(fd, fin_queued as usize);
    if peek_off >= 0 {
        sock::set_int(fd, libc::SO_PEEK_OFF, peek_off)?;
    }
    let (rcv_nxt, recv_queue, write_seq, send_queue, unsent) = r?;
    let (inq, outq) = (recv_queue.len(), send_queue.len() + fin_queued as usize);
    // (A FIN not sent yet counts as unsent; it is sent again by shutdown.)
    let unsent = if fin_queued { unsent.saturating_sub(1) } else { unsent };
    let info = sock::get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 32)?;
    let (options, wscale) = (info.get(5).copied().unwrap_or(0), info.get(6).copied().unwrap_or(0));
    let mss = sock::get_int_at(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32;
    let timestamps = options & TCPI_OPT_TIMESTAMPS != 0;
    let timestamp = if timestamps { sock::get_int_at(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP)? as u32 } else { 0 };
    let w = sock::get_raw(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)?;
    let word = |i: usize| u32::from_ne_bytes(w.get(4 * i..4 * i + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    let ws = options & TCPI_OPT_WSCALE != 0;
    Ok(pb::TcpConnection {
        send_seq: write_seq.wrapping_sub(outq as u32),
        recv_seq: rcv_nxt.wrapping_sub(inq as u32),
        send_queue,
        unsent: unsent as u32,
        recv_queue,
        mss,
        snd_wscale: if ws { (wscale & 0xf) as u32 } else { 0 },
        rcv_wscale: if ws { (wscale >> 4) as u32 } else { 0 },
        sack: options & TCPI_OPT_SACK != 0,
        timestamps,
        timestamp,
        snd_wl1: word(0),
        snd_wnd: word(1),
        max_window: word(2),
        rcv_wnd: word(3),
        rcv_wup: word(4),
        lock_table: String::new(),
        sndbuf: sock::get_int(fd, libc::SO_SNDBUF)? as u32,
        rcvbuf: sock::get_int(fd, libc::SO_RCVBUF)? as u32,
        fin_received: false,
        fin_sent: false,
    })
}

/// The queues and their sequence numbers, read until two reads agree (a segment
/// that passed the network lock just before it took hold may still land).
#[allow(clippy::type_complexity)]
fn read_queues(fd: BorrowedFd, fin: usize) -> Result<(u32, Vec<u8>, u32, Vec<u8>, usize), Errno> {
    for _ in 0..5 {
        let inq = sock::queue_len(fd, SIOCINQ)?;
        let outq = sock::queue_len(fd, SIOCOUTQ)?;
        let unsent = sock::queue_len(fd, SIOCOUTQNSD)?;
        tcp(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv_nxt = sock::get_int_at(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        // One more than expected: a longer queue shows.
        let recv_queue = if inq > 0 { sock::peek(fd, inq + 1)? } else { Vec::new() };
        tcp(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let write_seq = sock::get_int_at(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        let data = outq.saturating_sub(fin);
        let send_queue = if data > 0 { sock::peek(fd, data + 1)? } else { Vec::new() };
        tcp(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv_again = sock::get_int_at(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        tcp(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
        let same = rcv_again == rcv_nxt && sock::queue_len(fd, SIOCINQ)? == inq && sock::queue_len(fd, SIOCOUTQ)? == outq;
        if same && recv_queue.len() == inq && send_queue.len() == data {
            return Ok((rcv_nxt, recv_queue, write_seq, send_queue, unsent));
        }
    }
    Err(Errno::EAGAIN)
}

/// Bytes in the send queue whatever SIOCOUTQ says (in repair mode): it answers
/// 0 while connecting, when data sent with the SYN (TCP Fast Open) may be there.
pub fn send_queue_bytes(fd: BorrowedFd) -> Result<usize, Errno> {
    tcp(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let r = sock::peek(fd, 65536);
    tcp(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    Ok(r?.len())
}

/// Before bind and connect (in repair mode): where the queues start.
pub fn set_seqs(fd: BorrowedFd, c: &pb::TcpConnection) -> Result<(), Errno> {
    tcp(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    tcp(fd, TCP_QUEUE_SEQ, c.recv_seq as i32)?;
    tcp(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    tcp(fd, TCP_QUEUE_SEQ, c.send_seq as i32)?;
    tcp(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
}

/// After connect (in repair mode): the handshake's options, the timestamp clock,
/// the queues' bytes (all of the send queue but what was not sent yet, which goes
/// after repair mode as a normal send), then the window.
pub fn fill(fd: BorrowedFd, c: &pb::TcpConnection) -> Result<(), Errno> {
    // Room for the queues: a new socket's buffers have not grown yet.
    for (opt, force, had, queued) in [(libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, c.sndbuf, c.send_queue.len()), (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, c.rcvbuf, c.recv_queue.len())] {
        // (The kernel counts skb overhead too: twice the bytes is ample.)
        let need = had.max(2 * queued as u32 + 65536);
        if queued > 0 && (sock::get_int(fd, opt)? as u32) < need {
            sock::set_int(fd, force, (need / 2) as i32)?;
        }
    }
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(TCPOPT_MSS, c.mss);
    // Always: connect() chose a receive scale of its own, which only this sets
    // (0 and 0 when the handshake negotiated no scaling).
    opt(TCPOPT_WINDOW, c.snd_wscale | (c.rcv_wscale << 16));
    if c.sack {
        opt(TCPOPT_SACK_PERM, 0);
    }
    if c.timestamps {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    sock::set_raw(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &opts)?;
    if c.timestamps {
        tcp(fd, TCP_TIMESTAMP, c.timestamp as i32)?;
    }
    // (Without waiting: nothing frees room in repair mode.)
    tcp(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    sock::send_all_now(fd, &c.recv_queue)?;
    tcp(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let sent = c.send_queue.len().saturating_sub(c.unsent as usize);
    sock::send_all_now(fd, &c.send_queue[..sent])?;
    tcp(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    // rcv_wup may not lie past rcv_nxt, which is one short of the original when
    // the peer's FIN is handed over later (tcp_repair_set_window).
    let rcv_nxt = c.recv_seq.wrapping_add(c.recv_queue.len() as u32);
    let rcv_wup = if (c.rcv_wup.wrapping_sub(rcv_nxt) as i32) > 0 { rcv_nxt } else { c.rcv_wup };
    let mut w = Vec::new();
    for v in [c.snd_wl1, c.snd_wnd, c.max_window, c.rcv_wnd, rcv_wup] {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    sock::set_raw(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &w)
}

/// After repair mode: the bytes that had not been sent yet, sent now.
pub fn send_unsent(fd: BorrowedFd, c: &pb::TcpConnection) -> Result<(), Errno> {
    let sent = c.send_queue.len().saturating_sub(c.unsent as usize);
    sock::send_all_now(fd, &c.send_queue[sent..])
}
