//! Event files: eventfd, signalfd, timerfd and epoll, read from their fdinfo
//! (proc(5): fs/eventfd.c, fs/signalfd.c, fs/timerfd.c, fs/eventpoll.c
//! `*_show_fdinfo`) through crtool's duplicate, and made again with the same state.
//! An epoll instance's watches are added back by the task that holds it first,
//! with its own fd numbers, once all its fds are in place (`Parked::install`).

use super::FdInfo;
use crate::error::{Error, Result};
use crate::sys::event;
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::{AsRawFd, OwnedFd};

/// The anon-inode kinds this module handles, by their /proc/PID/fd link.
pub fn handles(link: &str) -> bool {
    matches!(link, "anon_inode:[eventfd]" | "anon_inode:[signalfd]" | "anon_inode:[timerfd]" | "anon_inode:[eventpoll]" | "anon_inode:inotify")
}

/// An epoll watch as fdinfo shows it, before its file is known.
pub struct Watch {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    /// Inode of the watched file.
    pub ino: u64,
}

/// Describes the event file behind `dup` (fd `info.fd` of `pid`); for an epoll,
/// also its watches, whose files the caller finds among the task's fds.
pub fn dump(pid: i32, info: &FdInfo, dup: &OwnedFd) -> Result<(Kind, Vec<Watch>)> {
    if info.link == "anon_inode:[timerfd]" {
        event::timerfd_settle(dup.as_raw_fd()).map_err(|e| Error::sys(format!("pid {pid} fd {}: timerfd_gettime", info.fd), e))?;
    }
    let path = format!("/proc/self/fdinfo/{}", dup.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|e| Error::proc(pid, format!("fdinfo/{}", info.fd), e))?;
    let bad = |what: &str| Error::Unsupported { pid, fd: Some(info.fd), what: format!("{}: cannot read its {what} from fdinfo", info.link), hint: None };
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    let kind = match info.link.as_str() {
        "anon_inode:[eventfd]" => {
            let count = field("eventfd-count:").and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(|| bad("count"))?;
            let semaphore = field("eventfd-semaphore:").is_some_and(|v| v == "1");
            Kind::Eventfd(pb::EventFd { count, semaphore, flags })
        }
        "anon_inode:[signalfd]" => {
            let sigmask = field("sigmask:").and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(|| bad("mask"))?;
            Kind::Signalfd(pb::SignalFd { sigmask, flags })
        }
        "anon_inode:[timerfd]" => {
            let num = |name: &str| field(name).and_then(|v| v.parse::<i64>().ok()).ok_or_else(|| bad(name));
            let pair = |name: &str| -> Result<u64> {
                let v = field(name).ok_or_else(|| bad(name))?;
                let (s, ns) = v.trim_matches(|c| c == '(' || c == ')').split_once(',').ok_or_else(|| bad(name))?;
                let (s, ns): (u64, u64) = (s.trim().parse().map_err(|_| bad(name))?, ns.trim().parse().map_err(|_| bad(name))?);
                Ok(s * 1_000_000_000 + ns)
            };
            let clockid = num("clockid:")? as i32;
            let ticks = num("ticks:")? as u64;
            let settime = field("settime flags:").and_then(|v| u32::from_str_radix(v, 8).ok()).ok_or_else(|| bad("settime flags"))?;
            let value_ns = pair("it_value:")?;
            let interval_ns = pair("it_interval:")?;
            let abstime = settime & libc::TFD_TIMER_ABSTIME as u32 != 0;
            let deadline_ns = if abstime && value_ns > 0 {
                event::clock_ns(clockid).map_err(|e| Error::sys(format!("pid {pid} fd {}: clock_gettime({clockid})", info.fd), e))? + value_ns as i64
            } else {
                0
            };
            Kind::Timerfd(pb::TimerFd { clockid, flags, abstime, cancel_on_set: settime & 2 != 0, value_ns, interval_ns, deadline_ns, ticks })
        }
        "anon_inode:inotify" => {
            let pending = event::pending_bytes(dup.as_raw_fd()).map_err(|e| Error::sys(format!("pid {pid} fd {}: FIONREAD", info.fd), e))?;
            if pending > 0 {
                return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("inotify instance with {pending} bytes of events not read yet"), hint: Some("events cannot be read without consuming them; dump once the task has read them") });
            }
            let mut watches = Vec::new();
            for l in text.lines().filter(|l| l.starts_with("inotify ")) {
                watches.push(inotify_watch(pid, info.fd, l)?);
            }
            watches.sort_by_key(|w| w.wd);
            Kind::Inotify(pb::Inotify { flags, watches })
        }
        "anon_inode:[eventpoll]" => {
            let mut watches = Vec::new();
            for l in text.lines().filter(|l| l.starts_with("tfd:")) {
                // "tfd:        3 events:       19 data:                3  pos:0 ino:40e sdev:10"
                let w: Vec<&str> = l.split_whitespace().collect();
                let after = |key: &str| w.iter().position(|x| *x == key).and_then(|i| w.get(i + 1)).copied();
                let tagged = |key: &str| w.iter().find_map(|x| x.strip_prefix(key));
                let hex = |v: Option<&str>| v.and_then(|v| u64::from_str_radix(v, 16).ok());
                let (Some(tfd), Some(events), Some(data), Some(ino)) = (after("tfd:").and_then(|v| v.parse().ok()), hex(after("events:")), hex(after("data:")), hex(tagged("ino:"))) else {
                    return Err(bad("watches"));
                };
                watches.push(Watch { tfd, events: events as u32, data, ino });
            }
            return Ok((Kind::Epoll(pb::Epoll { flags, targets: Vec::new() }), watches));
        }
        _ => return Err(bad("kind")),
    };
    Ok((kind, Vec::new()))
}

/// One "inotify wd:4 ino:3c4a7 sdev:fe00000 mask:100 ignored_mask:0
/// fhandle-bytes:8 fhandle-type:1 f_handle:a7c4..." line: the watched file is found
/// by its handle (open_by_handle_at on its filesystem's mount) and kept by path.
fn inotify_watch(pid: i32, fd: i32, line: &str) -> Result<pb::InotifyWatch> {
    let bad = || Error::Unsupported { pid, fd: Some(fd), what: format!("inotify watch {line:?}: unreadable"), hint: None };
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k));
    let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(v, 16).ok());
    let (Some(wd), Some(ino), Some(sdev), Some(mask), Some(ty), Some(handle)) =
        (field("wd:").and_then(|v| v.parse::<i32>().ok()), hex("ino:"), hex("sdev:"), hex("mask:"), field("fhandle-type:").and_then(|v| i32::from_str_radix(v, 16).ok()), field("f_handle:"))
    else {
        return Err(bad());
    };
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let refuse = |why: String| Error::Unsupported { pid, fd: Some(fd), what: format!("inotify watch {wd} (inode {ino:#x} on {major}:{minor}): {why}"), hint: Some("watches must be on files that have a path") };
    let path = path_of_handle(sdev, ty, handle).map_err(refuse)?;
    Ok(pb::InotifyWatch { wd, mask: mask as u32, path, ino })
}

/// The path of the file a handle names as fdinfo shows it ("sdev:" the kernel's
/// dev_t: major in the high 12 bits of 32, minor in the low 20; "f_handle:" hex),
/// found with open_by_handle_at on a mount of its filesystem. `Err`: why not.
pub fn path_of_handle(sdev: u64, ty: i32, handle_hex: &str) -> std::result::Result<String, String> {
    let bytes: Vec<u8> = (0..handle_hex.len() / 2).filter_map(|i| u8::from_str_radix(&handle_hex[2 * i..2 * i + 2], 16).ok()).collect();
    let mount = mount_of_dev(sdev)?;
    let mfd = nix::fcntl::open(&mount, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty()).map_err(|e| format!("opening its mount {}: {e}", mount.display()))?;
    let f = event::open_by_handle(mfd.as_raw_fd(), ty, &bytes).map_err(|e| format!("open_by_handle_at: {e}"))?;
    let link = crate::procinfo::file_link(&format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|e| e.to_string())?;
    if link.deleted || !link.path.starts_with('/') {
        return Err(format!("it is {} (deleted or without a path)", link.path));
    }
    Ok(link.path)
}

/// A mount point of the filesystem with kernel dev_t `sdev` (as fdinfo shows it).
pub fn mount_of_dev(sdev: u64) -> std::result::Result<std::path::PathBuf, String> {
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).map_err(|e| format!("reading mountinfo: {e}"))?;
    mounts.into_iter().find(|m| m.majmin == format!("{major}:{minor}")).map(|m| m.mount_point).ok_or_else(|| format!("no mount of its filesystem {major}:{minor}"))
}

/// Makes the event file `kind` again (an epoll without its watches).
pub fn open(kind: &Kind) -> std::io::Result<OwnedFd> {
    let nonblock = |flags: u32| (flags & libc::O_NONBLOCK as u32) as i32;
    let fd = match kind {
        Kind::Eventfd(e) => event::eventfd(e.count, nonblock(e.flags) | if e.semaphore { libc::EFD_SEMAPHORE } else { 0 })?,
        Kind::Signalfd(s) => event::signalfd(s.sigmask, nonblock(s.flags))?,
        Kind::Timerfd(t) => {
            let (settime, value) = if t.abstime && t.value_ns > 0 {
                let flags = libc::TFD_TIMER_ABSTIME | if t.cancel_on_set { 2 } else { 0 };
                (flags, t.deadline_ns.max(1) as u64)
            } else {
                (0, t.value_ns)
            };
            event::timerfd(t.clockid, nonblock(t.flags), settime, value, t.interval_ns, t.ticks)?
        }
        Kind::Epoll(_) => event::epoll_create(0)?,
        Kind::Inotify(i) => inotify(i)?,
        _ => return Err(std::io::Error::other("not an event file")),
    };
    Ok(fd)
}

/// An inotify instance with the same watches under the same watch descriptors:
/// they are allocated in turn (idr_alloc_cyclic), so gaps are filled with watches
/// on throwaway memfds, removed again, and their IN_IGNORED events read away.
fn inotify(i: &pb::Inotify) -> std::io::Result<OwnedFd> {
    let fd = event::inotify_init(libc::IN_NONBLOCK)?;
    let raw = fd.as_raw_fd();
    let mut fillers = Vec::new();
    let mut next = 1;
    for w in &i.watches {
        while next < w.wd {
            let m = crate::sys::fd::memfd_create("crtool-inotify-gap")?;
            let wd = event::inotify_add(raw, &format!("/proc/self/fd/{}", m.as_raw_fd()), libc::IN_ACCESS)?;
            fillers.push((wd, m));
            next = wd + 1;
        }
        let wd = event::inotify_add(raw, &w.path, w.mask)?;
        if wd != w.wd {
            return Err(std::io::Error::other(format!("inotify watch on {} got descriptor {wd}, it had {}", w.path, w.wd)));
        }
        next = wd + 1;
    }
    for (wd, _) in &fillers {
        event::inotify_rm(raw, *wd)?;
    }
    drop(fillers);
    let mut buf = [0u8; 4096];
    while nix::unistd::read(&fd, &mut buf).is_ok_and(|n| n > 0) {}
    crate::sys::fd::set_status_flags(&fd, i.flags)?;
    Ok(fd)
}

pub fn describe(kind: &Kind) -> Option<String> {
    Some(match kind {
        Kind::Eventfd(e) => format!("eventfd (count {}{})", e.count, if e.semaphore { ", semaphore" } else { "" }),
        Kind::Signalfd(s) => format!("signalfd (mask {:#x})", s.sigmask),
        Kind::Timerfd(t) => format!("timerfd (clock {}, {} ns left, interval {} ns, {} unread)", t.clockid, t.value_ns, t.interval_ns, t.ticks),
        Kind::Epoll(e) => format!("epoll ({} watches)", e.targets.len()),
        Kind::Inotify(i) => format!("inotify ({} watches: {})", i.watches.len(), i.watches.iter().map(|w| format!("{} {}", w.wd, w.path)).collect::<Vec<_>>().join(", ")),
        _ => return None,
    })
}

pub fn flags(kind: &Kind) -> Option<u32> {
    Some(match kind {
        Kind::Eventfd(e) => e.flags,
        Kind::Signalfd(s) => s.flags,
        Kind::Timerfd(t) => t.flags,
        Kind::Epoll(e) => e.flags,
        Kind::Inotify(i) => i.flags,
        _ => return None,
    })
}

/// EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE: bits a watch keeps after
/// an EPOLLONESHOT event disarmed it (fs/eventpoll.c EP_PRIVATE_BITS).
const EP_PRIVATE_BITS: u32 = (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;
/// What a disarmed watch is added back with, to fire once at once.
pub const DISARM_WITH: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLPRI | libc::EPOLLRDHUP) as u32;

/// Resolves epoll watches to files of the tree as processes are dumped.
#[derive(Default)]
pub struct EpollResolver {
    /// pid → (vpid, its fds) of every process dumped so far.
    procs: std::collections::BTreeMap<i32, (i32, Vec<pb::FdEntry>)>,
    /// (entry index, watch index) → target, once found.
    found: std::collections::BTreeMap<(usize, usize), pb::EpollTarget>,
}

impl EpollResolver {
    /// `pending`: (first holder's pid, its epoll fd, entry index, watches).
    pub fn add_process(&mut self, pid: i32, vpid: i32, fds: Vec<pb::FdEntry>, pending: &[(i32, i32, usize, Vec<Watch>)], entries: &mut [pb::FileEntry]) -> Result<()> {
        self.procs.insert(pid, (vpid, fds));
        for (ep_pid, epfd, idx, watches) in pending {
            let id = entries[*idx].id;
            // The k-th watch with a given fd number is slot k of that number.
            let mut seen_tfd: std::collections::BTreeMap<i32, u32> = Default::default();
            for (wi, w) in watches.iter().enumerate() {
                let toff = *seen_tfd.entry(w.tfd).and_modify(|n| *n += 1).or_insert(0);
                if self.found.contains_key(&(*idx, wi)) {
                    continue;
                }
                for (&p, (pv, pfds)) in &self.procs {
                    if !pfds.iter().any(|e| e.file_id == id) {
                        continue; // does not hold the epoll
                    }
                    let Some(e) = pfds.iter().find(|e| e.fd == w.tfd) else { continue };
                    let same = crate::sys::process::kcmp_epoll_tfd(p, w.tfd, *ep_pid, *epfd, w.tfd, toff).map_err(|e| Error::sys(format!("pid {ep_pid} fd {epfd}: kcmp KCMP_EPOLL_TFD"), e))?;
                    if !same {
                        continue;
                    }
                    let disarmed = w.events & !EP_PRIVATE_BITS == 0 && w.events & libc::EPOLLONESHOT as u32 != 0;
                    if disarmed && !ready_now(p, w.tfd) {
                        return Err(Error::Unsupported {
                            pid: *ep_pid,
                            fd: Some(*epfd),
                            what: format!("epoll has a fired EPOLLONESHOT watch on fd {} (of pid {p}), whose file is not ready now", w.tfd),
                            hint: Some("restore disarms such a watch by letting it fire once, which needs the file ready; re-arm it (EPOLL_CTL_MOD) before the dump"),
                        });
                    }
                    self.found.insert((*idx, wi), pb::EpollTarget { tfd: w.tfd, file_id: e.file_id, events: w.events, data: w.data, holder: *pv, disarmed });
                    break;
                }
            }
            let targets: Vec<pb::EpollTarget> = (0..watches.len()).filter_map(|wi| self.found.get(&(*idx, wi)).cloned()).collect();
            // Disarmed watches are made to fire by their holder alone: every watch
            // of such an epoll must have the same holder.
            if targets.iter().any(|t| t.disarmed) && targets.iter().any(|t| t.holder != targets[0].holder) {
                return Err(Error::Unsupported {
                    pid: *ep_pid,
                    fd: Some(*epfd),
                    what: "epoll with a fired EPOLLONESHOT watch and watches added by several processes".into(),
                    hint: Some("not supported"),
                });
            }
            if let Some(Kind::Epoll(ep)) = entries[*idx].kind.as_mut() {
                ep.targets = targets;
            }
        }
        Ok(())
    }

    /// Every watch found.
    pub fn check_all_resolved(&self, pending: &[(i32, i32, usize, Vec<Watch>)], _entries: &[pb::FileEntry]) -> Result<()> {
        for (ep_pid, epfd, idx, watches) in pending {
            if let Some((wi, w)) = watches.iter().enumerate().find(|(wi, _)| !self.found.contains_key(&(*idx, *wi))) {
                let _ = wi;
                return Err(Error::Unsupported {
                    pid: *ep_pid,
                    fd: Some(*epfd),
                    what: format!("epoll watches fd {} (inode {:#x}), which no process holding the epoll has open at that number now (closed, or another file there)", w.tfd, w.ino),
                    hint: Some("watched files must stay open at the fd number they were added with"),
                });
            }
        }
        Ok(())
    }
}

/// Whether fd `fd` of `pid` is ready for any event now (poll through a duplicate
/// taken with pidfd_getfd, which changes nothing).
fn ready_now(pid: i32, fd: i32) -> bool {
    let Ok(pidfd) = crate::sys::process::pidfd_open(nix::unistd::Pid::from_raw(pid)) else { return false };
    let Ok(dup) = crate::sys::process::pidfd_getfd(&pidfd, fd) else { return false };
    use std::os::fd::AsFd;
    let flags = nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLOUT | nix::poll::PollFlags::POLLPRI;
    let mut p = [nix::poll::PollFd::new(dup.as_fd(), flags)];
    nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
}
