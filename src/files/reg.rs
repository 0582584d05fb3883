//! Regular files and directories: path, open flags and offset.

use super::{FdInfo, FileKind};
use crate::error::Result;
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;

pub struct RegFileKind(pub pb::RegFile);

/// Flags that only matter when the file is first opened.
const OPEN_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC;

impl FileKind for RegFileKind {
    fn dump(_pid: i32, info: &FdInfo, _fd: &OwnedFd, st: &libc::stat) -> Result<Kind> {
        Ok(Kind::Reg(pb::RegFile {
            path: info.link.clone(),
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            size: st.st_size as u64,
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
        }))
    }

    fn open(&self) -> std::io::Result<OwnedFd> {
        crate::sys::fd::open_at_pos(&self.0.path, self.0.flags as i32 & !OPEN_ONLY, self.0.pos)
    }
}
