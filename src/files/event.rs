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
    matches!(link, "anon_inode:[eventfd]" | "anon_inode:[signalfd]" | "anon_inode:[timerfd]" | "anon_inode:[eventpoll]")
}

/// An epoll watch as fdinfo shows it, before its file is known.
pub struct Watch {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    /// Inode and device of the watched file.
    pub ino: u64,
    pub dev: u64,
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
        "anon_inode:[eventpoll]" => {
            let mut watches = Vec::new();
            for l in text.lines().filter(|l| l.starts_with("tfd:")) {
                // "tfd:        3 events:       19 data:                3  pos:0 ino:40e sdev:10"
                let w: Vec<&str> = l.split_whitespace().collect();
                let after = |key: &str| w.iter().position(|x| *x == key).and_then(|i| w.get(i + 1)).copied();
                let tagged = |key: &str| w.iter().find_map(|x| x.strip_prefix(key));
                let hex = |v: Option<&str>| v.and_then(|v| u64::from_str_radix(v, 16).ok());
                let (Some(tfd), Some(events), Some(data), Some(ino), Some(dev)) =
                    (after("tfd:").and_then(|v| v.parse().ok()), hex(after("events:")), hex(after("data:")), hex(tagged("ino:")), hex(tagged("sdev:")))
                else {
                    return Err(bad("watches"));
                };
                watches.push(Watch { tfd, events: events as u32, data, ino, dev });
            }
            return Ok((Kind::Epoll(pb::Epoll { flags, targets: Vec::new() }), watches));
        }
        _ => return Err(bad("kind")),
    };
    Ok((kind, Vec::new()))
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
        _ => return Err(std::io::Error::other("not an event file")),
    };
    Ok(fd)
}

pub fn describe(kind: &Kind) -> Option<String> {
    Some(match kind {
        Kind::Eventfd(e) => format!("eventfd (count {}{})", e.count, if e.semaphore { ", semaphore" } else { "" }),
        Kind::Signalfd(s) => format!("signalfd (mask {:#x})", s.sigmask),
        Kind::Timerfd(t) => format!("timerfd (clock {}, {} ns left, interval {} ns, {} unread)", t.clockid, t.value_ns, t.interval_ns, t.ticks),
        Kind::Epoll(e) => format!("epoll ({} watches)", e.targets.len()),
        _ => return None,
    })
}

pub fn flags(kind: &Kind) -> Option<u32> {
    Some(match kind {
        Kind::Eventfd(e) => e.flags,
        Kind::Signalfd(s) => s.flags,
        Kind::Timerfd(t) => t.flags,
        Kind::Epoll(e) => e.flags,
        _ => return None,
    })
}
