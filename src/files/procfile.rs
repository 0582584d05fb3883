//! Files of /proc: /proc/PID/... of a process of the tree (also /proc/self and
//! /proc/thread-self, which the kernel resolved at open), and files that name no
//! process (/proc/meminfo, /proc/sys/...). The task that holds one opens it again
//! by path once the process it names exists (a child forked after it, too), at its
//! offset (a seq_file regenerates its text up to there).

use super::FdInfo;
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;

/// Describes `info` (a file of procfs) of `pid`. `vpid` maps a pid as crtool sees
/// it into the tree's namespace (`None`: outside the tree).
pub fn dump(pid: i32, info: &FdInfo, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Kind> {
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(info.fd), what, hint: Some(hint) };
    let path = info.link.as_str();
    let rest = path.strip_prefix("/proc/").ok_or_else(|| refuse(format!("file {path} of a /proc mounted elsewhere"), "only files of a proc mounted on /proc are supported"))?;
    // Which PID namespace the numbers in the path are of: that of the proc the
    // holder sees at /proc. Its "self" names crtool if it is crtool's namespace.
    let me = std::process::id().to_string();
    let crtools = std::fs::read_link(format!("/proc/{pid}/root/proc/self")).is_ok_and(|l| l.to_string_lossy() == me);
    let own_ns = vpid(pid) != Some(pid);
    if !crtools && !own_ns {
        return Err(refuse(format!("{path} of a /proc of another PID namespace than the tree's"), "open /proc files through a /proc of the tree's PID namespace"));
    }
    let mut parts: Vec<String> = rest.split('/').map(str::to_string).collect();
    let Some(n) = parts.first().and_then(|p| p.parse::<i32>().ok()) else {
        // A file naming no process (/proc/meminfo, /proc/sys/...).
        return Ok(Kind::Proc(pb::ProcFile { path: path.to_string(), flags: info.flags & !(libc::O_CLOEXEC as u32), pos: info.pos }));
    };
    // Restore makes threads after it installs fds: only whole processes.
    let task = parts.get(1).map(String::as_str) == Some("task");
    if task && parts.get(2).is_some_and(|t| t.parse::<i32>().ok() != Some(n)) {
        return Err(refuse(format!("{path} names a thread other than its process's main thread"), "/proc files of other threads are not supported yet"));
    }
    if crtools {
        if own_ns {
            return Err(refuse(format!("{path} of a /proc of another PID namespace than the tree's"), "open /proc files through a /proc of the tree's PID namespace"));
        }
        let status = std::fs::read_to_string(format!("/proc/{n}/status")).unwrap_or_default();
        if status.lines().find_map(|l| l.strip_prefix("Tgid:")).map(str::trim) != Some(n.to_string().as_str()) {
            return Err(refuse(format!("{path} names thread {n}, not a process"), "/proc files of threads are not supported yet"));
        }
        let v = vpid(n).ok_or_else(|| refuse(format!("{path} names pid {n}, outside the dumped tree"), "only /proc files of processes of the tree are supported"))?;
        parts[0] = v.to_string();
        if task {
            parts[2] = v.to_string();
        }
    }
    // (Else numbered in the tree's own namespace already: its own /proc.)
    Ok(Kind::Proc(pb::ProcFile { path: format!("/proc/{}", parts.join("/")), flags: info.flags & !(libc::O_CLOEXEC as u32), pos: info.pos }))
}

/// Opens it again (in the task that holds it), waiting briefly for the process it
/// names: tasks are forked while others install their fds.
pub fn open(p: &pb::ProcFile) -> std::io::Result<OwnedFd> {
    let flags = p.flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match crate::sys::fd::open_at_pos(&p.path, flags, p.pos) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(std::io::Error::other(format!("{} did not appear within 10 s (the process it names was not restored?)", p.path))),
            r => return r,
        }
    }
}
