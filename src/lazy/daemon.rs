//! The lazy-pages daemon (`crtool lazy-pages -D DIR`): serves the restore of
//! DIR (see the module above for the protocol), one thread, one poll loop.
//! Faults are answered first; between them the daemon pushes the next owed
//! run of pages of one task after another, so every task gets all of its
//! memory even if it never touches it.

use super::pending::{Pending, Run};
use super::remote::{Client, Finish};
use super::watchdog::Watchdog;
use crate::error::{Error, Result};
use crate::mem::chain::Pages;
use crate::sys::mm::PAGE;
use crate::sys::uffd::{self, Event};
use images_format::{ImageKind, pb, read_entries};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What one run of the daemon did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Processes served (restored ones, and children they forked meanwhile).
    pub processes: usize,
    /// Missing-page faults answered, and the bytes copied for them.
    pub faults: u64,
    pub fault_bytes: u64,
    /// Bytes pushed without a fault.
    pub pushed_bytes: u64,
    /// Zero pages supplied for faults where the images have no data.
    pub zero_pages: u64,
    /// From the first task handed over to the last page supplied.
    pub serving: Duration,
}

/// The longest run supplied at once (a fault waits for its whole run).
const MAX_RUN_PAGES: u64 = 256;

/// The page data of one process in the images, and the dump's page server
/// for the pages that stayed with the dumped process (dump --lazy-pages).
struct Source {
    vpid: u32,
    pages: Pages,
    entries: Vec<pb::PagemapEntry>,
    remote: Option<Rc<RefCell<Client>>>,
    buf: Vec<u8>,
}

impl Source {
    /// The data of `run`.
    fn data(&mut self, run: &Run) -> Result<&[u8]> {
        let e = &self.entries[run.entry];
        self.buf.resize((run.pages * PAGE) as usize, 0);
        match &self.remote {
            Some(r) if e.lazy => r.borrow_mut().get(self.vpid, e.vaddr + run.first * PAGE, &mut self.buf)?,
            _ => self.pages.read_part(e, run.first * PAGE, &mut self.buf)?,
        }
        Ok(&self.buf)
    }
}

/// How long a fault may keep meeting a changing memory layout (EAGAIN) before
/// the daemon gives up on the process.
const FAULT_PATIENCE: Duration = Duration::from_secs(30);

/// A process whose memory is still owed.
struct Task {
    vpid: u32,
    /// Its number with the watchdog.
    id: u32,
    uffd: OwnedFd,
    /// The process (a restored task, or a child it forked: found after its
    /// fork event; None if it could not be).
    pidfd: Option<OwnedFd>,
    /// Its PID here, and the children it had when last looked at.
    pid: Option<i32>,
    known_children: BTreeSet<i32>,
    /// The task was restored (not forked since).
    restored: bool,
    source: Rc<RefCell<Source>>,
    pending: Pending,
    /// Faults read and not answered yet, with when they were first read.
    faults: VecDeque<(u64, Instant)>,
    gone: bool,
    /// The task's connection until its restorer says `R`: its ranges are
    /// registered, pages may be supplied (`ready`).
    conn: Option<UnixStream>,
    ready: bool,
}

/// How a copy ended.
enum Copied {
    Done,
    /// The memory layout is changing: read the events, then try again.
    Later,
}

impl Task {
    fn name(&self) -> String {
        if self.restored { format!("pid {}", self.vpid) } else { format!("a child forked by pid {} (pid {} here)", self.vpid, self.pid.map_or("?".into(), |p| p.to_string())) }
    }

    /// The child just forked (its fork event read): the new child of `pid`.
    fn find_child(&mut self) -> Option<(i32, OwnedFd)> {
        let pid = self.pid?;
        let until = Instant::now() + Duration::from_millis(200);
        loop {
            let now = children(pid);
            if let Some(&c) = now.iter().find(|c| !self.known_children.contains(c)) {
                self.known_children.extend(now);
                let fd = crate::sys::process::pidfd_open(nix::unistd::Pid::from_raw(c)).ok()?;
                return Some((c, fd));
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// UFFDIO_COPY of `run` to `at`; what could not be copied yet goes back.
    fn copy_run(&mut self, at: u64, run: Run) -> Result<Copied> {
        crate::fault::point(201)?;
        let mut src = self.source.borrow_mut();
        let bytes = src.data(&run)?;
        let mut done = 0u64;
        while done < bytes.len() as u64 {
            match uffd::copy(self.uffd.as_fd(), at + done, &bytes[done as usize..]) {
                Ok(0) => done = bytes.len() as u64,
                Ok(n) => done += n,
                Err((_, n)) if n > 0 => done += n,
                // Already there (made present behind our back): keep what is there.
                Err((Errno::EEXIST, _)) => done += PAGE,
                Err((Errno::EAGAIN, _)) => {
                    let left = Run { pages: run.pages - done / PAGE, entry: run.entry, first: run.first + done / PAGE };
                    drop(src);
                    self.pending.insert(at + done, left);
                    return Ok(Copied::Later);
                }
                // No registered mapping there: unmapped or moved, and the event
                // read already (while one is unread the kernel says EAGAIN).
                Err((Errno::ENOENT, _)) => {
                    log::warn!("{}: {:#x}: no registered mapping there any more; {} pages not supplied", self.name(), at + done, (bytes.len() as u64 - done) / PAGE);
                    return Ok(Copied::Done);
                }
                Err((Errno::ESRCH, _)) => {
                    self.gone = true;
                    return Ok(Copied::Done);
                }
                Err((e, _)) => return Err(Error::Lazy { msg: format!("{}: UFFDIO_COPY at {:#x}: {e}", self.name(), at + done) }),
            }
        }
        Ok(Copied::Done)
    }

    /// Reads the queued events, acting on each at once; faults wait in `faults`.
    fn read_events(&mut self, stats: &mut Summary, forked: &mut Vec<Task>) -> Result<()> {
        while !self.gone {
            let ev = match uffd::next_event(self.uffd.as_fd()) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::Lazy { msg: format!("{}: reading its userfaultfd: {e}", self.name()) }),
            };
            match ev {
                Event::Fault(addr) => self.faults.push_back((addr, Instant::now())),
                Event::Fork(fd) => {
                    // The child's memory is the parent's at this instant: what is
                    // owed here is owed there too, but for memory the kernel
                    // empties in a child (MADV_WIPEONFORK).
                    stats.processes += 1;
                    let mut pending = self.pending.clone();
                    if let Some(pid) = self.pid {
                        for (s, e) in wipe_on_fork(pid) {
                            pending.drop_range(s, e);
                        }
                    }
                    let child = self.find_child();
                    if child.is_none() {
                        log::warn!("{}: the child it forked was not found: it cannot be killed if its memory cannot be supplied", self.name());
                    }
                    let (pid, pidfd) = child.map_or((None, None), |(p, f)| (Some(p), Some(f)));
                    forked.push(Task {
                        vpid: self.vpid,
                        id: 0,
                        uffd: fd,
                        pidfd,
                        pid,
                        known_children: pid.map(children).unwrap_or_default(),
                        restored: false,
                        source: self.source.clone(),
                        pending,
                        faults: VecDeque::new(),
                        gone: false,
                        conn: None,
                        ready: true,
                    });
                }
                Event::Remap { from, to, len } => self.pending.shift(from, to, len),
                Event::Gone(start, end) => self.pending.drop_range(start, end),
                Event::Other => {}
            }
        }
        Ok(())
    }

    /// Answers the fault at `addr`: the owed run holding it, or a zero page.
    /// False: the memory layout is changing (an event not queued yet); try
    /// again later.
    fn answer(&mut self, addr: u64, stats: &mut Summary, forked: &mut Vec<Task>) -> Result<bool> {
        let page = addr & !(PAGE - 1);
        for _ in 0..2 {
            if self.gone {
                return Ok(true);
            }
            let r = match self.pending.take_containing(page) {
                Some((at, run)) => {
                    let r = self.copy_run(at, run)?;
                    if matches!(r, Copied::Done) {
                        stats.fault_bytes += run.pages * PAGE;
                    }
                    r
                }
                None => match uffd::zeropage(self.uffd.as_fd(), page, PAGE) {
                    Ok(_) => {
                        stats.zero_pages += 1;
                        Copied::Done
                    }
                    Err((Errno::EAGAIN, _)) => Copied::Later,
                    Err((Errno::ESRCH, _)) => {
                        self.gone = true;
                        Copied::Done
                    }
                    // There already, or no longer mapped: let the thread try again.
                    Err((Errno::EEXIST | Errno::ENOENT, _)) => {
                        let _ = uffd::wake(self.uffd.as_fd(), page, PAGE);
                        Copied::Done
                    }
                    Err((e, _)) => return Err(Error::Lazy { msg: format!("{}: UFFDIO_ZEROPAGE at {page:#x}: {e}", self.name()) }),
                },
            };
            match r {
                Copied::Done => {
                    stats.faults += 1;
                    return Ok(true);
                }
                Copied::Later => self.read_events(stats, forked)?,
            }
        }
        Ok(false)
    }

    /// Answers the faults read so far; those that must wait stay queued.
    fn answer_all(&mut self, stats: &mut Summary, forked: &mut Vec<Task>) -> Result<()> {
        let mut waiting = VecDeque::new();
        while let Some((addr, since)) = self.faults.pop_front() {
            if !self.answer(addr, stats, forked)? {
                if since.elapsed() > FAULT_PATIENCE {
                    return Err(Error::Lazy { msg: format!("{}: the fault at {addr:#x} could not be answered for {FAULT_PATIENCE:?} (the memory layout kept changing)", self.name()) });
                }
                waiting.push_back((addr, since));
            }
            self.read_events(stats, forked)?;
        }
        self.faults = waiting;
        Ok(())
    }

    /// Pushes the lowest owed run.
    fn push(&mut self, stats: &mut Summary, forked: &mut Vec<Task>) -> Result<()> {
        if let Some((at, run)) = self.pending.take_first() {
            match self.copy_run(at, run)? {
                Copied::Done => stats.pushed_bytes += run.pages * PAGE,
                Copied::Later => self.read_events(stats, forked)?,
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.gone || (self.ready && self.pending.is_empty() && self.faults.is_empty())
    }

    /// Reads the restorer's `R` (or learns that the task died before it).
    fn read_ready(&mut self) {
        let Some(c) = &mut self.conn else { return };
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) if b[0] == b'R' => self.ready = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            _ => {
                log::info!("{}: ended before its memory was registered", self.name());
                self.gone = true;
            }
        }
        self.conn = None;
    }
}

/// The children of every thread of `pid` (their PIDs here).
fn children(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) {
        for t in tasks.flatten() {
            out.extend(t.children().unwrap_or_default().into_iter().map(|c| c as i32));
        }
    }
    out
}

/// The memory of `pid` that a child gets empty (MADV_WIPEONFORK): (start, end).
fn wipe_on_fork(pid: i32) -> Vec<(u64, u64)> {
    use procfs::process::VmFlags;
    let Ok(maps) = procfs::process::Process::new(pid).and_then(|p| p.smaps()) else { return Vec::new() };
    maps.into_iter().filter(|m| m.extension.vm_flags.contains(VmFlags::WF)).map(|m| m.address).collect()
}

/// What a received fd is (`anon_inode:[userfaultfd]`, `anon_inode:[pidfd]`).
fn fd_kind(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Removes the socket file when the daemon ends.
struct Bound(PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind(dir: &Path) -> Result<(UnixListener, Bound)> {
    let path = super::socket_path(dir);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(Error::Lazy { msg: format!("another lazy-pages daemon listens on {}", path.display()) });
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
    // Only the restore (root, like the daemon) may hand memory over.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(&path, e))?;
    l.set_nonblocking(true).map_err(|e| Error::io(&path, e))?;
    Ok((l, Bound(path)))
}

/// Reads one task's hand-over (after its `T`): its pid, ranges and fds.
fn take_task(dir: &Path, s: &mut UnixStream, head: &[u8], fds: Vec<OwnedFd>, remote: &Option<Rc<RefCell<Client>>>) -> Result<Task> {
    let bad = |msg: String| Error::Lazy { msg: format!("a task's hand-over: {msg}") };
    let mut h = [0u8; 8];
    h[..head.len()].copy_from_slice(head);
    s.read_exact(&mut h[head.len()..]).map_err(|e| bad(e.to_string()))?;
    let vpid = u32::from_le_bytes(h[0..4].try_into().unwrap_or_default());
    let n = u32::from_le_bytes(h[4..8].try_into().unwrap_or_default()) as usize;
    if n > 1 << 20 {
        return Err(bad(format!("{n} ranges")));
    }
    let mut body = vec![0u8; n * 16];
    s.read_exact(&mut body).map_err(|e| bad(e.to_string()))?;
    let word = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let mut ranges: Vec<(u64, u64)> = (0..n).map(|i| (word(2 * i), word(2 * i).saturating_add(word(2 * i + 1)))).collect();
    ranges.sort();
    let mut fds = fds.into_iter();
    let (Some(uffd), Some(pidfd)) = (fds.next(), fds.next()) else {
        return Err(bad(format!("pid {vpid} sent no userfaultfd and pidfd")));
    };
    if fd_kind(&uffd) != "anon_inode:[userfaultfd]" || fd_kind(&pidfd) != "anon_inode:[pidfd]" {
        return Err(bad(format!("pid {vpid} sent {} and {}, not a userfaultfd and a pidfd", fd_kind(&uffd), fd_kind(&pidfd))));
    }
    let pid = crate::procinfo::pidfd_pid(pidfd.as_raw_fd());
    let entries: Vec<pb::PagemapEntry> = read_entries(dir, ImageKind::Pagemap, vpid)?;
    if remote.is_none() && entries.iter().any(|e| e.lazy) {
        return Err(bad(format!("the memory of pid {vpid} stayed with the dumped process (dump --lazy-pages): start the daemon with --page-server --address A --port P of that dump")));
    }
    let mut pending = Pending::default();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| !e.guard && !e.inherited) {
        let end = e.vaddr + e.nr_pages as u64 * PAGE;
        let r = ranges.partition_point(|r| r.1 <= e.vaddr);
        if ranges.get(r).is_some_and(|r| r.0 <= e.vaddr && end <= r.1) {
            // (An entry of pages in a parent directory may span a whole VMA.)
            let mut first = 0;
            while first < e.nr_pages as u64 {
                let pages = MAX_RUN_PAGES.min(e.nr_pages as u64 - first);
                pending.insert(e.vaddr + first * PAGE, Run { pages, entry: i, first });
                first += pages;
            }
        }
    }
    log::info!("pid {vpid}: {} lazy ranges, {} KiB owed", ranges.len(), pending.bytes() >> 10);
    let pages = Pages::open(dir, vpid)?;
    let source = Rc::new(RefCell::new(Source { vpid, pages, entries, remote: remote.clone(), buf: Vec::new() }));
    let known_children = pid.map(children).unwrap_or_default();
    Ok(Task { vpid, id: 0, uffd, pidfd: Some(pidfd), pid, known_children, restored: true, source, pending, faults: VecDeque::new(), gone: false, conn: None, ready: false })
}

enum Conn {
    /// The restore's connection, with what came after its `C`.
    Control(UnixStream, Vec<u8>),
    Task(Task),
}

/// Accepts one connection and reads what it says.
fn accept(dir: &Path, l: &UnixListener, wd: &Watchdog, remote: &Option<Rc<RefCell<Client>>>) -> Result<Option<Conn>> {
    let mut s = match l.accept() {
        Ok((s, _)) => s,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(Error::io(super::socket_path(dir), e)),
    };
    let _ = s.set_nonblocking(false);
    // (A task sends its hand-over at once: a silent peer must not hold up faults.)
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 9];
    let Ok((n, fds)) = crate::sys::sock::recv_with_fds(s.as_fd(), &mut buf) else { return Ok(None) };
    match buf.first() {
        Some(b'C') if n >= 1 => {
            let _ = s.set_nonblocking(true);
            Ok(Some(Conn::Control(s, buf[1..n].to_vec())))
        }
        Some(b'T') if n >= 1 => {
            match take_task(dir, &mut s, &buf[1..n], fds, remote).and_then(|mut c| {
                c.id = wd.task(c.uffd.as_fd(), c.pidfd.as_ref().map(|p| p.as_fd()))?;
                Ok(c)
            }) {
                Ok(mut c) => {
                    if let Err(e) = s.write_all(b"K") {
                        // (It gave up waiting: its restore fails.)
                        log::warn!("pid {}: answering its hand-over: {e}", c.vpid);
                        wd.release(c.id);
                        return Ok(None);
                    }
                    let _ = s.set_nonblocking(true);
                    c.conn = Some(s);
                    Ok(Some(Conn::Task(c)))
                }
                Err(e) => {
                    log::error!("{e}");
                    let _ = s.write_all(format!("E{e}").as_bytes());
                    Ok(None)
                }
            }
        }
        _ => Ok(None),
    }
}

/// Serves the restore of `dir` until every restored task has all of its memory
/// (or is gone) and the restore has ended; fails if the restore failed or a
/// page could not be supplied (the tasks then are killed).
///
/// With `page_server` (address, port of a `dump --lazy-pages`), the pages the
/// images mark `lazy` come from that dump; it is told at the end whether the
/// restore succeeded (its tree is then killed) or not (its tree runs on).
pub fn serve(dir: &Path, page_server: Option<(&str, u16)>) -> Result<Summary> {
    let remote = match page_server {
        Some((a, p)) => Some(Rc::new(RefCell::new(Client::connect(a, p)?))),
        None => None,
    };
    let (r, ran) = match serve_loop(dir, &remote) {
        Ok(s) => (Ok(s), true),
        Err((e, ran)) => (Err(e), ran),
    };
    if let Some(c) = remote {
        let mut c = c.borrow_mut();
        log::info!("{} MiB fetched from the dump's page server", c.bytes >> 20);
        // Once the restored tree ran, the original must never run again.
        let how = match (&r, ran) {
            (Ok(_), _) => Finish::Done,
            (Err(_), true) => Finish::Failed,
            (Err(_), false) => Finish::Aborted,
        };
        if let Err(e) = c.finish(how) {
            log::warn!("{e}");
        }
    }
    r
}

/// Serves; a failure also says whether the restored tree ran (the restore said so).
fn serve_loop(dir: &Path, remote: &Option<Rc<RefCell<Client>>>) -> std::result::Result<Summary, (Error, bool)> {
    let (listener, _bound) = bind(dir).map_err(|e| (e, false))?;
    let wd = Watchdog::start().map_err(|e| (e, false))?;
    let r = run(dir, remote, &listener, &wd);
    wd.done();
    r
}

fn run(dir: &Path, remote: &Option<Rc<RefCell<Client>>>, listener: &UnixListener, wd: &Watchdog) -> std::result::Result<Summary, (Error, bool)> {
    log::info!("lazy-pages: listening on {}", super::socket_path(dir).display());
    let mut stats = Summary::default();
    let mut control: Option<UnixStream> = None;
    // What the restore said on its control connection.
    let mut said: Vec<u8> = Vec::new();
    let mut restore_ok: Option<bool> = None;
    // The restored tree's top process (its PID here), once it runs.
    let mut tree_top: Option<i32> = None;
    let mut clients: Vec<Task> = Vec::new();
    let mut started: Option<Instant> = None;
    let mut next_push = 0usize;
    let hold = crate::fault::hold(201);
    let result = loop {
        if restore_ok.is_some() && clients.is_empty() {
            break Ok(());
        }
        let held = hold && dir.join("lazy-pages.hold").exists();
        let busy = clients.iter().any(|c| c.ready && !c.pending.is_empty() && !held);
        // Faults that must wait for an event not queued yet: look again soon.
        let waiting = clients.iter().any(|c| !c.faults.is_empty());
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &control {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        let first_client = fds.len();
        fds.extend(clients.iter().map(|c| PollFd::new(c.uffd.as_fd(), PollFlags::POLLIN)));
        // A restored task's pidfd: readable once it has exited.
        let first_pidfd = fds.len();
        let with_pidfd: Vec<usize> = (0..clients.len()).filter(|&i| clients[i].pidfd.is_some()).collect();
        fds.extend(with_pidfd.iter().filter_map(|&i| clients[i].pidfd.as_ref()).map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)));
        let first_conn = fds.len();
        let with_conn: Vec<usize> = (0..clients.len()).filter(|&i| clients[i].conn.is_some()).collect();
        fds.extend(with_conn.iter().filter_map(|&i| clients[i].conn.as_ref()).map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)));
        let timeout = if busy { PollTimeout::ZERO } else if waiting { PollTimeout::from(1u16) } else if held { PollTimeout::from(50u16) } else { PollTimeout::from(1000u16) };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => break Err(Error::sys("poll", e)),
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (new_conn, control_ready) = (ready(0), control.is_some() && ready(1));
        let uffd_ready: Vec<bool> = (0..clients.len()).map(|i| ready(first_client + i)).collect();
        let exited: Vec<usize> = with_pidfd.iter().enumerate().filter(|&(k, _)| ready(first_pidfd + k)).map(|(_, &i)| i).collect();
        let registered: Vec<usize> = with_conn.iter().enumerate().filter(|&(k, _)| ready(first_conn + k)).map(|(_, &i)| i).collect();
        drop(fds);
        for i in exited {
            clients[i].gone = true;
        }
        for i in registered {
            clients[i].read_ready();
        }
        if new_conn {
            match accept(dir, listener, wd, remote) {
                Ok(Some(Conn::Control(s, rest))) if control.is_none() && restore_ok.is_none() => {
                    control = Some(s);
                    said = rest;
                }
                Ok(Some(Conn::Control(..))) => log::warn!("a second restore connected; it is refused"),
                Ok(Some(Conn::Task(c))) => {
                    started.get_or_insert_with(Instant::now);
                    stats.processes += 1;
                    clients.push(c);
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        }
        if control_ready && let Some(c) = &mut control {
            let mut b = [0u8; 16];
            match c.read(&mut b) {
                Ok(0) => restore_ok = Some(false),
                Ok(n) => said.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => restore_ok = Some(false),
            }
        }
        // `S` and the PID of the tree's top process, or `F`.
        match said.first() {
            Some(b'S') if said.len() >= 5 => {
                restore_ok = Some(true);
                tree_top = Some(i32::from_le_bytes([said[1], said[2], said[3], said[4]])).filter(|&p| p > 0);
            }
            Some(b'S') | None => {}
            Some(_) => restore_ok = Some(false),
        }
        if restore_ok.is_some() {
            control = None;
        }
        if restore_ok == Some(false) {
            break Err(Error::Lazy { msg: "the restore failed; its tasks were killed".into() });
        }
        let mut forked = Vec::new();
        let mut step = || -> Result<()> {
            for (i, c) in clients.iter_mut().enumerate() {
                if uffd_ready.get(i).copied().unwrap_or(false) {
                    c.read_events(&mut stats, &mut forked)?;
                }
                c.answer_all(&mut stats, &mut forked)?;
            }
            // Then one run of one task, round robin.
            let owing: Vec<usize> = (0..clients.len()).filter(|&i| !held && clients[i].ready && !clients[i].pending.is_empty() && !clients[i].gone).collect();
            if !owing.is_empty() {
                next_push = (next_push + 1) % owing.len();
                clients[owing[next_push]].push(&mut stats, &mut forked)?;
            }
            Ok(())
        };
        if let Err(e) = step() {
            break Err(e);
        }
        for c in &mut forked {
            match wd.task(c.uffd.as_fd(), c.pidfd.as_ref().map(|p| p.as_fd())) {
                Ok(id) => c.id = id,
                Err(e) => log::warn!("{e}"),
            }
        }
        clients.extend(forked);
        clients.retain(|c| {
            let done = c.finished();
            if done {
                log::info!("{}: {}", c.name(), if c.gone { "gone" } else { "has all of its memory" });
                // (Its userfaultfd closes everywhere: nothing stays registered.)
                wd.release(c.id);
            }
            !done
        });
        if let Some(t) = started {
            stats.serving = t.elapsed();
        }
    };
    let ran = restore_ok == Some(true);
    if let Err(e) = &result {
        // A task must never run on with memory it cannot get.
        for c in &clients {
            if let Some(p) = &c.pidfd {
                super::watchdog::kill_tree(p.as_fd());
            }
        }
        // Nor a tree with part of its processes gone.
        if let Some(top) = tree_top.filter(|_| ran) {
            if let Ok(p) = crate::sys::process::pidfd_open(nix::unistd::Pid::from_raw(top)) {
                super::watchdog::kill_tree(p.as_fd());
            }
            log::error!("{e}: the restored tree was killed");
        } else if !clients.is_empty() {
            log::error!("{e}: the tasks still owed memory were killed");
        }
    }
    result.map(|()| stats).map_err(|e| (e, ran))
}
