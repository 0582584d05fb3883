//! `crtool show DIR`: a human summary of an image directory.

use crate::error::Result;
use crate::restore::load;
use std::fmt::Write;

pub fn show(dir: &std::path::Path) -> Result<String> {
    let (inv, t) = load(dir)?;
    let mut s = String::new();
    let c = &t.core;
    let pages: u64 = t.pagemap.iter().map(|e| e.nr_pages as u64).sum();
    let stored: u64 = t.pagemap.iter().map(|e| e.stored_len).sum();
    let _ = writeln!(s, "image format {} ({} pages)", inv.format_version, if inv.page_compression == 1 { "zstd" } else { "raw" });
    let _ = writeln!(s, "process tree:");
    let _ = writeln!(s, "  {} {:?} (ppid {}, pgid {}, sid {}, {} thread{})", t.tree.pid, c.comm, t.tree.ppid, t.tree.pgid, t.tree.sid,
        c.threads.len(), if c.threads.len() == 1 { "" } else { "s" });
    if let Some(cr) = &c.creds {
        let _ = writeln!(s, "  uid {} gid {}, cwd {}, umask {:03o}", cr.euid, cr.egid, c.cwd, c.umask);
    }
    let _ = writeln!(s, "  exe {}", t.mm.exe);
    let _ = writeln!(s, "memory: {} VMAs, {} pages dumped ({} MiB, {} MiB stored)", t.mm.vmas.len(), pages, pages * 4096 >> 20, stored >> 20);
    for v in &t.mm.vmas {
        let prot = format!("{}{}{}", if v.prot & 1 != 0 { 'r' } else { '-' }, if v.prot & 2 != 0 { 'w' } else { '-' }, if v.prot & 4 != 0 { 'x' } else { '-' });
        let _ = writeln!(s, "  {:#014x}-{:#014x} {prot} {:?} {}", v.start, v.end, v.kind(), v.path);
    }
    let _ = writeln!(s, "files:");
    for fd in &t.fds {
        let f = t.files.iter().find(|f| f.id == fd.file_id).and_then(|f| f.kind.as_ref());
        let desc = f.map(crate::files::describe).unwrap_or_else(|| "?".into());
        let _ = writeln!(s, "  fd {:>3}{} {desc}", fd.fd, if fd.cloexec { " (cloexec)" } else { "" });
    }
    Ok(s)
}
