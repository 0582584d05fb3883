//! Pseudo-terminal pairs whose master the tree holds (tmux, screen, sshd, expect,
//! script): the master (/dev/ptmx), slaves (/dev/pts/N), /dev/tty standing for one
//! as a controlling terminal, and each pair's state: index, termios and locked
//! termios, window size, packet mode, lock, exclusive mode, the session it is the
//! controlling terminal of and its foreground group, and unread data both ways.
//!
//! Unread data is read by crtool and handed straight back with TIOCSTI (the dump
//! consumes nothing), under a termios that makes the line discipline store each
//! byte as it is: no echo, no input translation, special characters escaped with
//! VLNEXT in canonical mode, so complete lines stay lines and the line being edited
//! stays unfinished (drivers/tty/n_tty.c). Restore hands the same bytes in the same
//! way. What cannot be seen or put back is refused: pending packet-mode status,
//! queued data on a tty with O_ASYNC (the put-back would raise SIGIO), line
//! disciplines other than N_TTY, ptys of another devpts instance.

use super::FdInfo;
use crate::error::{Error, Result};
use crate::sys::tty::{self, KTermios};
use images_format::pb::{self, file_entry::Kind, pty_file::Role};
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Major of /dev/ptmx and /dev/tty (minor 2 and 0).
const TTYAUX_MAJOR: u32 = 5;
/// The kernel's O_LARGEFILE on x86-64 (the libc crate's is 0 there: glibc adds it
/// by itself), which open(2) sets and TIOCGPTPEER does not.
const O_LARGEFILE: i32 = 0o100000;
/// First major of UNIX98 pty slaves (8 majors).
const PTS_MAJOR: u32 = 136;

/// The index of the pty slave `rdev` is, if it is one.
pub fn slave_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (PTS_MAJOR..PTS_MAJOR + 8).contains(&major).then(|| ((major - PTS_MAJOR) << 8) + minor)
}

/// The pty index of a controlling terminal as /proc/PID/stat's tty_nr (field 7)
/// encodes it (minor in bits 0-7 and 20-31, major in 8-15).
pub fn ctty_index(tty_nr: u64) -> Option<u32> {
    let major = ((tty_nr >> 8) & 0xfff) as u32;
    let minor = ((tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)) as u32;
    slave_index(libc::makedev(major, minor))
}

/// The pty pairs of the tree, while it is dumped.
#[derive(Default)]
pub struct PtyTable {
    /// Indices of the pairs whose master a process of the tree holds (fdinfo
    /// tty-index), known before any fd is dumped.
    pub masters: BTreeSet<u32>,
    /// crtool's duplicate of each master, and where it was first seen (pid, fd).
    dups: BTreeMap<u32, (OwnedFd, i32, i32)>,
    /// Pairs with a description in O_ASYNC mode.
    with_async: BTreeSet<u32>,
}

impl PtyTable {
    /// Describes fd `info` of `pid` if it is a file of a pair of the tree (`None`
    /// otherwise: another character device, or a terminal outside the tree).
    pub fn dump(&mut self, pid: i32, info: &FdInfo, dup: &OwnedFd, st: &libc::stat) -> Result<Option<Kind>> {
        let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let (index, role) = if (major, minor) == (TTYAUX_MAJOR, 2) {
            let Some(index) = info.tty_index else { return Ok(None) };
            if !self.dups.contains_key(&index) {
                let d = dup.try_clone().map_err(|e| Error::io(&info.link, e))?;
                self.dups.insert(index, (d, pid, info.fd));
            }
            (index, Role::Master)
        } else if let Some(index) = slave_index(st.st_rdev).filter(|i| self.masters.contains(i)) {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata("/dev/pts").map(|m| m.dev()).ok() != Some(st.st_dev) {
                return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("{} belongs to another devpts instance than crtool's /dev/pts", info.link), hint: Some("pseudo-terminals of a private devpts mount are not supported yet") });
            }
            (index, Role::Slave)
        } else if (major, minor) == (TTYAUX_MAJOR, 0) {
            let tty_nr = crate::dump::process_stat_field(pid, 7)?;
            match ctty_index(tty_nr).filter(|i| self.masters.contains(i)) {
                Some(index) => (index, Role::DevTty),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        if flags & libc::O_ASYNC as u32 != 0 {
            self.with_async.insert(index);
        }
        Ok(Some(Kind::Pty(pb::PtyFile { index, role: role as i32, flags, path: info.link.clone() })))
    }

    /// Refuses pairs a process outside the tree (`tree`: its pids) also uses: holds
    /// the master or a slave, or has one as controlling terminal. Restore makes new
    /// pairs, which that process would not share; and the dump would leave it with
    /// a hung-up terminal.
    pub fn check_outside(&self, tree: &BTreeSet<i32>) -> Result<()> {
        if self.dups.is_empty() {
            return Ok(());
        }
        let me = std::process::id() as i32;
        let Ok(all) = procfs::process::all_processes() else { return Ok(()) };
        for p in all.flatten() {
            let pid = p.pid();
            if pid == me || tree.contains(&pid) {
                continue;
            }
            let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
            let refuse = |index: u32, how: String| {
                let (_, tpid, tfd) = self.dups[&index];
                Error::Unsupported {
                    pid: tpid,
                    fd: Some(tfd),
                    what: format!("pseudo-terminal /dev/pts/{index}: {how} pid {pid} ({}), outside the dumped tree", comm()),
                    hint: Some("dump the tree that holds every process using the terminal"),
                }
            };
            if let Some(i) = p.stat().ok().and_then(|st| ctty_index(st.tty_nr as u64)).filter(|i| self.dups.contains_key(i)) {
                return Err(refuse(i, "it is the controlling terminal of".into()));
            }
            let Ok(fds) = p.fd() else { continue };
            for f in fds.flatten() {
                let procfs::process::FDTarget::Path(path) = &f.target else { continue };
                let path = path.to_string_lossy();
                let index = match path.strip_prefix("/dev/pts/") {
                    Some("ptmx") => None,
                    Some(n) => n.parse::<u32>().ok(),
                    None => None,
                };
                let index = if path == "/dev/ptmx" || path == "/dev/pts/ptmx" {
                    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", f.fd)).unwrap_or_default();
                    info.lines().find_map(|l| l.strip_prefix("tty-index:")).and_then(|v| v.trim().parse().ok())
                } else {
                    index
                };
                if let Some(i) = index.filter(|i| self.dups.contains_key(i)) {
                    return Err(refuse(i, format!("its {} is also open (fd {}) in", if path.ends_with("ptmx") { "master" } else { "slave" }, f.fd)));
                }
            }
        }
        Ok(())
    }

    /// Describes every pair (in index order). `vpid` maps a pid as crtool sees it
    /// into the tree's namespace (`None`: outside the tree).
    pub fn finish(&self, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Vec<pb::PtyPair>> {
        let mut out = Vec::new();
        if !self.dups.is_empty() && !has_sys_admin() {
            let (_, (_, pid, fd)) = self.dups.iter().next().unwrap();
            return Err(Error::Unsupported { pid: *pid, fd: Some(*fd), what: "a pseudo-terminal master".into(), hint: Some("crtool needs CAP_SYS_ADMIN to read a pseudo-terminal's queues and hand them back (TIOCSTI)") });
        }
        for (&index, (master, pid, fd)) in &self.dups {
            let (pid, fd) = (*pid, *fd);
            let m = master.as_fd();
            let sys = |what: &str, e: Errno| Error::sys(format!("pid {pid} fd {fd} (pty {index}): {what}"), e);
            let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(fd), what: format!("pseudo-terminal /dev/pts/{index}: {what}"), hint: Some(hint) };
            let ldisc = tty::line_discipline(m).map_err(|e| sys("TIOCGETD", e))?;
            if tty::termios(m).map_err(|e| sys("TCGETS", e))?.lflag & libc::EXTPROC != 0 {
                return Err(refuse("it is in external processing mode (EXTPROC)".into(), "not supported"));
            }
            if ldisc != 0 {
                return Err(refuse(format!("line discipline {ldisc}"), "only the default line discipline (N_TTY) is supported"));
            }
            let termios = tty::termios(m).map_err(|e| sys("TCGETS", e))?;
            let locked = tty::locked_termios(m).map_err(|e| sys("TIOCGLCKTRMIOS", e))?;
            let ws = tty::winsize(m).map_err(|e| sys("TIOCGWINSZ", e))?;
            let packet_mode = tty::packet_mode(m).map_err(|e| sys("TIOCGPKT", e))?;
            let locked_pty = tty::pty_locked(m).map_err(|e| sys("TIOCGPTLCK", e))?;
            // crtool's own slave description: to read the input queue (without
            // blocking) and the slave's exclusive flag.
            if locked_pty {
                tty::set_pty_locked(m, false).map_err(|e| sys("TIOCSPTLCK", e))?;
            }
            let slave = tty::open_peer(m, libc::O_RDONLY | libc::O_NONBLOCK);
            if locked_pty {
                tty::set_pty_locked(m, true).map_err(|e| sys("TIOCSPTLCK", e))?;
            }
            let slave = slave.map_err(|e| sys("TIOCGPTPEER", e))?;
            let s = slave.as_fd();
            let exclusive = tty::exclusive(s).map_err(|e| sys("TIOCGEXCL", e))?;
            let (session, fg_pgrp) = match tty::session(m).map_err(|e| sys("TIOCGSID", e))? {
                None => (0, 0),
                Some(sid) => {
                    let v = vpid(sid).ok_or_else(|| refuse(format!("it is the controlling terminal of session {sid}, outside the dumped tree"), "dump the tree from that session's leader"))?;
                    let fg = tty::foreground(m).map_err(|e| sys("TIOCGPGRP", e))?;
                    (v, if fg == 0 { 0 } else { vpid(fg).unwrap_or(fg) })
                }
            };
            // Unread data, both ways.
            if tty::has_priority_data(m).map_err(|e| sys("poll", e))? {
                return Err(refuse("its master has a packet-mode status byte pending".into(), "let the program read it first"));
            }
            let out_len = tty::input_len(m).map_err(|e| sys("TIOCINQ on the master", e))?;
            let in_len = tty::input_len(s).map_err(|e| sys("TIOCINQ on the slave", e))?;
            if self.with_async.contains(&index) && (out_len > 0 || in_len > 0) {
                return Err(refuse("it has unread data and signal-driven I/O (O_ASYNC): handing the data back would raise SIGIO".into(), "let the program read it first"));
            }
            let output = if out_len > 0 { capture_output(m, packet_mode).map_err(|e| sys("reading the master's queue", e))? } else { Vec::new() };
            let captured = capture_input(s, &termios, &locked);
            let (lines, input) = match captured {
                Ok(c) => c,
                Err(e) => {
                    let _ = push_output(m, &output);
                    return Err(sys("reading the slave's queue", e));
                }
            };
            // Handed back at once: nothing stays consumed, whatever happens next.
            let back = push_output(m, &output).and_then(|()| push_input(s, &termios, &locked, &lines, &input, packet_mode));
            back.map_err(|e| sys("handing the unread data back (TIOCSTI)", e))?;
            out.push(pb::PtyPair {
                index,
                termios: Some(to_pb(&termios)),
                locked: Some(to_pb(&locked)),
                rows: ws[0] as u32,
                cols: ws[1] as u32,
                xpixel: ws[2] as u32,
                ypixel: ws[3] as u32,
                packet_mode,
                locked_pty,
                exclusive,
                session,
                fg_pgrp,
                lines,
                input,
                output,
            });
        }
        Ok(out)
    }
}

/// One line about a pair for `crtool show`.
pub fn describe_pair(p: &pb::PtyPair) -> String {
    let t = from_pb(p.termios.as_ref());
    let mut s = format!("/dev/pts/{}: {}x{}, {}", p.index, p.cols, p.rows, if t.lflag & libc::ICANON != 0 { "canonical" } else { "raw" });
    if p.session != 0 {
        s += &format!(", controlling terminal of session {} (foreground group {})", p.session, p.fg_pgrp);
    }
    for (on, what) in [(p.packet_mode, "packet mode"), (p.locked_pty, "locked"), (p.exclusive, "exclusive")] {
        if on {
            s += &format!(", {what}");
        }
    }
    let lines: usize = p.lines.iter().map(|l| l.data.len()).sum();
    s + &format!("; unread: {} line(s) ({lines} bytes) + {} bytes of input, {} bytes of output", p.lines.len(), p.input.len(), p.output.len())
}

/// Whether crtool has CAP_SYS_ADMIN (capability 21, capabilities(7)).
fn has_sys_admin() -> bool {
    procfs::process::Process::myself().and_then(|p| p.status()).is_ok_and(|s| s.capeff & (1 << 21) != 0)
}

fn to_pb(t: &KTermios) -> pb::Termios {
    pb::Termios { iflag: t.iflag, oflag: t.oflag, cflag: t.cflag, lflag: t.lflag, line: t.line as u32, cc: t.cc.to_vec() }
}

fn from_pb(t: Option<&pb::Termios>) -> KTermios {
    let Some(t) = t else { return KTermios::default() };
    let mut cc = [0u8; tty::NCCS];
    for (d, s) in cc.iter_mut().zip(&t.cc) {
        *d = *s;
    }
    KTermios { iflag: t.iflag, oflag: t.oflag, cflag: t.cflag, lflag: t.lflag, line: t.line as u8, cc }
}

/// Reads a master's unread bytes (the slave's output) without blocking; in packet
/// mode each read starts with a TIOCPKT_DATA byte, dropped here.
fn capture_output(m: BorrowedFd, packet: bool) -> std::result::Result<Vec<u8>, Errno> {
    with_nonblock(m, || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO: no slave is open any more (TTY_OTHER_CLOSED) and all is read.
        while let Some(n) = tty::read_now(m, &mut buf).or_else(|e| if e == Errno::EIO { Ok(None) } else { Err(e) })? {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[usize::from(packet).min(n)..n]);
        }
        Ok(out)
    })
}

/// Runs `f` with O_NONBLOCK set on the description of `fd` (the task's own, so put
/// back as it was).
fn with_nonblock<T>(fd: BorrowedFd, f: impl FnOnce() -> std::result::Result<T, Errno>) -> std::result::Result<T, Errno> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let old = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(old | OFlag::O_NONBLOCK))?;
    let r = f();
    fcntl(fd, FcntlArg::F_SETFL(old))?;
    r
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

/// Reads the slave's unread input through crtool's non-blocking slave `s`:
/// complete lines one read each (canonical mode), then the rest, which canonical
/// mode keeps unreadable until its line ends: read with ICANON off for a moment.
fn capture_input(s: BorrowedFd, t: &KTermios, locked: &KTermios) -> std::result::Result<(Vec<pb::TtyLine>, Vec<u8>), Errno> {
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    let canon = t.lflag & libc::ICANON != 0 && t.lflag & libc::EXTPROC == 0;
    if canon {
        // At most one line per byte of the 4096-byte buffer (and one per EOF).
        for _ in 0..=4096 {
            let Some(n) = tty::read_now(s, &mut buf)? else { break };
            let data = buf[..n].to_vec();
            let last = data.last().copied();
            let ended = last.is_some_and(|c| c == b'\n' || (c != 0 && (c == t.cc[libc::VEOL] || c == t.cc[libc::VEOL2])));
            lines.push(pb::TtyLine { data, eof: !ended });
        }
    }
    let mut rest = Vec::new();
    let mut read_rest = || -> std::result::Result<(), Errno> {
        while let Some(n) = tty::read_now(s, &mut buf)? {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    if canon {
        unlocked(s, locked, || {
            let mut raw = *t;
            raw.lflag &= !libc::ICANON;
            raw.cc[libc::VMIN] = 0;
            raw.cc[libc::VTIME] = 0;
            tty::set_termios(s, &raw)?;
            let r = read_rest();
            tty::set_termios(s, t)?;
            r
        })?;
    } else {
        read_rest()?;
    }
    Ok((lines, rest))
}

/// Hands `bytes` to the master's line discipline (its termios is fixed raw: they
/// are stored as they are).
fn push_output(m: BorrowedFd, bytes: &[u8]) -> std::result::Result<(), Errno> {
    bytes.iter().try_for_each(|&b| tty::push_input(m, b))
}

/// Hands input back to the slave's line discipline so that it holds what it held:
/// `lines` as complete lines, then `rest`. `t` is the slave's termios (put back
/// after), `locked` its locked termios.
fn push_input(s: BorrowedFd, t: &KTermios, locked: &KTermios, lines: &[pb::TtyLine], rest: &[u8], packet_mode: bool) -> std::result::Result<(), Errno> {
    if lines.is_empty() && rest.is_empty() {
        return Ok(());
    }
    let canon = t.lflag & libc::ICANON != 0 && t.lflag & libc::EXTPROC == 0;
    let mut w = *t;
    w.iflag &= !(libc::ISTRIP | libc::IUCLC | libc::INLCR | libc::IGNCR | libc::ICRNL | libc::PARMRK | libc::IXANY);
    w.lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL | libc::ECHOPRT | libc::ECHOKE | libc::FLUSHO);
    let lnext;
    if canon {
        // VLNEXT works only in canonical mode with IEXTEN; it comes before every
        // other special character (signals and flow control too).
        w.lflag |= libc::IEXTEN;
        if w.cc[libc::VLNEXT] == 0 {
            w.cc[libc::VLNEXT] = 0x16;
        }
        lnext = w.cc[libc::VLNEXT];
    } else {
        lnext = 0;
        w.lflag &= !libc::ISIG;
        let (start, stop) = (w.cc[libc::VSTART], w.cc[libc::VSTOP]);
        if w.iflag & libc::IXON != 0 && rest.iter().any(|&c| c == start || c == stop) {
            if packet_mode {
                // Changing the flow-control characters would post a packet-mode
                // status to the master.
                return Err(Errno::EOPNOTSUPP);
            }
            w.cc[libc::VSTART] = 0;
            w.cc[libc::VSTOP] = 0;
        }
    }
    // In canonical mode every byte the line discipline treats specially (a NUL
    // too: a disabled character is 0) goes in escaped.
    let special: Vec<u8> = {
        let mut v = vec![b'\n', b'\r', 0];
        for i in [libc::VINTR, libc::VQUIT, libc::VERASE, libc::VKILL, libc::VEOF, libc::VEOL, libc::VEOL2, libc::VSTART, libc::VSTOP, libc::VSUSP, libc::VREPRINT, libc::VWERASE, libc::VLNEXT, libc::VDISCARD] {
            v.push(w.cc[i]);
        }
        v
    };
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
            for l in lines {
                if l.eof {
                    put_data(&l.data)?;
                    put(t.cc[libc::VEOF])?;
                } else {
                    let (end, body) = l.data.split_last().ok_or(Errno::EINVAL)?;
                    put_data(body)?;
                    put(*end)?;
                }
            }
            put_data(rest)
        })();
        tty::set_termios(s, t)?;
        r
    })
}

/// The pty pairs of the images, made again before the tree is forked.
pub struct Ptys {
    /// Master and a slave of crtool's (O_RDWR|O_NOCTTY) per index.
    pairs: BTreeMap<u32, (OwnedFd, OwnedFd)>,
    images: Vec<pb::PtyPair>,
}

impl Ptys {
    /// Opens every pair at its index, sets its termios, window size and modes and
    /// refills its queues. `files` give the path of each master.
    pub fn create(images: &[pb::PtyPair], files: &[pb::FileEntry]) -> Result<Ptys> {
        let mut pairs = BTreeMap::new();
        let mut spare = Vec::new();
        for p in images {
            let path = files
                .iter()
                .find_map(|f| match &f.kind {
                    Some(Kind::Pty(x)) if x.index == p.index && x.role() == Role::Master => Some(x.path.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "/dev/ptmx".into());
            let fail = |what: String| Error::Reported(format!("cannot restore pseudo-terminal /dev/pts/{}: {what}", p.index));
            // devpts hands out the lowest free index: open until ours comes.
            let master = loop {
                let m = crate::sys::fd::open_at_pos(&path, libc::O_RDWR | libc::O_NOCTTY, 0).map_err(|e| fail(format!("opening {path}: {e}")))?;
                let got = tty::index(m.as_fd()).map_err(|e| fail(format!("TIOCGPTN: {e}")))?;
                match got.cmp(&p.index) {
                    std::cmp::Ordering::Equal => break m,
                    std::cmp::Ordering::Less if spare.len() < 4096 => spare.push(m),
                    _ => return Err(fail("that index is in use by another pseudo-terminal (is the dumped program still running, e.g. dumped with --leave-running?)".into())),
                }
            };
            let m = master.as_fd();
            let sys = |what: &str, e: Errno| fail(format!("{what}: {e}"));
            tty::set_pty_locked(m, false).map_err(|e| sys("TIOCSPTLCK", e))?;
            let slave = tty::open_peer(m, libc::O_RDWR).map_err(|e| sys("TIOCGPTPEER", e))?;
            let s = slave.as_fd();
            let t = from_pb(p.termios.as_ref());
            if t.line != 0 {
                return Err(fail(format!("line discipline {} in the images", t.line)));
            }
            tty::set_termios(s, &t).map_err(|e| sys("TCSETS", e))?;
            tty::set_winsize(m, [p.rows as u16, p.cols as u16, p.xpixel as u16, p.ypixel as u16]).map_err(|e| sys("TIOCSWINSZ", e))?;
            push_output(m, &p.output).map_err(|e| sys("refilling the master's queue (TIOCSTI)", e))?;
            push_input(s, &t, &KTermios::default(), &p.lines, &p.input, false).map_err(|e| sys("refilling the slave's queue (TIOCSTI)", e))?;
            let locked = from_pb(p.locked.as_ref());
            if locked != KTermios::default() {
                tty::set_locked_termios(s, &locked).map_err(|e| sys("TIOCSLCKTRMIOS", e))?;
            }
            if p.packet_mode {
                tty::set_packet_mode(m, true).map_err(|e| sys("TIOCPKT", e))?;
            }
            pairs.insert(p.index, (master, slave));
        }
        Ok(Ptys { pairs, images: images.to_vec() })
    }

    /// Opens `f` again: the master itself, a new slave description, or /dev/tty
    /// through a short-lived helper whose controlling terminal the pair is.
    pub fn open(&self, f: &pb::PtyFile) -> std::io::Result<OwnedFd> {
        let (master, slave) = self.pairs.get(&f.index).ok_or_else(|| std::io::Error::other(format!("pty {} is not in tty.img", f.index)))?;
        let flags = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
        match f.role() {
            Role::Master => {
                let fd = master.try_clone()?;
                crate::sys::fd::set_status_flags(&fd, f.flags)?;
                Ok(fd)
            }
            // As open(2) did, or TIOCGPTPEER (no O_LARGEFILE) as glibc's openpty.
            Role::Slave => Ok(tty::open_peer(master.as_fd(), (flags & !libc::O_ASYNC) | (f.flags as i32 & O_LARGEFILE))?),
            Role::DevTty => open_dev_tty(slave.as_fd(), flags & !libc::O_ASYNC),
        }
    }

    /// crtool's slave of pair `index` (for TIOCSCTTY in the session leader).
    pub fn slave(&self, index: u32) -> Option<BorrowedFd<'_>> {
        self.pairs.get(&index).map(|(_, s)| s.as_fd())
    }

    /// Sets what would stop further opens (exclusive mode, the pty lock), once every
    /// description is open.
    pub fn seal(&self) -> Result<()> {
        for p in &self.images {
            let Some((m, s)) = self.pairs.get(&p.index) else { continue };
            let fail = |what: &str, e: Errno| Error::Reported(format!("cannot restore pseudo-terminal /dev/pts/{}: {what}: {e}", p.index));
            if p.exclusive {
                tty::set_exclusive(s.as_fd()).map_err(|e| fail("TIOCEXCL", e))?;
            }
            if p.locked_pty {
                tty::set_pty_locked(m.as_fd(), true).map_err(|e| fail("TIOCSPTLCK", e))?;
            }
        }
        Ok(())
    }
}

/// Opens /dev/tty as a process whose controlling terminal is `slave` would: in a
/// forked helper that starts a session, takes the terminal (TIOCSCTTY), opens
/// /dev/tty and waits while crtool takes the fd (pidfd_getfd); its exit leaves the
/// terminal free for the restored session.
fn open_dev_tty(slave: BorrowedFd, flags: i32) -> std::io::Result<OwnedFd> {
    use crate::sys::process::{Forked, fork_with_pids};
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match fork_with_pids(&[], 0)? {
        Forked::Child => {
            drop(ready_r);
            drop(done_w);
            let fd = nix::unistd::setsid()
                .map_err(std::io::Error::from)
                .and_then(|_| tty::set_controlling(slave).map_err(std::io::Error::from))
                .and_then(|()| crate::sys::fd::open_at_pos("/dev/tty", flags | libc::O_NOCTTY, 0));
            let n: i32 = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
            crate::sys::fd::write_raw(ready_w.as_raw_fd(), &n.to_ne_bytes());
            let mut b = [0u8; 1];
            let _ = crate::sys::fd::read_raw(done_r.as_raw_fd(), &mut b);
            crate::sys::process::exit_now(0)
        }
        Forked::Parent(child) => {
            drop(ready_w);
            drop(done_r);
            let mut b = [0u8; 4];
            let got = crate::sys::fd::read_raw(ready_r.as_raw_fd(), &mut b);
            let n = i32::from_ne_bytes(b);
            let r = match got {
                Ok(4) if n >= 0 => crate::sys::process::pidfd_open(child).and_then(|p| crate::sys::process::pidfd_getfd(&p, n)).map_err(std::io::Error::from),
                _ => Err(std::io::Error::other("the helper could not open /dev/tty with the pseudo-terminal as its controlling terminal")),
            };
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            r
        }
    }
}
