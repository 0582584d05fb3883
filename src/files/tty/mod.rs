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

mod queue;
mod restore;

pub use restore::Ptys;

use super::FdInfo;
use crate::error::{Error, Result};
use crate::sys::tty::{self, KTermios};
use images_format::pb::{self, file_entry::Kind, pty_file::Role};
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Major of /dev/ptmx and /dev/tty (minor 2 and 0).
const TTYAUX_MAJOR: u32 = 5;
/// The kernel's O_LARGEFILE on x86-64 (the libc crate's is 0 there: glibc adds it
/// by itself), which open(2) sets and TIOCGPTPEER does not.
pub(crate) const O_LARGEFILE: i32 = 0o100000;
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
    /// Pairs a process of the tree holds a slave (or /dev/tty) of.
    slave_held: BTreeSet<u32>,
}

impl PtyTable {
    /// Describes fd `info` of `pid` if it is a file of a pair of the tree (`None`
    /// otherwise: another character device, or a terminal outside the tree).
    pub fn dump(&mut self, pid: i32, info: &FdInfo, dup: &OwnedFd, st: &libc::stat) -> Result<Option<Kind>> {
        let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let (index, role) = if (major, minor) == (TTYAUX_MAJOR, 2) {
            let Some(index) = info.tty_index else { return Ok(None) };
            if let std::collections::btree_map::Entry::Vacant(v) = self.dups.entry(index) {
                let d = dup.try_clone().map_err(|e| Error::io(&info.link, e))?;
                v.insert((d, pid, info.fd));
            }
            (index, Role::Master)
        } else if let Some(index) = slave_index(st.st_rdev).filter(|i| self.masters.contains(i)) {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata("/dev/pts").map(|m| m.dev()).ok() != Some(st.st_dev) {
                return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("{} belongs to another devpts instance than crtool's /dev/pts", info.link), hint: Some("pseudo-terminals of a private devpts mount are not supported yet") });
            }
            (index, Role::Slave)
        } else if (major, minor) == (TTYAUX_MAJOR, 0) {
            // The terminal it was opened on (not the holder's controlling terminal
            // now: it may have changed since).
            let dev = tty::device(dup.as_fd()).map_err(|e| Error::sys(format!("pid {pid} fd {}: TIOCGDEV", info.fd), e))?;
            match slave_index(dev).filter(|i| self.masters.contains(i)) {
                Some(index) => (index, Role::DevTty),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        if flags & libc::O_ASYNC as u32 != 0 {
            self.with_async.insert(index);
        }
        if role != Role::Master {
            self.slave_held.insert(index);
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
    /// into the tree's namespace (`None`: outside the tree). Unread data is read
    /// and handed straight back (`queue`): the tree is left as it was.
    pub fn finish(&self, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Vec<pb::PtyPair>> {
        let mut out = Vec::new();
        if let Some((_, (_, pid, fd))) = self.dups.iter().next() {
            queue::probe().map_err(|why| Error::Unsupported {
                pid: *pid,
                fd: Some(*fd),
                what: format!("a pseudo-terminal master: crtool cannot hand bytes to a terminal ({why})"),
                hint: Some("crtool needs CAP_SYS_ADMIN in the initial user namespace for TIOCSTI to read a pseudo-terminal's queues without consuming them"),
            })?;
        }
        for (&index, (master, pid, fd)) in &self.dups {
            out.push(self.pair(index, master.as_fd(), *pid, *fd, vpid)?);
        }
        Ok(out)
    }

    fn pair(&self, index: u32, m: BorrowedFd, pid: i32, fd: i32, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<pb::PtyPair> {
        let sys = |what: &str, e: Errno| Error::sys(format!("pid {pid} fd {fd} (pty {index}): {what}"), e);
        let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(fd), what: format!("pseudo-terminal /dev/pts/{index}: {what}"), hint: Some(hint) };
        let ldisc = tty::line_discipline(m).map_err(|e| sys("TIOCGETD", e))?;
        if ldisc != 0 {
            return Err(refuse(format!("line discipline {ldisc}"), "only the default line discipline (N_TTY) is supported"));
        }
        let termios = tty::termios(m).map_err(|e| sys("TCGETS", e))?;
        if termios.lflag & libc::EXTPROC != 0 {
            return Err(refuse("it is in external processing mode (EXTPROC, telnetd's LINEMODE)".into(), "not supported; dump while the program runs without EXTPROC"));
        }
        let locked = tty::locked_termios(m).map_err(|e| sys("TIOCGLCKTRMIOS", e))?;
        let ws = tty::winsize(m).map_err(|e| sys("TIOCGWINSZ", e))?;
        let packet_mode = tty::packet_mode(m).map_err(|e| sys("TIOCGPKT", e))?;
        let locked_pty = tty::pty_locked(m).map_err(|e| sys("TIOCGPTLCK", e))?;
        let revents = tty::poll_now(m, libc::POLLPRI).map_err(|e| sys("poll", e))?;
        if revents & libc::POLLPRI != 0 {
            return Err(refuse("its master has a packet-mode status byte pending".into(), "retry the dump once the program has read it"));
        }
        let other_closed = revents & libc::POLLHUP != 0;
        let session = tty::session(m).map_err(|e| sys("TIOCGSID", e))?;
        // crtool's own slave description, to read the input queue (without
        // blocking) and the slave's modes. Not for a pair whose slave no one has
        // opened yet: its first close would make the master read EIO.
        let slave = if self.slave_held.contains(&index) || session.is_some() || other_closed {
            if locked_pty {
                tty::set_pty_locked(m, false).map_err(|e| sys("TIOCSPTLCK", e))?;
            }
            let s = tty::open_peer(m, libc::O_RDONLY | libc::O_NONBLOCK);
            if locked_pty {
                tty::set_pty_locked(m, true).map_err(|e| sys("TIOCSPTLCK", e))?;
            }
            let s = s.map_err(|e| sys("TIOCGPTPEER", e))?;
            use std::os::unix::fs::MetadataExt;
            let dev = nix::sys::stat::fstat(&s).map_err(|e| sys("fstat", e))?.st_dev;
            if std::fs::metadata("/dev/pts").map(|m| m.dev()).ok() != Some(dev) {
                return Err(refuse("it belongs to another devpts instance than crtool's /dev/pts".into(), "pseudo-terminals of a private devpts mount are not supported yet"));
            }
            Some(s)
        } else {
            None
        };
        let exclusive = match &slave {
            Some(s) => tty::exclusive(s.as_fd()).map_err(|e| sys("TIOCGEXCL", e))?,
            None => false,
        };
        let (session, fg_pgrp) = match session {
            None => (0, 0),
            Some(sid) => {
                let v = vpid(sid).ok_or_else(|| refuse(format!("it is the controlling terminal of session {sid}, outside the dumped tree"), "dump the tree from that session's leader"))?;
                let fg = tty::foreground(m).map_err(|e| sys("TIOCGPGRP", e))?;
                (v, if fg == 0 { 0 } else { vpid(fg).unwrap_or(fg) })
            }
        };
        // Unread data, both ways.
        let out_len = tty::input_len(m).map_err(|e| sys("TIOCINQ on the master", e))?;
        let in_len = match &slave {
            Some(s) => tty::input_len(s.as_fd()).map_err(|e| sys("TIOCINQ on the slave", e))?,
            None => 0,
        };
        if self.with_async.contains(&index) && (out_len > 0 || in_len > 0) {
            return Err(refuse("it has unread data and signal-driven I/O (O_ASYNC): handing the data back would raise SIGIO".into(), "retry the dump once the program has read it"));
        }
        if out_len >= queue::MAX_QUEUED || in_len >= queue::MAX_QUEUED {
            return Err(refuse(format!("its queues are (nearly) full ({out_len} bytes of output, {in_len} of input unread): more may wait behind them in the kernel"), "retry the dump once the program has read them"));
        }
        if let Some(s) = &slave {
            // The slave cannot write although the master's queue has room: output
            // is stopped (^S, tcflow), which cannot be read back.
            if tty::poll_now(s.as_fd(), libc::POLLOUT).map_err(|e| sys("poll", e))? & libc::POLLOUT == 0 {
                return Err(refuse("its output is stopped (^S or tcflow)".into(), "retry the dump once output is started again (^Q)"));
            }
        }
        let (output, out_err) = if out_len > 0 { queue::capture_output(m, out_len, packet_mode) } else { (Vec::new(), None) };
        let (input, in_err) = match &slave {
            Some(s) => queue::capture_input(s.as_fd(), &termios, &locked),
            None => (queue::Input::default(), None),
        };
        // Handed back at once, both, also after an error: nothing stays consumed.
        let back_out = queue::push_output(m, &output);
        let back_in = slave.as_ref().map_or(Ok(()), |s| queue::push_input(s.as_fd(), &termios, &locked, &input, packet_mode));
        let lost = |what: &str, e: Errno| Error::Reported(format!("pid {pid} fd {fd}: pseudo-terminal /dev/pts/{index}: handing its unread {what} back failed ({e}): the program may have lost it"));
        back_out.map_err(|e| lost("output", e))?;
        back_in.map_err(|e| lost("input", e))?;
        if let Some(e) = out_err {
            return Err(sys("reading the master's queue", e));
        }
        if let Some(e) = in_err {
            return Err(sys("reading the slave's queue", e));
        }
        let canon = termios.lflag & libc::ICANON != 0;
        let now_out = tty::input_len(m).map_err(|e| sys("TIOCINQ on the master", e))?;
        let now_in = match &slave {
            Some(s) => tty::input_len(s.as_fd()).map_err(|e| sys("TIOCINQ on the slave", e))?,
            None => 0,
        };
        if now_out != output.len() || now_in != queue::expected_inq(&input, canon) {
            return Err(Error::Reported(format!(
                "pid {pid} fd {fd}: pseudo-terminal /dev/pts/{index}: after handing its unread data back the queues hold {now_out} and {now_in} bytes, not {} and {}",
                output.len(),
                queue::expected_inq(&input, canon)
            )));
        }
        if input.len() >= queue::MAX_QUEUED {
            return Err(refuse("its input queue is (nearly) full: more may wait behind it in the kernel".into(), "retry the dump once the program has read it"));
        }
        Ok(pb::PtyPair {
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
            lines: input.lines,
            input: input.rest,
            output,
            other_closed,
        })
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

fn to_pb(t: &KTermios) -> pb::Termios {
    pb::Termios { iflag: t.iflag, oflag: t.oflag, cflag: t.cflag, lflag: t.lflag, line: t.line as u32, cc: t.cc.to_vec() }
}

pub(crate) fn from_pb(t: Option<&pb::Termios>) -> KTermios {
    let Some(t) = t else { return KTermios::default() };
    let mut cc = [0u8; tty::NCCS];
    for (d, s) in cc.iter_mut().zip(&t.cc) {
        *d = *s;
    }
    KTermios { iflag: t.iflag, oflag: t.oflag, cflag: t.cflag, lflag: t.lflag, line: t.line as u8, cc }
}

