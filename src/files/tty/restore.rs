//! Making pseudo-terminal pairs again (in crtool, before the tree is forked).

use super::queue::{self, Input};
use super::{O_LARGEFILE, from_pb};
use crate::error::{Error, Result};
use crate::sys::tty::{self, KTermios};
use images_format::pb::{self, file_entry::Kind, pty_file::Role};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The pty pairs of the images, made again.
pub struct Ptys {
    /// Master and, where one is needed, a slave of crtool's (O_RDWR|O_NOCTTY) per
    /// index. A slave nobody had opened since the pair was made is not opened
    /// either: opening and closing one makes the master read EIO (TTY_OTHER_CLOSED).
    pairs: BTreeMap<u32, (OwnedFd, Option<OwnedFd>)>,
    images: Vec<pb::PtyPair>,
}

impl Ptys {
    /// Opens every pair at its index, sets its termios, window size and modes and
    /// refills its queues. `files` give the path of each master and which pairs the
    /// tree holds slaves of.
    pub fn create(images: &[pb::PtyPair], files: &[pb::FileEntry]) -> Result<Ptys> {
        let mut pairs = BTreeMap::new();
        let mut spare = Vec::new();
        let ptys: Vec<&pb::PtyFile> = files.iter().filter_map(|f| match &f.kind {
            Some(Kind::Pty(x)) => Some(x),
            _ => None,
        }).collect();
        for p in images {
            let path = ptys.iter().find(|x| x.index == p.index && x.role() == Role::Master).map_or("/dev/ptmx".to_string(), |x| x.path.clone());
            let fail = |what: String| Error::Reported(format!("cannot restore pseudo-terminal /dev/pts/{}: {what}", p.index));
            // devpts hands out the lowest free index: open until ours comes.
            let master = loop {
                let m = crate::sys::fd::open_at_pos(&path, libc::O_RDWR | libc::O_NOCTTY, 0).map_err(|e| fail(format!("opening {path}: {e}")))?;
                let got = tty::index(m.as_fd()).map_err(|e| fail(format!("TIOCGPTN: {e}")))?;
                match got.cmp(&p.index) {
                    std::cmp::Ordering::Equal => break m,
                    std::cmp::Ordering::Less if spare.len() < 4096 => spare.push(m),
                    _ => return Err(fail("that index is in use by another pseudo-terminal (is the dumped program still running, e.g. dumped with --leave-running? or another program took it meanwhile: try again)".into())),
                }
            };
            let m = master.as_fd();
            let sys = |what: &str, e: Errno| fail(format!("{what}: {e}"));
            // (A new pair is locked; `seal` locks it again if it was.)
            tty::set_pty_locked(m, false).map_err(|e| sys("TIOCSPTLCK", e))?;
            let t = from_pb(p.termios.as_ref());
            if t.line != 0 {
                return Err(fail(format!("line discipline {} in the images", t.line)));
            }
            // Termios, window size and locked termios through the master (they are
            // the slave's).
            tty::set_termios(m, &t).map_err(|e| sys("TCSETS", e))?;
            tty::set_winsize(m, [p.rows as u16, p.cols as u16, p.xpixel as u16, p.ypixel as u16]).map_err(|e| sys("TIOCSWINSZ", e))?;
            let input = Input { lines: p.lines.clone(), rest: p.input.clone() };
            let held = ptys.iter().any(|x| x.index == p.index && x.role() != Role::Master);
            let slave = if held || p.session != 0 || p.other_closed || p.exclusive || input.len() > 0 {
                Some(tty::open_peer(m, libc::O_RDWR).map_err(|e| sys("TIOCGPTPEER", e))?)
            } else {
                None
            };
            let refill = |what: &str, e: Errno| fail(format!("refilling the {what} queue (TIOCSTI, which needs CAP_SYS_ADMIN in the initial user namespace): {e}"));
            queue::push_output(m, &p.output).map_err(|e| refill("master's", e))?;
            if let Some(s) = &slave {
                queue::push_input(s.as_fd(), &t, &KTermios::default(), &input, false).map_err(|e| refill("slave's", e))?;
                let inq = tty::input_len(s.as_fd()).map_err(|e| sys("TIOCINQ", e))?;
                if inq != queue::expected_inq(&input, t.lflag & libc::ICANON != 0) {
                    return Err(fail(format!("the slave's queue holds {inq} bytes after refilling, not what was dumped")));
                }
            }
            let locked = from_pb(p.locked.as_ref());
            if locked != KTermios::default() {
                tty::set_locked_termios(m, &locked).map_err(|e| sys("TIOCSLCKTRMIOS", e))?;
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
        let flags = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND);
        match f.role() {
            Role::Master => {
                let fd = master.try_clone()?;
                crate::sys::fd::set_status_flags(&fd, f.flags)?;
                Ok(fd)
            }
            // As open(2) did, or TIOCGPTPEER (no O_LARGEFILE) as glibc's openpty.
            Role::Slave => Ok(tty::open_peer(master.as_fd(), flags | (f.flags as i32 & O_LARGEFILE))?),
            Role::DevTty => {
                let s = slave.as_ref().ok_or_else(|| std::io::Error::other(format!("no slave of /dev/pts/{} was made", f.index)))?;
                open_dev_tty(s.as_fd(), flags)
            }
        }
    }

    /// crtool's slave of pair `index` (for TIOCSCTTY in the session leader).
    pub fn slave(&self, index: u32) -> Option<BorrowedFd<'_>> {
        self.pairs.get(&index).and_then(|(_, s)| s.as_ref()).map(|s| s.as_fd())
    }

    /// Sets what would stop further opens (exclusive mode, the pty lock), once every
    /// description is open.
    pub fn seal(&self) -> Result<()> {
        for p in &self.images {
            let Some((m, s)) = self.pairs.get(&p.index) else { continue };
            let fail = |what: &str, e: Errno| Error::Reported(format!("cannot restore pseudo-terminal /dev/pts/{}: {what}: {e}", p.index));
            if let (true, Some(s)) = (p.exclusive, s) {
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
    crate::sys::process::fd_from_helper(|| {
        nix::unistd::setsid()?;
        tty::set_controlling(slave)?;
        crate::sys::fd::open_at_pos("/dev/tty", flags | libc::O_NOCTTY, 0)
    })
    .map_err(|e| std::io::Error::other(format!("a helper with the pseudo-terminal as controlling terminal could not open /dev/tty: {e}")))
}
