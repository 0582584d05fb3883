//! Character devices that carry no state of their own: /dev/null, zero, full, random,
//! urandom. Anything else (ttys, ...) is refused at dump time.

use super::{FdInfo, FileKind};
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;

pub struct ChrDevKind(pub pb::ChrDev);

/// (major, minor) of the memory devices crtool can reopen by path.
const STATELESS: &[(u32, u32, &str)] =
    &[(1, 3, "/dev/null"), (1, 5, "/dev/zero"), (1, 7, "/dev/full"), (1, 8, "/dev/random"), (1, 9, "/dev/urandom")];

impl FileKind for ChrDevKind {
    fn dump(pid: i32, info: &FdInfo, _fd: &OwnedFd, st: &libc::stat) -> Result<Kind> {
        let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        if !STATELESS.iter().any(|&(ma, mi, _)| ma == major && mi == minor) {
            let hint = if major == 136 || major == 4 || major == 5 { "terminals are not supported yet" } else { "only memory devices are supported" };
            return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("character device {} ({major}:{minor})", info.link), hint: Some(hint) });
        }
        Ok(Kind::Chr(pb::ChrDev { path: info.link.clone(), flags: info.flags & !(libc::O_CLOEXEC as u32), major, minor, pos: info.pos }))
    }

    fn open(&self) -> std::io::Result<OwnedFd> {
        let path = STATELESS
            .iter()
            .find(|&&(ma, mi, _)| ma == self.0.major && mi == self.0.minor)
            .map(|&(_, _, p)| p)
            .unwrap_or(self.0.path.as_str());
        let flags = self.0.flags as i32 & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
        crate::sys::fd::open_at_pos(path, flags, 0)
    }
}
