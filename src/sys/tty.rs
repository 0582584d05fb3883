//! Terminal ioctls (ioctl_tty(2), tty_ioctl(4); drivers/tty/tty_io.c, pty.c,
//! tty_jobctrl.c) on pseudo-terminal pairs. On a master fd the termios, window size
//! and job-control ioctls act on its slave (tty_pair_get_tty).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Number of control characters of the kernel's `struct termios` (asm-generic).
pub const NCCS: usize = 19;

/// The kernel's `struct termios` (include/uapi/asm-generic/termbits.h), which
/// TCGETS/TCSETS and TIOC[GS]LCKTRMIOS copy (glibc's is larger).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KTermios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; NCCS],
}

fn ioctl_get<T: Default>(fd: BorrowedFd, req: libc::Ioctl) -> Result<T, Errno> {
    let mut v = T::default();
    // SAFETY: `req` is a TIOCG* request writing one `T` (its size matches the
    // request's argument type) into the local `v`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, &raw mut v) })?;
    Ok(v)
}

fn ioctl_set<T>(fd: BorrowedFd, req: libc::Ioctl, v: &T) -> Result<(), Errno> {
    // SAFETY: `req` is a TIOCS* request reading one `T` from `v`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, v as *const T) }).map(drop)
}

fn ioctl_int(fd: BorrowedFd, req: libc::Ioctl, arg: libc::c_ulong) -> Result<libc::c_int, Errno> {
    // SAFETY: `req` takes an integer argument (or none); no memory is passed.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) })
}

/// TCGETS: the (slave's) termios.
pub fn termios(fd: BorrowedFd) -> Result<KTermios, Errno> {
    ioctl_get(fd, libc::TCGETS)
}

/// TCSETS: sets it now (no drain, no flush).
pub fn set_termios(fd: BorrowedFd, t: &KTermios) -> Result<(), Errno> {
    ioctl_set(fd, libc::TCSETS, t)
}

/// TIOCGLCKTRMIOS: the locked termios (bits and characters that TCSETS may not
/// change).
pub fn locked_termios(fd: BorrowedFd) -> Result<KTermios, Errno> {
    ioctl_get(fd, libc::TIOCGLCKTRMIOS)
}

/// TIOCSLCKTRMIOS (CAP_SYS_ADMIN).
pub fn set_locked_termios(fd: BorrowedFd, t: &KTermios) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCSLCKTRMIOS, t)
}

struct WinsizeWrap(libc::winsize);

impl Default for WinsizeWrap {
    fn default() -> Self {
        WinsizeWrap(libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 })
    }
}

/// TIOCGWINSZ: (rows, columns, x pixels, y pixels).
pub fn winsize(fd: BorrowedFd) -> Result<[u16; 4], Errno> {
    let w: WinsizeWrap = ioctl_get(fd, libc::TIOCGWINSZ)?;
    Ok([w.0.ws_row, w.0.ws_col, w.0.ws_xpixel, w.0.ws_ypixel])
}

/// TIOCSWINSZ (sends SIGWINCH to the foreground group if the size changes).
pub fn set_winsize(fd: BorrowedFd, w: [u16; 4]) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCSWINSZ, &libc::winsize { ws_row: w[0], ws_col: w[1], ws_xpixel: w[2], ws_ypixel: w[3] })
}

fn get_int(fd: BorrowedFd, req: libc::Ioctl) -> Result<libc::c_int, Errno> {
    ioctl_get(fd, req)
}

/// TIOCGPTN on a master: the pair's index.
pub fn index(fd: BorrowedFd) -> Result<u32, Errno> {
    get_int(fd, libc::TIOCGPTN).map(|v| v as u32)
}

/// TIOCGPTLCK on a master: whether the slave is locked (cannot be opened).
pub fn pty_locked(fd: BorrowedFd) -> Result<bool, Errno> {
    get_int(fd, libc::TIOCGPTLCK).map(|v| v != 0)
}

/// TIOCSPTLCK on a master.
pub fn set_pty_locked(fd: BorrowedFd, on: bool) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCSPTLCK, &libc::c_int::from(on))
}

/// TIOCGPKT on a master: packet mode.
pub fn packet_mode(fd: BorrowedFd) -> Result<bool, Errno> {
    get_int(fd, libc::TIOCGPKT).map(|v| v != 0)
}

/// TIOCPKT on a master.
pub fn set_packet_mode(fd: BorrowedFd, on: bool) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCPKT, &libc::c_int::from(on))
}

/// TIOCGEXCL: exclusive mode (further opens fail with EBUSY but for
/// CAP_SYS_ADMIN).
pub fn exclusive(fd: BorrowedFd) -> Result<bool, Errno> {
    get_int(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

/// TIOCEXCL.
pub fn set_exclusive(fd: BorrowedFd) -> Result<(), Errno> {
    ioctl_int(fd, libc::TIOCEXCL, 0).map(drop)
}

/// TIOCGETD: the line discipline.
pub fn line_discipline(fd: BorrowedFd) -> Result<i32, Errno> {
    get_int(fd, libc::TIOCGETD)
}

/// TIOCGSID through a master: the session whose controlling terminal the slave is
/// (pid in the caller's namespace), `None` if it is none's.
pub fn session(fd: BorrowedFd) -> Result<Option<i32>, Errno> {
    match get_int(fd, libc::TIOCGSID) {
        Err(Errno::ENOTTY) => Ok(None),
        r => r.map(Some),
    }
}

/// TIOCGPGRP: the foreground process group (0: none).
pub fn foreground(fd: BorrowedFd) -> Result<i32, Errno> {
    get_int(fd, libc::TIOCGPGRP)
}

/// TIOCSPGRP from a process of the terminal's session (SIGTTOU must be blocked or
/// ignored when the caller is in a background group).
pub fn set_foreground(fd: BorrowedFd, pgrp: i32) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCSPGRP, &pgrp)
}

/// TIOCSCTTY: makes the terminal the caller's (a session leader without one)
/// controlling terminal.
pub fn set_controlling(fd: BorrowedFd) -> Result<(), Errno> {
    ioctl_int(fd, libc::TIOCSCTTY, 0).map(drop)
}

/// TIOCSTI: hands `byte` to the terminal's line discipline as if it had been
/// received (synchronously; CAP_SYS_ADMIN for a terminal not the caller's).
pub fn push_input(fd: BorrowedFd, byte: u8) -> Result<(), Errno> {
    ioctl_set(fd, libc::TIOCSTI, &byte)
}

/// TIOCINQ: bytes readable now (canonical mode: in complete lines).
pub fn input_len(fd: BorrowedFd) -> Result<usize, Errno> {
    get_int(fd, libc::FIONREAD).map(|v| v as usize)
}

/// TIOCGPTPEER on a master: opens its slave with exactly `flags` and O_NOCTTY (the
/// new description keeps them as open(2) flags: no O_LARGEFILE unless given, no
/// O_CLOEXEC, which /proc/PID/fdinfo would show ever after).
pub fn open_peer(fd: BorrowedFd, flags: i32) -> Result<OwnedFd, Errno> {
    let r = ioctl_int(fd, libc::TIOCGPTPEER, (flags | libc::O_NOCTTY) as libc::c_ulong)?;
    // SAFETY: the ioctl just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// poll(2) with zero timeout: the events of `events` (and POLLHUP/POLLERR) that
/// `fd` reports now. On a master: POLLPRI a pending packet-mode status byte,
/// POLLHUP every slave closed (TTY_OTHER_CLOSED); on a slave: no POLLOUT while
/// output is stopped (^S) or the master's queue is full.
pub fn poll_now(fd: BorrowedFd, events: i16) -> Result<i16, Errno> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    // SAFETY: one pollfd in a local; zero timeout.
    Errno::result(unsafe { libc::poll(&raw mut p, 1, 0) })?;
    Ok(p.revents)
}

/// TIOCGDEV: the device number of the terminal behind `fd` (also behind a
/// /dev/tty fd, whatever the caller's controlling terminal is now).
pub fn device(fd: BorrowedFd) -> Result<u64, Errno> {
    const TIOCGDEV: libc::Ioctl = 0x8004_5432;
    let v: libc::c_uint = ioctl_get(fd, TIOCGDEV)?;
    // The kernel's new_encode_dev: minor low 8 bits and bits 20-31, major 8-19.
    let (major, minor) = ((v >> 8) & 0xfff, (v & 0xff) | ((v >> 12) & 0xfff00));
    Ok(libc::makedev(major, minor))
}

/// read(2) that returns `Ok(None)` for EAGAIN.
pub fn read_now(fd: BorrowedFd, buf: &mut [u8]) -> Result<Option<usize>, Errno> {
    // SAFETY: reads at most buf.len() bytes into `buf`.
    match Errno::result(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }) {
        Err(Errno::EAGAIN) => Ok(None),
        r => r.map(|n| Some(n as usize)),
    }
}
