//! Files of /proc: /proc/PID/... of a process of the tree (also /proc/self and
//! /proc/thread-self, which the kernel resolved at open), and files that name no
//! process (/proc/meminfo, /proc/sys/...). The task that holds one opens it again
//! by path once the process it names exists (a child forked after it, too), at its
//! offset (a seq_file regenerates its text up to there).

use super::FdInfo;
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// Describes `info` (a file of procfs) of `pid`. `vpid` maps a pid as crtool sees
/// it into the tree's namespace (`None`: outside the tree).
pub fn dump(pid: i32, info: &FdInfo, st: &libc::stat, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Kind> {
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(info.fd), what, hint: Some(hint) };
    let path = info.link.as_str();
    let rest = path.strip_prefix("/proc/").ok_or_else(|| refuse(format!("file {path} of a /proc mounted elsewhere"), "only files of a proc mounted on /proc are supported"))?;
    // Which PID namespace the numbers in the path are of: crtool's /proc, or
    // another (the tree's own, mounted by `unshare --mount-proc`).
    let crtools = std::fs::metadata("/proc").map(|m| m.dev()).ok() == Some(st.st_dev);
    let own_ns = vpid(pid) != Some(pid);
    let mut parts: Vec<String> = rest.split('/').map(str::to_string).collect();
    // /proc/PID/... and /proc/PID/task/TID/...
    let mut ids = vec![0usize];
    if parts.get(1).map(String::as_str) == Some("task") && parts.len() > 2 {
        ids.push(2);
    }
    for &i in &ids {
        let Some(n) = parts.get(i).and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !crtools {
            // Numbered in the tree's own namespace already (its own /proc).
            continue;
        }
        if own_ns {
            return Err(refuse(format!("{path} of a /proc of another PID namespace than the tree's"), "open /proc files through a /proc mounted in the tree's PID namespace"));
        }
        let v = vpid(n).ok_or_else(|| refuse(format!("{path} names pid {n}, outside the dumped tree"), "only /proc files of processes of the tree are supported"))?;
        parts[i] = v.to_string();
    }
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
            r => return r,
        }
    }
}
