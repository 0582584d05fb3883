//! Regular files and directories: path, open flags and offset.

use super::{FdInfo, FileKind};
use crate::error::Result;
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::{FromRawFd, OwnedFd};

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
        let path = std::ffi::CString::new(self.0.path.as_bytes()).map_err(std::io::Error::other)?;
        let flags = (self.0.flags as i32 & !OPEN_ONLY) | libc::O_CLOEXEC;
        // SAFETY: open(2) with a valid C string; a non-negative result is a new fd.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if self.0.pos != 0 {
            use std::os::fd::AsRawFd;
            // SAFETY: lseek on the fd we own.
            if unsafe { libc::lseek(fd.as_raw_fd(), self.0.pos as i64, libc::SEEK_SET) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(fd)
    }
}
