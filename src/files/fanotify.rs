//! fanotify groups (fanotify(7)): init flags, event flags and every mark (inode,
//! mount, filesystem; mask and ignored mask), read from /proc/PID/fdinfo and made
//! again with fanotify_init(2) and fanotify_mark(2). Marked objects are kept by
//! path: an inode by its file handle (open_by_handle_at), a mount by its id in
//! mountinfo, a filesystem by a mount of its device. Refused: events not read yet
//! (they cannot be read without consuming them), groups of the permission classes
//! (a process may be waiting for an answer), marks on objects without a path.

use super::FdInfo;
use crate::error::{Error, Result};
use crate::sys::event;
use images_format::pb::{self, fanotify_mark::Kind as MarkKind, file_entry::Kind};
use std::os::fd::{AsRawFd, OwnedFd};

const FAN_CLASS_BITS: u32 = 0x0c;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_IGNORE: u32 = 0x400;

/// Describes the fanotify group behind `dup` (fd `info` of `pid`).
pub fn dump(pid: i32, info: &FdInfo, dup: &OwnedFd) -> Result<Kind> {
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(info.fd), what: format!("fanotify group: {what}"), hint: Some(hint) };
    let pending = event::pending_bytes(dup.as_raw_fd()).map_err(|e| Error::sys(format!("pid {pid} fd {}: FIONREAD", info.fd), e))?;
    if pending > 0 {
        return Err(refuse(format!("{pending} bytes of events not read yet"), "events cannot be read without consuming them; dump once the task has read them"));
    }
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", dup.as_raw_fd())).map_err(|e| Error::proc(pid, format!("fdinfo/{}", info.fd), e))?;
    let mut group = None;
    let mut marks = Vec::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k));
        let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        let bad = || refuse(format!("unreadable fdinfo line {l:?}"), "not supported");
        if let (Some(flags), Some(event_flags)) = (hex("flags:"), hex("event-flags:")) {
            group = Some((flags as u32, event_flags as u32));
            continue;
        }
        let (Some(mflags), Some(mask), Some(ignored_mask)) = (hex("mflags:"), hex("mask:"), hex("ignored_mask:")) else { return Err(bad()) };
        let (kind, path) = if let Some(ino) = hex("ino:") {
            let (Some(sdev), Some(ty), Some(handle)) = (hex("sdev:"), field("fhandle-type:").and_then(|v| i32::from_str_radix(v, 16).ok()), field("f_handle:")) else { return Err(bad()) };
            let path = super::event::path_of_handle(sdev, ty, handle).map_err(|why| refuse(format!("mark on inode {ino:#x}: {why}"), "marks must be on files that have a path"))?;
            (MarkKind::Inode, path)
        } else if let Some(mnt_id) = hex("mnt_id:") {
            let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).map_err(|e| refuse(format!("reading mountinfo: {e}"), "not supported"))?;
            let m = mounts.into_iter().find(|m| m.mnt_id as u64 == mnt_id).ok_or_else(|| refuse(format!("mark on mount {mnt_id}, which crtool's mount namespace does not have"), "marks must be on mounts crtool sees"))?;
            (MarkKind::Mount, m.mount_point.to_string_lossy().into_owned())
        } else if let Some(sdev) = hex("sdev:") {
            let path = super::event::mount_of_dev(sdev).map_err(|why| refuse(format!("filesystem mark: {why}"), "marks must be on filesystems crtool sees"))?;
            (MarkKind::Filesystem, path.to_string_lossy().into_owned())
        } else {
            return Err(bad());
        };
        marks.push(pb::FanotifyMark { kind: kind as i32, path, mflags: mflags as u32, mask, ignored_mask });
    }
    let (flags, event_flags) = group.ok_or_else(|| refuse("fdinfo shows no group flags".into(), "not supported"))?;
    if flags & FAN_CLASS_BITS != 0 {
        return Err(refuse("it is of a permission class (FAN_CLASS_CONTENT or FAN_CLASS_PRE_CONTENT)".into(), "a process could be waiting for its answer; only FAN_CLASS_NOTIF groups are supported"));
    }
    Ok(Kind::Fanotify(pb::Fanotify { flags, event_flags, marks }))
}

/// Makes the group again with its marks.
pub fn open(f: &pb::Fanotify) -> std::io::Result<OwnedFd> {
    let fd = event::fanotify_init(f.flags, f.event_flags)?;
    for m in &f.marks {
        let on = match m.kind() {
            MarkKind::Inode => 0,
            MarkKind::Mount => FAN_MARK_MOUNT,
            MarkKind::Filesystem => FAN_MARK_FILESYSTEM,
        };
        let keep = m.mflags & !FAN_MARK_IGNORE;
        let err = |e: nix::errno::Errno| std::io::Error::other(format!("fanotify mark on {}: {e}", m.path));
        if m.mask != 0 {
            event::fanotify_mark(fd.as_raw_fd(), FAN_MARK_ADD | on | keep, m.mask, &m.path).map_err(err)?;
        }
        if m.ignored_mask != 0 {
            let how = if m.mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
            event::fanotify_mark(fd.as_raw_fd(), FAN_MARK_ADD | on | keep | how, m.ignored_mask, &m.path).map_err(err)?;
        }
    }
    Ok(fd)
}

pub fn describe(f: &pb::Fanotify) -> String {
    format!("fanotify ({} marks: {})", f.marks.len(), f.marks.iter().map(|m| format!("{:?} {} mask {:#x}", m.kind(), m.path, m.mask)).collect::<Vec<_>>().join(", "))
}
