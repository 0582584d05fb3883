//! Regular files and directories: path, open flags and offset.

use super::{FdInfo, FileKind};
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;

pub struct RegFileKind(pub pb::RegFile);

/// statfs f_type of nsfs (namespace files, include/uapi/linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// statfs f_type of the mqueue filesystem (POSIX message queues).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Flags that only matter when the file is first opened.
const OPEN_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC;

impl FileKind for RegFileKind {
    fn dump(pid: i32, info: &FdInfo, fd: &OwnedFd, st: &libc::stat) -> Result<Kind> {
        let refuse = |what: String, hint: &'static str| Err(Error::Unsupported { pid, fd: Some(info.fd), what, hint: Some(hint) });
        // (Files of /proc are `procfile`'s.) Namespace files name namespaces of
        // this moment: reopened by path they would be other objects at restore.
        match crate::sys::fd::fs_magic(fd) {
            Ok(m) if m == NSFS_MAGIC => return refuse(format!("namespace file {}", info.link), "namespace files are not supported yet"),
            Ok(m) if m == MQUEUE_MAGIC => return refuse(format!("POSIX message queue {}", info.link), "message queues are not supported yet"),
            _ => {}
        }
        if !info.link.starts_with('/') {
            return refuse(format!("file {} has no path to reopen it by", info.link), "not supported yet");
        }
        Ok(Kind::Reg(pb::RegFile {
            path: info.link.clone(),
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            size: st.st_size as u64,
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            ghost: false,
        }))
    }

    fn open(&self) -> std::io::Result<OwnedFd> {
        crate::sys::fd::open_at_pos(&self.0.path, self.0.flags as i32 & !OPEN_ONLY, self.0.pos)
    }
}
