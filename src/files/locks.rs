//! File locks (dump --file-locks, CRIU's flag): POSIX record locks (owned by the
//! process), flock(2) and OFD locks (owned by the open file description), read
//! from each fd's fdinfo "lock:" lines (fs/locks.c show_fd_locks) and taken again
//! by the restored task through the same fd before it runs. Leases and locks crtool
//! cannot attribute to an fd are refused.

use crate::error::{Error, Result};
use images_format::pb;
use std::os::fd::RawFd;

pub const POSIX: u32 = 1;
pub const FLOCK: u32 = 2;
pub const OFD: u32 = 3;

/// One "lock:" line of fdinfo (or a line of /proc/locks): what it locks, or the
/// kind it names when crtool cannot restore it (lease, delegation, ...).
pub fn parse(line: &str) -> std::result::Result<(pb::FileLock, String), String> {
    // "1: POSIX  ADVISORY  WRITE 1234 fe:00:10010664 5 14" (the "->" of a
    // blocked waiter is skipped by the caller).
    let w: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
    let (Some(kind), Some(mode), Some(ty), Some(dev_ino), Some(start), Some(end)) = (w.get(1), w.get(2), w.get(3), w.get(5), w.get(6), w.get(7)) else {
        return Err(format!("unreadable lock line {line:?}"));
    };
    let kind = match *kind {
        "POSIX" => POSIX,
        "FLOCK" => FLOCK,
        "OFDLCK" => OFD,
        other => return Err(format!("a {other} lock")),
    };
    if *mode != "ADVISORY" {
        return Err(format!("a {mode} lock"));
    }
    let write = match *ty {
        "WRITE" => true,
        "READ" => false,
        other => return Err(format!("a lock of type {other}")),
    };
    let start = start.parse().map_err(|_| format!("unreadable lock line {line:?}"))?;
    let (end, to_eof) = if *end == "EOF" { (0, true) } else { (end.parse().map_err(|_| format!("unreadable lock line {line:?}"))?, false) };
    Ok((pb::FileLock { kind, write, start, end, to_eof }, dev_ino.to_string()))
}

/// Takes lock `l` through fd `fd` of this process (without waiting: a lock someone
/// else holds now is an error).
pub fn take(fd: RawFd, l: &pb::FileLock) -> std::result::Result<(), String> {
    match l.kind {
        FLOCK => crate::sys::fd::flock(fd, l.write).map_err(|e| format!("flock: {e}")),
        POSIX | OFD => {
            let len = if l.to_eof { 0 } else { l.end + 1 - l.start };
            crate::sys::fd::record_lock(fd, l.kind == OFD, l.write, l.start, len).map_err(|e| format!("fcntl({}): {e}", if l.kind == OFD { "F_OFD_SETLK" } else { "F_SETLK" }))
        }
        k => Err(format!("unknown lock kind {k}")),
    }
}

pub fn describe(l: &pb::FileLock) -> String {
    let kind = match l.kind {
        POSIX => "POSIX",
        FLOCK => "flock",
        OFD => "OFD",
        _ => "?",
    };
    let range = if l.to_eof { format!("{}-EOF", l.start) } else { format!("{}-{}", l.start, l.end) };
    format!("{kind} {} lock {range}", if l.write { "write" } else { "read" })
}

/// Every lock /proc/locks lists for a process of `pids` must be among `taken`
/// (kind, "maj:min:ino", start, end): a lock held only through a mapping, or by a
/// description no fd of the tree holds, would otherwise be lost.
pub fn check_all_accounted(pids: &[i32], taken: &[(pb::FileLock, String)]) -> Result<()> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        let Some(pid) = w.get(4).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !pids.contains(&pid) || line.contains("->") {
            continue;
        }
        let found = match parse(line) {
            Ok((l, di)) => taken.iter().any(|(t, tdi)| *t == l && *tdi == di),
            Err(what) => return Err(Error::Unsupported { pid, fd: None, what: format!("it holds {what} ({})", line.trim()), hint: Some("only POSIX, flock and OFD locks are supported") }),
        };
        if !found {
            return Err(Error::Unsupported {
                pid,
                fd: None,
                what: format!("it holds a lock no fd of the tree holds ({}), e.g. through a mapping only", line.trim()),
                hint: Some("keep an fd of the locked file open"),
            });
        }
    }
    Ok(())
}
