//! The fd table. Each open file kind lives in its own module with its dump and
//! restore side by side, behind the `FileKind` trait; this module only walks fds.

mod chr;
mod reg;

use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use nix::sys::stat::{SFlag, fstat};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// One open fd of a task as /proc shows it.
#[derive(Debug, Clone)]
pub struct FdInfo {
    pub fd: i32,
    /// Target of /proc/PID/fd/N ("/path", "socket:[123]", "pipe:[9]", ...).
    pub link: String,
    pub pos: u64,
    /// open(2) flags from fdinfo, including O_CLOEXEC.
    pub flags: u32,
}

/// An open-file kind crtool can save and bring back.
pub trait FileKind {
    /// Describes the open file behind `fd` (a duplicate received from the task).
    fn dump(pid: i32, info: &FdInfo, fd: &OwnedFd, st: &libc::stat) -> Result<Kind>
    where
        Self: Sized;
    /// Reopens it in the restoring task, positioned as it was.
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
        let link = std::fs::read_link(ent.path()).map_err(|e| Error::proc(pid, format!("fd/{fd}"), e))?;
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|e| Error::proc(pid, format!("fdinfo/{fd}"), e))?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let pos = field("pos:").and_then(|v| v.parse().ok()).unwrap_or(0);
        let flags = field("flags:").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0);
        out.push(FdInfo { fd, link: link.to_string_lossy().into_owned(), pos, flags });
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// Rejects, before any parasite runs, fds whose kind this version cannot restore.
pub fn precheck(pid: i32, fds: &[FdInfo]) -> Result<()> {
    for f in fds {
        let what = if f.link.starts_with("socket:") {
            Some(("socket", Some("sockets are not supported yet")))
        } else if f.link.starts_with("pipe:") {
            Some(("pipe", Some("pipes are not supported yet")))
        } else if let Some(k) = f.link.strip_prefix("anon_inode:") {
            let _ = k;
            Some(("anon inode", Some("epoll/eventfd/signalfd/timerfd and similar are not supported yet")))
        } else if f.link.ends_with(" (deleted)") {
            Some(("deleted file", Some("open deleted files are not supported yet")))
        } else if f.link.starts_with("/memfd:") {
            Some(("memfd", Some("memfd files are not supported yet")))
        } else {
            None
        };
        if let Some((kind, hint)) = what {
            return Err(Error::Unsupported { pid, fd: Some(f.fd), what: format!("{kind} {}", f.link), hint });
        }
    }
    Ok(())
}

/// Describes every fd, given duplicates of them received from the task.
pub fn dump(pid: i32, fds: &[FdInfo], dups: &[OwnedFd]) -> Result<(Vec<pb::FdEntry>, Vec<pb::FileEntry>)> {
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for (i, (info, dup)) in fds.iter().zip(dups).enumerate() {
        let st = fstat(dup).map_err(|e| Error::sys(format!("pid {pid} fd {}: fstat", info.fd), e))?;
        let ty = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let kind = match ty {
            SFlag::S_IFREG | SFlag::S_IFDIR => reg::RegFileKind::dump(pid, info, dup, &st)?,
            SFlag::S_IFCHR => chr::ChrDevKind::dump(pid, info, dup, &st)?,
            _ => {
                return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("file {} of type {:o}", info.link, st.st_mode & libc::S_IFMT), hint: Some("not supported yet") });
            }
        };
        let id = i as u32 + 1;
        files.push(pb::FileEntry { id, kind: Some(kind) });
        entries.push(pb::FdEntry { fd: info.fd, file_id: id, cloexec: info.flags & libc::O_CLOEXEC as u32 != 0 });
    }
    Ok((entries, files))
}

fn reopen(kind: &Kind) -> std::io::Result<OwnedFd> {
    match kind {
        Kind::Reg(r) => reg::RegFileKind(r.clone()).open(),
        Kind::Chr(c) => chr::ChrDevKind(c.clone()).open(),
    }
}

/// Opens every file and installs it at its fd number (run in the restoring task after
/// it closed crtool's own fds).
pub fn restore(pid: i32, fds: &[pb::FdEntry], files: &[pb::FileEntry]) -> Result<()> {
    use std::collections::BTreeMap;
    let by_id: BTreeMap<u32, &pb::FileEntry> = files.iter().map(|f| (f.id, f)).collect();
    let mut opened: BTreeMap<u32, RawFd> = BTreeMap::new();
    // Originals are parked above every target number so no dup3 can clobber them.
    let park = fds.iter().map(|e| e.fd).max().unwrap_or(0) + 1;
    for e in fds {
        let file = by_id.get(&e.file_id).and_then(|f| f.kind.as_ref()).ok_or_else(|| Error::BadImage {
            file: format!("fdinfo-{pid}.img"),
            msg: format!("fd {} refers to missing file id {}", e.fd, e.file_id),
        })?;
        let src = match opened.get(&e.file_id) {
            Some(&fd) => fd,
            None => {
                let fd = reopen(file).map_err(|err| Error::Restore { pid, msg: format!("fd {}: cannot reopen {}: {err}", e.fd, describe(file)) })?;
                // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the parked copy is closed below.
                let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, park) };
                if raw < 0 {
                    return Err(Error::Restore { pid, msg: format!("fd {}: F_DUPFD: {}", e.fd, std::io::Error::last_os_error()) });
                }
                drop(fd);
                opened.insert(e.file_id, raw);
                raw
            }
        };
        let flags = if e.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto the target number; crtool's own fds were closed before and
        // parked originals sit above every target.
        let r = unsafe { libc::dup3(src, e.fd, flags) };
        if r < 0 {
            return Err(Error::Restore { pid, msg: format!("fd {}: dup3: {}", e.fd, std::io::Error::last_os_error()) });
        }
    }
    for &raw in opened.values() {
        // SAFETY: closing the parked originals opened above.
        unsafe { libc::close(raw) };
    }
    Ok(())
}

pub fn describe(kind: &Kind) -> String {
    match kind {
        Kind::Reg(r) => r.path.clone(),
        Kind::Chr(c) => format!("{} ({}:{})", c.path, c.major, c.minor),
    }
}
