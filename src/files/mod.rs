//! Open files. Each kind lives in its own module with its dump and restore side by
//! side, behind the `FileKind` trait; this module keeps the tree-wide table of open
//! file descriptions (shared ones found with kcmp) and installs fds at restore.

mod chr;
mod event;
mod fanotify;
pub mod inet;
pub mod netlink;
pub mod packet;
pub mod tun;
pub mod memfd;
pub mod ghost;
pub mod locks;
pub mod identity;
mod pidfd;
mod pipe;
mod procfile;
mod parked;
mod reg;
pub mod tty;
pub mod unix;

pub use parked::Parked;

use crate::error::{Error, Result};
use crate::sys::fd;
use crate::sys::process::kcmp_file;
use images_format::pb::{self, file_entry::Kind};
use nix::sys::stat::{SFlag, fstat};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

/// One open fd of a task as /proc shows it.
#[derive(Debug, Clone)]
pub struct FdInfo {
    pub fd: i32,
    /// Target of /proc/PID/fd/N ("/path", "socket:[123]", "pipe:[9]", ...), without
    /// the " (deleted)" the kernel appends to an unlinked file's name.
    pub link: String,
    /// The file's name was unlinked.
    pub deleted: bool,
    pub pos: u64,
    /// open(2) flags from fdinfo, including O_CLOEXEC.
    pub flags: u32,
    /// fdinfo lists a lock on the file (flock, POSIX, OFD, lease).
    pub locked: bool,
    /// Those "lock:" lines of fdinfo.
    pub locks: Vec<String>,
    /// A pseudo-terminal master's pair index (fdinfo "tty-index:").
    pub tty_index: Option<u32>,
}

/// An open-file kind crtool can save and bring back.
pub trait FileKind {
    /// Describes the open file behind `fd` (a duplicate received from the task).
    fn dump(pid: i32, info: &FdInfo, fd: &OwnedFd, st: &libc::stat) -> Result<Kind>
    where
        Self: Sized;
    /// Reopens it, positioned as it was.
    fn open(&self) -> std::io::Result<OwnedFd>;
}

/// Lists the fds of `pid` with their positions and flags, in fd order.
pub fn list(pid: i32) -> Result<Vec<FdInfo>> {
    let dir = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::proc(pid, "fd", e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::proc(pid, "fd", e))?;
        let Ok(fd) = ent.file_name().to_string_lossy().parse::<i32>() else { continue };
        out.push(info_of(pid, fd)?);
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// What /proc says of fd `fd` of `pid`.
pub fn info_of(pid: i32, fd: i32) -> Result<FdInfo> {
    let link = crate::procinfo::file_link(&format!("/proc/{pid}/fd/{fd}")).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => Error::Unsupported { pid, fd: Some(fd), what: e.to_string(), hint: Some("paths must be UTF-8") },
        _ => Error::proc(pid, format!("fd/{fd}"), e),
    })?;
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|e| Error::proc(pid, format!("fdinfo/{fd}"), e))?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let pos = field("pos:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let flags = field("flags:").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0);
    let locks: Vec<String> = info.lines().filter_map(|l| l.strip_prefix("lock:")).map(|l| l.trim().to_string()).collect();
    let tty_index = field("tty-index:").and_then(|v| v.parse().ok());
    Ok(FdInfo { fd, link: link.path, deleted: link.deleted, pos, flags, locked: !locks.is_empty(), locks, tty_index })
}

/// Rejects, before any parasite runs, fds whose kind this version cannot restore
/// (and locked files, unless `file_locks`).
pub fn precheck(pid: i32, fds: &[FdInfo], file_locks: bool) -> Result<()> {
    for f in fds {
        let what = if f.link.starts_with("anon_inode:") && !event::handles(&f.link) && f.link != "anon_inode:[pidfd]" && f.link != "anon_inode:[fanotify]" {
            Some(("anon inode", Some("io_uring, aio, userfaultfd, perf events and similar are not supported yet")))
        } else {
            None
        };
        if let Some((kind, hint)) = what {
            return Err(Error::Unsupported { pid, fd: Some(f.fd), what: format!("{kind} {}", f.link), hint });
        }
        if f.locked && !file_locks {
            return Err(Error::Unsupported { pid, fd: Some(f.fd), what: format!("{} is locked (flock, POSIX, OFD lock or lease)", f.link), hint: Some("dump with --file-locks to take them along") });
        }
    }
    Ok(())
}

/// The open file descriptions of the whole tree.
#[derive(Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    /// The descriptions seen so far, by (device, inode), each list in kcmp(2) order:
    /// (pid, fd where first seen, entry id). Finding an fd's description costs
    /// O(log n) kcmp calls, also with thousands of fds on one inode (/dev/null).
    seen: std::collections::HashMap<(u64, u64), Vec<(i32, i32, u32)>>,
    /// Buffered data of every pipe and FIFO, by pipe id.
    pub pipes: Vec<pb::PipeData>,
    pipes_seen: std::collections::HashSet<u64>,
    /// Where each entry was first seen: (pid, fd), parallel to `entries`.
    first_seen: Vec<(i32, i32)>,
    /// The unix sockets of the tree.
    pub unix: unix::UnixTable,
    /// Messages queued on unix sockets.
    pub packets: Vec<pb::SkPacket>,
    /// crtool's duplicates of files passed in queued messages (kept open until
    /// the dump ends: the file table compares files by (pid, fd) with kcmp).
    in_flight: Vec<OwnedFd>,
    /// Epoll entries whose watched files are not known yet: (pid, fd, entry index,
    /// watches), resolved once all the task's fds are (`resolve_epolls`).
    pending_epolls: Vec<(i32, i32, usize, Vec<event::Watch>)>,
    /// Which watches are resolved, and the processes seen so far.
    epolls: event::EpollResolver,
    /// The tree is a shell job (dump --shell-job): its controlling terminal is taken
    /// as the shell's, which restore replaces by its own.
    pub shell_job: bool,
    /// The deleted files of the tree (open or mapped).
    pub ghosts: ghost::GhostTable,
    /// The pseudo-terminal pairs whose master the tree holds.
    pub ptys: tty::PtyTable,
    /// The inet sockets of the tree.
    pub inet: inet::InetTable,
    /// The netlink sockets of the tree, by inode.
    pub netlink: BTreeMap<u64, pb::NetlinkSocket>,
    /// The packet sockets of the tree, by inode.
    pub packet: BTreeMap<u64, pb::PacketSocket>,
    /// The memfds of the tree (open or mapped).
    pub memfds: memfd::MemfdTable,
    /// Every lock recorded so far, with the "maj:min:ino" it is on.
    pub locks_taken: Vec<(pb::FileLock, String)>,
    /// Descriptions whose flock/OFD locks are recorded, and (pid, dev, ino) whose
    /// POSIX locks are: each lock once.
    locks_seen: std::collections::HashSet<(i32, u64, u64, u32)>,
}

impl FileTable {
    /// Checks the tree's /dev/net/tun files against the links of its dumped
    /// network namespace (none: not dumped; see `tun::check`).
    pub fn check_tun(&self, links: &[pb::NetLink], root: i32) -> Result<()> {
        tun::check(&self.entries, links).map_err(|(at, what)| {
            let (pid, fd) = at.map_or((root, None), |i| (self.first_seen[i].0, Some(self.first_seen[i].1)));
            Error::Unsupported { pid, fd, what, hint: Some("a tun/tap device is taken along with the tree's own network namespace, attached to one file of the tree or persistent") }
        })
    }
}

impl FileTable {
    /// Describes every fd of `pid` (given duplicates received from it), reusing the
    /// entry of a description another fd already shares. `vpid` maps a pid as crtool
    /// sees it into the tree's namespace (`None`: outside the tree).
    pub fn dump_fds(&mut self, pid: i32, fds: &[FdInfo], dups: &[OwnedFd], vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Vec<pb::FdEntry>> {
        let mut out = Vec::new();
        for (info, dup) in fds.iter().zip(dups) {
            let st = fstat(dup).map_err(|e| Error::sys(format!("pid {pid} fd {}: fstat", info.fd), e))?;
            let group = self.seen.entry((st.st_dev, st.st_ino)).or_default();
            let mut kcmp_err = None;
            let found = group.binary_search_by(|&(opid, ofd, _)| {
                kcmp_file(opid, ofd, pid, info.fd).unwrap_or_else(|e| {
                    kcmp_err = Some(e);
                    std::cmp::Ordering::Less
                })
            });
            if let Some(e) = kcmp_err {
                return Err(Error::sys(format!("pid {pid} fd {}: kcmp", info.fd), e));
            }
            let id = match found {
                // (Opened again by the task that holds it: not shareable.)
                Ok(i) if group[i].0 != pid
                    && match &self.entries[group[i].2 as usize - 1].kind {
                        Some(Kind::Pidfd(p)) => !pidfd::made_by_crtool(p),
                        Some(Kind::Proc(_)) => true,
                        _ => false,
                    } =>
                {
                    let what = if matches!(self.entries[group[i].2 as usize - 1].kind, Some(Kind::Pidfd(_))) { "pidfd" } else { "file of /proc" };
                    return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("{what} {} shared with process {}", info.link, group[i].0), hint: Some("an open description of this kind shared by several processes is not supported yet") });
                }
                Ok(i) => group[i].2,
                Err(at) => {
                    let ty = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
                    let mut watches = Vec::new();
                    let o_path = info.flags & libc::O_PATH as u32 != 0;
                    let kind = match ty {
                        // An O_PATH fd (also on a symlink, a FIFO, a device) only
                        // names its file: opened again by path with the same flags.
                        _ if o_path && info.deleted => {
                            return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("O_PATH fd on deleted {}", info.link), hint: Some("not supported yet") });
                        }
                        _ if fd::fs_magic(dup).is_ok_and(|m| m == libc::PROC_SUPER_MAGIC) => procfile::dump(pid, info, vpid)?,
                        _ if o_path => reg::RegFileKind::dump(pid, info, dup, &st)?,
                        _ if memfd::name_of(&info.link).is_some() && info.deleted => {
                            let name = memfd::name_of(&info.link).unwrap_or_default();
                            let f = std::fs::File::from(dup.try_clone().map_err(|e| Error::io(&info.link, e))?);
                            let inode = self.memfds.record(pid, &format!("pid {pid} fd {} ({})", info.fd, info.link), name, &f)?;
                            Kind::Memfd(pb::MemfdFile { inode, flags: info.flags & !(libc::O_CLOEXEC as u32), pos: info.pos })
                        }
                        _ if info.link == "anon_inode:[pidfd]" => pidfd::dump(pid, info, dup, vpid)?,
                        _ if info.link == "anon_inode:[fanotify]" => fanotify::dump(pid, info, dup)?,
                        _ if event::handles(&info.link) => {
                            let (k, w) = event::dump(pid, info, dup)?;
                            watches = w;
                            k
                        }
                        SFlag::S_IFREG if info.deleted => {
                            let f = std::fs::File::from(dup.try_clone().map_err(|e| Error::io(&info.link, e))?);
                            self.ghosts.record(pid, Some(info.fd), &info.link, &f)?;
                            match reg::RegFileKind::dump(pid, info, dup, &st)? {
                                Kind::Reg(r) => Kind::Reg(pb::RegFile { ghost: true, ..r }),
                                k => k,
                            }
                        }
                        SFlag::S_IFREG | SFlag::S_IFDIR => reg::RegFileKind::dump(pid, info, dup, &st)?,
                        SFlag::S_IFCHR if (libc::major(st.st_rdev), libc::minor(st.st_rdev)) == tun::RDEV => tun::dump(pid, info, dup)?,
                        SFlag::S_IFCHR => match self.ptys.dump(pid, info, dup, &st)? {
                            Some(k) => k,
                            None => chr::ChrDevKind::dump_tty(pid, info, dup, &st, self.shell_job)?,
                        },
                        SFlag::S_IFSOCK if matches!(crate::sys::sock::get_int(std::os::fd::AsFd::as_fd(dup), libc::SO_DOMAIN), Ok(libc::AF_INET | libc::AF_INET6)) => {
                            self.inet.add(pid, info.fd, dup, st.st_ino)?;
                            Kind::Inet(pb::InetFile { ino: st.st_ino, flags: info.flags & !(libc::O_CLOEXEC as u32) })
                        }
                        SFlag::S_IFSOCK if matches!(crate::sys::sock::get_int(std::os::fd::AsFd::as_fd(dup), libc::SO_DOMAIN), Ok(libc::AF_PACKET)) => {
                            if let std::collections::btree_map::Entry::Vacant(v) = self.packet.entry(st.st_ino) {
                                v.insert(packet::dump(pid, info.fd, dup, st.st_ino)?);
                            }
                            Kind::Packet(pb::PacketFile { ino: st.st_ino, flags: info.flags & !(libc::O_CLOEXEC as u32) })
                        }
                        SFlag::S_IFSOCK if matches!(crate::sys::sock::get_int(std::os::fd::AsFd::as_fd(dup), libc::SO_DOMAIN), Ok(libc::AF_NETLINK)) => {
                            if let std::collections::btree_map::Entry::Vacant(v) = self.netlink.entry(st.st_ino) {
                                v.insert(netlink::dump(pid, info.fd, dup, st.st_ino)?);
                            }
                            Kind::Netlink(pb::NetlinkFile { ino: st.st_ino, flags: info.flags & !(libc::O_CLOEXEC as u32) })
                        }
                        SFlag::S_IFSOCK => {
                            self.unix.add(pid, info.fd, &info.link, dup, st.st_ino)?;
                            Kind::Unix(pb::UnixFile { ino: st.st_ino, flags: info.flags & !(libc::O_CLOEXEC as u32) })
                        }
                        SFlag::S_IFIFO => {
                            let k = pipe::PipeKind::dump(pid, info, dup, &st)?;
                            if self.pipes_seen.insert(st.st_ino) {
                                self.pipes.push(pipe::capture_data(pid, info, &st)?);
                            }
                            k
                        }
                        _ => {
                            return Err(Error::Unsupported {
                                pid,
                                fd: Some(info.fd),
                                what: format!("file {} of type {:o}", info.link, st.st_mode & libc::S_IFMT),
                                hint: Some("not supported yet"),
                            });
                        }
                    };
                    let id = self.entries.len() as u32 + 1;
                    let (owner, signum) = owner_of(pid, info, dup, vpid)?;
                    if matches!(kind, Kind::Epoll(_)) {
                        self.pending_epolls.push((pid, info.fd, self.entries.len(), watches));
                    }
                    self.entries.push(pb::FileEntry { id, kind: Some(kind), owner, signum });
                    self.first_seen.push((pid, info.fd));
                    self.seen.entry((st.st_dev, st.st_ino)).or_default().insert(at, (pid, info.fd, id));
                    id
                }
            };
            // fdinfo shows a process's POSIX locks on every fd of the file, and a
            // description's locks on every fd of it: each is taken through one.
            let mut locks = Vec::new();
            let mut keys = Vec::new();
            for line in &info.locks {
                let (l, dev_ino) = locks::parse(line).map_err(|what| Error::Unsupported { pid, fd: Some(info.fd), what: format!("{} holds {what}", info.link), hint: Some("only POSIX, flock and OFD locks are supported") })?;
                // fdinfo shows a lock on the fds of the description it was taken
                // through (a POSIX lock: per process too).
                let key = if l.kind == locks::POSIX { (pid, 0, 0, id) } else { (0, 0, 0, id) };
                if self.locks_seen.contains(&key) {
                    continue;
                }
                keys.push(key);
                self.locks_taken.push((l.clone(), dev_ino));
                locks.push(l);
            }
            self.locks_seen.extend(keys);
            out.push(pb::FdEntry { fd: info.fd, file_id: id, cloexec: info.flags & libc::O_CLOEXEC as u32 != 0, locks });
        }
        Ok(out)
    }
}

impl FileTable {
    /// Finds the files the tree's epolls watch, now that `pid` (`vpid` in the tree)
    /// has all its fds (`fds`) in the table: a watch's file must be at its fd
    /// number in a process that holds the epoll (kcmp KCMP_EPOLL_TFD).
    pub fn resolve_epolls(&mut self, pid: i32, vpid: i32, fds: &[pb::FdEntry]) -> Result<()> {
        self.epolls.add_process(pid, vpid, fds.to_vec(), &self.pending_epolls, &mut self.entries)
    }

    /// Refuses epoll watches no process of the tree holds at their fd number.
    pub fn finish_epolls(&self) -> Result<()> {
        self.epolls.check_all_resolved(&self.pending_epolls, &self.entries)
    }

    /// Describes every unix socket of the tree and the messages queued on them;
    /// files passed in those messages (sockets too) join the table. `vpid` as for
    /// `dump_fds`.
    /// `own_pidns`: the tree has a PID namespace of its own (then credentials of a
    /// process outside the tree, queued on a socket, are refused: the task sees
    /// them with a number crtool cannot learn).
    pub fn finish_sockets(&mut self, vpid: &dyn Fn(i32) -> Option<i32>, ext_unix_sk: bool, own_pidns: bool) -> Result<Vec<pb::UnixSocket>> {
        let me = std::process::id() as i32;
        loop {
            let todo = self.unix.undescribed();
            if todo.is_empty() {
                break;
            }
            for ino in todo {
                for p in self.unix.describe(ino, vpid)? {
                    let mut packet = p.packet;
                    if own_pidns && let Some(c) = packet.creds.as_ref().filter(|c| c.outside) {
                        return Err(Error::Unsupported {
                            pid: me,
                            fd: None,
                            what: format!("socket:[{ino}] has a message queued with the credentials (SCM_CREDENTIALS) of pid {}, outside the dumped tree's PID namespace", c.pid),
                            hint: Some("let the task read it first; in a tree with its own PID namespace only credentials of its own processes are supported"),
                        });
                    }
                    for f in p.files {
                        let fd = f.as_raw_fd();
                        let info = info_of(me, fd)?;
                        if info.locked {
                            return Err(Error::Unsupported { pid: me, fd: None, what: format!("{} in flight in a message on socket:[{ino}] holds a lock", info.link), hint: Some("locks of files in flight are not supported") });
                        }
                        let ids = self.dump_fds(me, std::slice::from_ref(&info), std::slice::from_ref(&f), vpid)?;
                        packet.fds.push(ids[0].file_id);
                        self.in_flight.push(f);
                    }
                    self.packets.push(packet);
                }
            }
        }
        if let Some(&(_, fd, _, _)) = self.pending_epolls.iter().find(|p| p.0 == me) {
            return Err(Error::Unsupported { pid: me, fd: None, what: format!("an epoll instance (crtool's fd {fd}) is in flight in a queued message"), hint: Some("epolls passed over unix sockets are not supported") });
        }
        let sockets = self.unix.resolve(ext_unix_sk, vpid)?;
        unix::check_requeue(&sockets, &self.packets, &|ino| self.unix.holder(ino))?;
        unix::check_senders(&sockets, &self.packets, &|ino| self.unix.holder(ino))?;
        // Bytes an outside peer sent to a stream socket cannot be put into the socket
        // the caller hands over at restore.
        if let Some(s) = sockets.iter().find(|s| s.external && s.r#type != libc::SOCK_DGRAM as u32 && self.packets.iter().any(|p| p.ino == s.ino)) {
            let (pid, fd) = self.unix.holder(s.ino);
            return Err(Error::Unsupported {
                pid,
                fd: (fd >= 0).then_some(fd),
                what: format!("{} has data queued from its peer outside the tree, which the socket handed over at restore could not hold", unix::describe(s)),
                hint: Some("let the task read it first"),
            });
        }
        Ok(sockets)
    }

    /// Unix sockets of the tree also open in a process outside it (restore would
    /// make new sockets, which that process would not share): refused. Checked
    /// before any queue is read (SO_PEEK_OFF would move under that process's
    /// peeks) and again for sockets found in flight.
    pub fn check_outside_sockets(&self, tree: &std::collections::BTreeSet<i32>) -> Result<()> {
        let sockets: std::collections::BTreeSet<String> =
            self.entries.iter().filter_map(|e| match &e.kind { Some(Kind::Unix(u)) => Some(format!("socket:[{}]", u.ino)), Some(Kind::Inet(i)) => Some(format!("socket:[{}]", i.ino)), Some(Kind::Netlink(n)) => Some(format!("socket:[{}]", n.ino)), Some(Kind::Packet(n)) => Some(format!("socket:[{}]", n.ino)), _ => None }).collect();
        if !sockets.is_empty() {
            let outside = pipe::outside_holders(tree, &sockets);
            if let Some((k, &(opid, ofd))) = outside.iter().next() {
                let (pid, fd) = self.entries.iter().position(|e| matches!(&e.kind, Some(Kind::Unix(u)) if format!("socket:[{}]", u.ino) == *k) || matches!(&e.kind, Some(Kind::Inet(i)) if format!("socket:[{}]", i.ino) == *k) || matches!(&e.kind, Some(Kind::Netlink(n)) if format!("socket:[{}]", n.ino) == *k) || matches!(&e.kind, Some(Kind::Packet(n)) if format!("socket:[{}]", n.ino) == *k)).map(|i| self.first_seen[i]).unwrap_or((0, -1));
                let comm = std::fs::read_to_string(format!("/proc/{opid}/comm")).unwrap_or_default();
                return Err(Error::Unsupported {
                    pid,
                    fd: (fd >= 0).then_some(fd),
                    what: format!("{k} is also open in pid {opid} ({}) fd {ofd}, outside the dumped tree", comm.trim()),
                    hint: Some("dump a tree that holds every process using it, or close it in the other process"),
                });
            }
        }
        Ok(())
    }

    /// Pipes and FIFOs whose other end a process outside the tree holds: refused,
    /// unless `external` names them ("pipe:[ID]", ID the pipe's or FIFO's inode),
    /// then marked so: restore takes a pipe from the caller (--inherit-fd) and
    /// reopens a FIFO by path, and neither's buffered bytes are stored (they stay in
    /// the pipe, which the process outside keeps). `tree` are the tree's pids.
    pub fn check_outside_peers(&mut self, tree: &std::collections::BTreeSet<i32>, external: &[String]) -> Result<()> {
        let key = |k: &Kind| match k {
            Kind::Pipe(p) => Some((format!("pipe:[{}]", p.pipe_id), p.pipe_id)),
            Kind::Fifo(f) => Some((f.path.clone(), f.pipe_id)),
            _ => None,
        };
        // (Held sockets were checked before their queues were read; again only if
        // messages brought more.)
        if !self.in_flight.is_empty() {
            self.check_outside_sockets(tree)?;
        }
        let held: Vec<(String, u64)> = self.entries.iter().filter_map(|e| e.kind.as_ref().and_then(key)).collect();
        let keys: std::collections::BTreeSet<String> = held.iter().map(|(k, _)| k.clone()).collect();
        // Every --external names a pipe the tree holds.
        let ids: std::collections::BTreeSet<String> = held.iter().map(|(_, id)| format!("pipe:[{id}]")).collect();
        if let Some(x) = external.iter().find(|x| !ids.contains(*x)) {
            return Err(Error::Unsupported {
                pid: tree.first().copied().unwrap_or(0),
                fd: None,
                what: format!("--external {x}: no process of the tree holds {x}"),
                hint: Some("name a pipe as /proc/PID/fd of a process in the tree shows it"),
            });
        }
        if keys.is_empty() {
            return Ok(());
        }
        let outside = pipe::outside_holders(tree, &keys);
        for (i, e) in self.entries.iter_mut().enumerate() {
            let Some((k, id)) = e.kind.as_ref().and_then(key) else { continue };
            let Some(&(opid, ofd)) = outside.get(&k) else { continue };
            let name = format!("pipe:[{id}]");
            if !external.contains(&name) {
                let (pid, fd) = self.first_seen[i];
                let comm = std::fs::read_to_string(format!("/proc/{opid}/comm")).unwrap_or_default();
                return Err(Error::Unsupported {
                    pid,
                    fd: Some(fd),
                    what: format!("{} is also open in pid {opid} ({}) fd {ofd}, outside the dumped tree", describe(e.kind.as_ref().unwrap()), comm.trim()),
                    hint: Some("dump a tree that holds both ends, or pass --external pipe:[ID] and hand the pipe over at restore with --inherit-fd fd[N]:pipe:[ID]"),
                });
            }
            match e.kind.as_mut() {
                Some(Kind::Pipe(p)) => p.external = true,
                Some(Kind::Fifo(f)) => f.external = true,
                _ => {}
            }
            self.pipes.retain(|p| p.pipe_id != id);
        }
        Ok(())
    }
}

/// The owner (F_GETOWN_EX) and signal (F_GETSIG) of an open file description,
/// read through crtool's duplicate of it. An owner outside the tree is refused.
fn owner_of(pid: i32, info: &FdInfo, dup: &OwnedFd, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<(Option<pb::FileOwner>, i32)> {
    if info.flags & libc::O_PATH as u32 != 0 {
        return Ok((None, 0)); // fcntl(2) has no owner or signal for O_PATH files
    }
    let (ty, owner) = fd::get_owner(dup).map_err(|e| Error::sys(format!("pid {pid} fd {}: F_GETOWN_EX", info.fd), e))?;
    let signum = fd::get_sig(dup).map_err(|e| Error::sys(format!("pid {pid} fd {}: F_GETSIG", info.fd), e))?;
    if owner == 0 {
        return Ok((None, signum));
    }
    let v = vpid(owner).ok_or_else(|| Error::Unsupported {
        pid,
        fd: Some(info.fd),
        what: format!("{} sends SIGIO to {} {owner}, outside the dumped tree", info.link, if ty == 2 { "process group" } else { "pid" }),
        hint: Some("clear it (fcntl F_SETOWN 0) or dump the tree that holds the owner"),
    })?;
    Ok((Some(pb::FileOwner { r#type: ty, pid: v }), signum))
}

/// Whether restore will be able to reopen `kind` as the images describe it (tried
/// for real where that has no side effect), and, with `how`, that a regular file is
/// still the one that was dumped. `Err` says why not.
pub fn check_reopen(kind: &Kind, how: identity::Validation) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match kind {
        Kind::Reg(r) if r.ghost => Ok(()),
        Kind::Reg(r) => {
            let f = reg::RegFileKind(r.clone()).open().map_err(|e| format!("cannot reopen it: {e}"))?;
            if how == identity::Validation::FileSize && r.mode & libc::S_IFMT == libc::S_IFREG {
                let size = std::fs::File::from(f).metadata().map_err(|e| e.to_string())?.len();
                if size != r.size {
                    return Err(format!("its size is {size} bytes, it was {} bytes when dumped", r.size));
                }
            }
            Ok(())
        }
        Kind::Chr(c) => chr::ChrDevKind(c.clone()).open().map(drop).map_err(|e| format!("cannot reopen it: {e}")),
        Kind::Fifo(f) => match std::fs::metadata(&f.path) {
            Ok(m) if m.file_type().is_fifo() => Ok(()),
            Ok(_) => Err("it is no longer a FIFO".into()),
            Err(e) => Err(format!("cannot find it: {e}")),
        },
        Kind::Pipe(_) | Kind::Unix(_) | Kind::Memfd(_) | Kind::Inotify(_) | Kind::Tty(_) | Kind::Pty(_) | Kind::Proc(_) | Kind::Fanotify(_) | Kind::Inet(_) | Kind::Netlink(_) | Kind::Packet(_) | Kind::Pidfd(_) | Kind::Eventfd(_) | Kind::Signalfd(_) | Kind::Timerfd(_) | Kind::Epoll(_) | Kind::Tun(_) => Ok(()),
    }
}

fn flags_of(kind: &Kind) -> u32 {
    match kind {
        Kind::Reg(r) => r.flags,
        Kind::Chr(c) => c.flags,
        Kind::Pipe(p) => p.flags,
        Kind::Fifo(f) => f.flags,
        Kind::Unix(u) => u.flags,
        Kind::Memfd(m) => m.flags,
        Kind::Tty(t) => t.flags,
        Kind::Pty(p) => p.flags,
        Kind::Proc(p) => p.flags,
        Kind::Fanotify(_) => 0, // (fanotify files have no O_ASYNC)
        Kind::Inet(i) => i.flags,
        Kind::Netlink(n) => n.flags,
        Kind::Packet(n) => n.flags,
        Kind::Tun(t) => t.flags,
        Kind::Pidfd(p) => p.flags,
        k => event::flags(k).unwrap_or(0),
    }
}

pub fn describe(kind: &Kind) -> String {
    match kind {
        Kind::Reg(r) => r.path.clone(),
        Kind::Chr(c) => format!("{} ({}:{})", c.path, c.major, c.minor),
        Kind::Pipe(p) => format!("pipe:[{}] ({})", p.pipe_id, if p.flags & 3 == 0 { "read end" } else { "write end" }),
        Kind::Fifo(f) => format!("FIFO {}", f.path),
        Kind::Unix(u) => format!("socket:[{}]", u.ino),
        Kind::Memfd(m) => format!("memfd {} at {}", m.inode, m.pos),
        Kind::Tty(t) => format!("{} (the shell job's terminal: restore gives it its own)", t.path),
        Kind::Pidfd(p) => format!("pidfd of pid {}", p.pid),
        Kind::Proc(p) => p.path.clone(),
        Kind::Fanotify(f) => fanotify::describe(f),
        Kind::Inet(i) => format!("socket:[{}] (inet)", i.ino),
        Kind::Netlink(n) => format!("socket:[{}] (netlink)", n.ino),
        Kind::Packet(n) => format!("socket:[{}] (packet)", n.ino),
        Kind::Tun(t) if t.ifname.is_empty() => "/dev/net/tun (not attached)".into(),
        Kind::Tun(t) => format!("/dev/net/tun (attached to {})", t.ifname),
        Kind::Pty(p) => match p.role() {
            pb::pty_file::Role::Master => format!("{} (master of /dev/pts/{})", p.path, p.index),
            _ => format!("{} (/dev/pts/{})", p.path, p.index),
        },
        k => event::describe(k).unwrap_or_default(),
    }
}
