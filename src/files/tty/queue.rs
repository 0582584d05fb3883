//! Unread data of a pseudo-terminal pair: read by crtool and handed back with
//! TIOCSTI, which gives each byte to the line discipline as if received
//! (drivers/tty/n_tty.c). To store bytes exactly as they were, the slave's termios
//! is changed for the hand-back: no echo, no input translation, and in canonical
//! mode every byte n_tty treats specially goes in escaped with VLNEXT, so complete
//! lines stay lines and the line being edited stays unfinished. The master's own
//! termios is the kernel's raw one (pty.c): its bytes go in as they are.

use crate::sys::tty::{self, KTermios};
use images_format::pb;
use nix::errno::Errno;
use std::os::fd::{AsFd, BorrowedFd};

/// n_tty holds at most 4095 bytes; it throttles the writer once less than 128 are
/// left (TTY_THRESHOLD_THROTTLE). Up to this much, nothing waits in the pty's
/// flip buffer behind the queue and the hand-back fits.
pub const MAX_QUEUED: usize = 4096 - 128;

/// Whether this crtool may hand bytes to a terminal it does not own (TIOCSTI needs
/// CAP_SYS_ADMIN in the initial user namespace; an LSM may forbid it): tried on a
/// pair of crtool's own.
pub fn probe() -> std::result::Result<(), String> {
    let m = crate::sys::fd::open_at_pos("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY, 0).map_err(|e| format!("opening /dev/ptmx: {e}"))?;
    tty::set_pty_locked(m.as_fd(), false).map_err(|e| format!("TIOCSPTLCK: {e}"))?;
    let s = tty::open_peer(m.as_fd(), libc::O_RDWR | libc::O_NONBLOCK).map_err(|e| format!("TIOCGPTPEER: {e}"))?;
    tty::push_input(m.as_fd(), b'x').map_err(|e| format!("TIOCSTI: {e}"))?;
    tty::set_locked_termios(s.as_fd(), &KTermios::default()).map_err(|e| format!("TIOCSLCKTRMIOS: {e}"))?;
    Ok(())
}

/// Reads the master's `len` unread bytes (the slave's output) through the task's
/// own description without changing its flags: the master's VMIN is 1, so a read
/// of at most what is queued returns at once. In packet mode each read starts with
/// a TIOCPKT_DATA byte, dropped here. On error, what was read so far comes along.
pub fn capture_output(m: BorrowedFd, len: usize, packet: bool) -> (Vec<u8>, Option<Errno>) {
    let mut out = Vec::with_capacity(len);
    let mut buf = [0u8; 4096 + 1];
    while out.len() < len {
        let want = (len - out.len()).min(4096) + usize::from(packet);
        match tty::read_now(m, &mut buf[..want]) {
            Ok(Some(n)) if n > usize::from(packet) => {
                if packet && buf[0] != 0 {
                    // A status byte (it was not pending a moment ago): consumed.
                    return (out, Some(Errno::EPROTO));
                }
                out.extend_from_slice(&buf[usize::from(packet)..n]);
            }
            Ok(_) => return (out, Some(Errno::ENODATA)),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Runs `f` with the locked termios cleared (so that TCSETS changes every bit);
/// `locked` is put back after.
fn unlocked<T>(s: BorrowedFd, locked: &KTermios, f: impl FnOnce() -> std::result::Result<T, Errno>) -> std::result::Result<T, Errno> {
    let any = *locked != KTermios::default();
    if any {
        tty::set_locked_termios(s, &KTermios::default())?;
    }
    let r = f();
    if any {
        tty::set_locked_termios(s, locked)?;
    }
    r
}

/// The slave's unread input as read: complete lines (canonical mode), then the
/// rest.
#[derive(Default)]
pub struct Input {
    pub lines: Vec<pb::TtyLine>,
    pub rest: Vec<u8>,
}

impl Input {
    pub fn len(&self) -> usize {
        self.lines.iter().map(|l| l.data.len() + 1).sum::<usize>() + self.rest.len()
    }
}

/// Reads the slave's unread input through crtool's non-blocking slave `s`:
/// complete lines one read each (canonical mode), then the rest, which canonical
/// mode keeps unreadable until its line ends: read with ICANON off for a moment.
/// On error, what was read so far comes along.
pub fn capture_input(s: BorrowedFd, t: &KTermios, locked: &KTermios) -> (Input, Option<Errno>) {
    let mut got = Input::default();
    let mut buf = [0u8; 4096];
    let canon = t.lflag & libc::ICANON != 0;
    if canon {
        // At most one line per byte of the 4096-byte buffer.
        for _ in 0..=4096 {
            match tty::read_now(s, &mut buf) {
                Ok(None) => break,
                Ok(Some(n)) => {
                    let data = buf[..n].to_vec();
                    let last = data.last().copied();
                    let ended = last.is_some_and(|c| c == b'\n' || (c != 0 && (c == t.cc[libc::VEOL] || c == t.cc[libc::VEOL2])));
                    got.lines.push(pb::TtyLine { data, eof: !ended });
                }
                Err(e) => return (got, Some(e)),
            }
        }
    }
    let mut read_rest = |rest: &mut Vec<u8>| -> std::result::Result<(), Errno> {
        while let Some(n) = tty::read_now(s, &mut buf)? {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    let r = if canon {
        unlocked(s, locked, || {
            let mut raw = *t;
            raw.lflag &= !libc::ICANON;
            raw.cc[libc::VMIN] = 0;
            raw.cc[libc::VTIME] = 0;
            tty::set_termios(s, &raw)?;
            let r = read_rest(&mut got.rest);
            tty::set_termios(s, t)?;
            r
        })
    } else {
        read_rest(&mut got.rest)
    };
    (got, r.err())
}

/// Hands `bytes` to the master's line discipline (its termios is fixed raw: they
/// are stored as they are).
pub fn push_output(m: BorrowedFd, bytes: &[u8]) -> std::result::Result<(), Errno> {
    bytes.iter().try_for_each(|&b| tty::push_input(m, b))
}

/// A byte that is none of `taken` (nor NUL, which n_tty reads as any disabled
/// character).
fn free_byte(taken: &[u8], prefer: u8) -> Option<u8> {
    std::iter::once(prefer).chain(1..=255).find(|b| *b != 0 && !taken.contains(b))
}

/// Hands input back to the slave's line discipline so that it holds what it held:
/// `input.lines` as complete lines, then `input.rest`. `t` is the slave's termios
/// (put back after), `locked` its locked termios; `packet_mode` the master's
/// (changing the flow-control characters would post a status to it).
pub fn push_input(s: BorrowedFd, t: &KTermios, locked: &KTermios, input: &Input, packet_mode: bool) -> std::result::Result<(), Errno> {
    if input.lines.is_empty() && input.rest.is_empty() {
        return Ok(());
    }
    let canon = t.lflag & libc::ICANON != 0;
    let mut w = *t;
    w.iflag &= !(libc::ISTRIP | libc::IUCLC | libc::INLCR | libc::IGNCR | libc::ICRNL | libc::PARMRK | libc::IXANY);
    w.lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL | libc::ECHOPRT | libc::ECHOKE | libc::FLUSHO);
    let specials = [libc::VINTR, libc::VQUIT, libc::VERASE, libc::VKILL, libc::VEOF, libc::VEOL, libc::VEOL2, libc::VSTART, libc::VSTOP, libc::VSUSP, libc::VREPRINT, libc::VWERASE, libc::VDISCARD];
    let lnext;
    if canon {
        // VLNEXT works only in canonical mode with IEXTEN; n_tty looks at it before
        // every other special character (signals and flow control too). It must be
        // none of them itself.
        w.lflag |= libc::IEXTEN;
        if w.cc[libc::VLNEXT] == 0 || specials.iter().any(|&i| w.cc[i] == w.cc[libc::VLNEXT]) {
            let taken: Vec<u8> = specials.iter().map(|&i| w.cc[i]).chain([b'\n', b'\r']).collect();
            w.cc[libc::VLNEXT] = free_byte(&taken, 0x16).ok_or(Errno::EINVAL)?;
        }
        lnext = w.cc[libc::VLNEXT];
    } else {
        lnext = 0;
        w.lflag &= !libc::ISIG;
        let (start, stop) = (w.cc[libc::VSTART], w.cc[libc::VSTOP]);
        if w.iflag & libc::IXON != 0 && input.rest.iter().any(|&c| c == start || c == stop) {
            if packet_mode {
                return Err(Errno::EOPNOTSUPP);
            }
            // Other flow-control characters, none of the data's (0 would make NUL
            // one: n_tty maps disabled characters to NUL).
            let mut taken = input.rest.clone();
            w.cc[libc::VSTART] = free_byte(&taken, 0x11).ok_or(Errno::EINVAL)?;
            taken.push(w.cc[libc::VSTART]);
            w.cc[libc::VSTOP] = free_byte(&taken, 0x13).ok_or(Errno::EINVAL)?;
        }
    }
    // In canonical mode every byte the line discipline treats specially (a NUL
    // too: a disabled character is 0) goes in escaped.
    let special: Vec<u8> = specials.iter().map(|&i| w.cc[i]).chain([b'\n', b'\r', 0, lnext]).collect();
    let put = |c: u8| tty::push_input(s, c);
    let put_data = |data: &[u8]| -> std::result::Result<(), Errno> {
        for &c in data {
            if canon && special.contains(&c) {
                put(lnext)?;
            }
            put(c)?;
        }
        Ok(())
    };
    unlocked(s, locked, || {
        tty::set_termios(s, &w)?;
        let r = (|| {
            for l in &input.lines {
                if l.eof {
                    put_data(&l.data)?;
                    put(t.cc[libc::VEOF])?;
                } else {
                    let (end, body) = l.data.split_last().ok_or(Errno::EINVAL)?;
                    put_data(body)?;
                    put(*end)?;
                }
            }
            put_data(&input.rest)
        })();
        tty::set_termios(s, t)?;
        r
    })
}

/// What TIOCINQ on the slave shows once `input` is in: complete lines (EOF markers
/// not counted) in canonical mode, every byte otherwise.
pub fn expected_inq(input: &Input, canon: bool) -> usize {
    if canon { input.lines.iter().map(|l| l.data.len()).sum() } else { input.rest.len() }
}
