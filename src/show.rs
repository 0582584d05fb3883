//! `crtool show DIR`: a human summary of an image directory.

use crate::error::Result;
use crate::restore::{TreeImages, load};
use std::fmt::Write;

fn tree_lines(imgs: &TreeImages, idx: usize, depth: usize, s: &mut String) {
    let p = &imgs.procs[idx];
    let t = &p.tree;
    let indent = "  ".repeat(depth + 1);
    match &p.task {
        None => {
            let _ = writeln!(s, "{indent}{} <zombie> (exit status {:#x}, pgid {}, sid {})", t.pid, t.exit_status, t.pgid, t.sid);
        }
        Some(task) => {
            let c = &task.core;
            let pages: u64 = task.pagemap.iter().map(|e| e.nr_pages as u64).sum();
            let in_parent: u64 = task.pagemap.iter().filter(|e| e.in_parent).map(|e| e.nr_pages as u64).sum();
            let lazy: u64 = task.pagemap.iter().filter(|e| e.lazy).map(|e| e.nr_pages as u64).sum();
            let in_parent = match (in_parent, lazy) {
                (0, 0) => String::new(),
                (p, 0) => format!(" ({} MiB of them in the parent directory)", (p * 4096) >> 20),
                (0, l) => format!(" ({} MiB of them with the dump's page server)", (l * 4096) >> 20),
                (p, l) => format!(" ({} MiB of them in the parent directory, {} MiB with the dump's page server)", (p * 4096) >> 20, (l * 4096) >> 20),
            };
            let threads = if t.threads.len() > 1 { format!(", threads {:?}", t.threads) } else { String::new() };
            let _ = writeln!(s, "{indent}{} {:?} (pgid {}, sid {}{threads}; {} VMAs, {} MiB of pages{in_parent}, {} fds)",
                t.pid, c.comm, t.pgid, t.sid, task.mm.vmas.len(), (pages * 4096) >> 20, task.fds.len());
        }
    }
    for c in imgs.children(t.pid) {
        tree_lines(imgs, c, depth + 1, s);
    }
}

pub fn show(dir: &std::path::Path) -> Result<String> {
    let imgs = load(dir)?;
    let inv = &imgs.inv;
    let mut s = String::new();
    let _ = writeln!(s, "image format {} ({} pages){}", inv.format_version, if inv.page_compression == 1 { "zstd" } else { "raw" },
        if inv.new_pid_ns { ", root is PID 1 of its own PID namespace" } else { "" });
    let _ = writeln!(s, "process tree:");
    tree_lines(&imgs, 0, 0, &mut s);
    for p in &imgs.procs {
        let Some(task) = &p.task else { continue };
        let c = &task.core;
        let _ = writeln!(s, "\npid {} {:?}: exe {}", c.pid, c.comm, task.mm.exe);
        if let Some(cr) = &c.creds {
            let _ = writeln!(s, "  uid {} gid {}, cwd {}, umask {:03o}", cr.euid, cr.egid, c.cwd, c.umask);
        }
        for v in &task.mm.vmas {
            let prot = format!("{}{}{}", if v.prot & 1 != 0 { 'r' } else { '-' }, if v.prot & 2 != 0 { 'w' } else { '-' }, if v.prot & 4 != 0 { 'x' } else { '-' });
            let _ = writeln!(s, "  {:#014x}-{:#014x} {prot} {:?} {}", v.start, v.end, v.kind(), v.path);
        }
        let _ = writeln!(s, "  files:");
        for fd in &task.fds {
            let f = imgs.files.iter().find(|f| f.id == fd.file_id).and_then(|f| f.kind.as_ref());
            let desc = f.map(crate::files::describe).unwrap_or_else(|| "?".into());
            let _ = writeln!(s, "    fd {:>3}{} -> file {} {desc}", fd.fd, if fd.cloexec { " (cloexec)" } else { "" }, fd.file_id);
        }
    }
    if !imgs.sockets.is_empty() {
        let _ = writeln!(s, "\nunix sockets:");
        for sk in &imgs.sockets {
            let queued: Vec<&images_format::pb::SkPacket> = imgs.packets.iter().filter(|p| p.ino == sk.ino).collect();
            let bytes: usize = queued.iter().map(|p| p.data.len()).sum();
            let files: usize = queued.iter().map(|p| p.fds.len()).sum();
            let q = if queued.is_empty() { String::new() } else { format!("; {} queued message(s), {bytes} bytes, {files} file(s) in flight", queued.len()) };
            let _ = writeln!(s, "  {}{q}", crate::files::unix::describe(sk));
        }
    }
    if !imgs.inet.is_empty() {
        let _ = writeln!(s, "\ninet sockets:");
        for sk in &imgs.inet {
            let _ = writeln!(s, "  {}", crate::files::inet::describe(sk));
        }
    }
    if let Some(ns) = &imgs.netns {
        let _ = writeln!(s, "\nnetwork namespace of its own:");
        for l in &ns.links {
            let addrs: Vec<String> = ns.addrs.iter().filter(|a| a.link == l.name).map(|a| format!("{}/{}", crate::net::addr_text(&a.addr), a.prefix)).collect();
            let _ = writeln!(s, "  {} ({}, mtu {}, {}){}", l.name, l.kind, l.mtu, if l.up { "up" } else { "down" }, if addrs.is_empty() { String::new() } else { format!(" {}", addrs.join(" ")) });
        }
        let _ = writeln!(s, "  {} routes, {} sysctls differing from a new namespace's{}", ns.routes.len(), ns.sysctls.len(), if ns.nft_ruleset.is_empty() { "" } else { ", an nftables ruleset" });
    }
    if !imgs.packet.is_empty() {
        let _ = writeln!(s, "\npacket sockets:");
        for n in &imgs.packet {
            let _ = writeln!(s, "  {}", crate::files::packet::describe(n));
        }
    }
    if !imgs.netlink.is_empty() {
        let _ = writeln!(s, "\nnetlink sockets:");
        for n in &imgs.netlink {
            let _ = writeln!(s, "  {}", crate::files::netlink::describe(n));
        }
    }
    if !imgs.ptys.is_empty() {
        let _ = writeln!(s, "\npseudo-terminals:");
        for p in &imgs.ptys {
            let _ = writeln!(s, "  {}", crate::files::tty::describe_pair(p));
        }
    }
    s += &crate::ipc::describe(dir)?;
    Ok(s)
}
