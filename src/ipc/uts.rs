//! The UTS namespace of the tree: host name and NIS domain name.

use crate::error::{Error, Result};
use images_format::pb;
use std::os::unix::ffi::OsStrExt;

/// The names of the calling thread's UTS namespace.
pub fn read() -> Result<pb::UtsNamespace> {
    let u = nix::sys::utsname::uname().map_err(|e| Error::sys("uname", e))?;
    Ok(pb::UtsNamespace { hostname: u.nodename().as_bytes().to_vec(), domainname: u.domainname().as_bytes().to_vec() })
}

/// Sets the names in the calling process's UTS namespace.
pub fn set(u: &pb::UtsNamespace) -> nix::Result<()> {
    crate::sys::ipc::set_hostname(&u.hostname)?;
    crate::sys::ipc::set_domainname(&u.domainname)
}
