//! Small /proc lookups crtool makes in several places: fields of /proc/ID/status
//! (ID may be any thread id) and the address ranges of /proc/ID/maps.

/// The numbers on the `key:` line of `/proc/id/status` (e.g. "NSpid", "TracerPid").
pub fn ids(id: i32, key: &str) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    Some(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

/// The task's id in its own innermost PID namespace (last NSpid value).
pub fn innermost_pid(id: i32) -> Option<i32> {
    ids(id, "NSpid")?.last().copied()
}

/// The process a pidfd of ours refers to, as a PID of our namespace (the `Pid:`
/// line of its fdinfo; -1 once it has exited, then None).
pub fn pidfd_pid(fd: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Pid:")?.trim().parse().ok()).filter(|&p: &i32| p > 0)
}

/// Who ptraces the task, if anyone.
pub fn tracer(id: i32) -> Option<i32> {
    ids(id, "TracerPid")?.first().copied().filter(|&t| t != 0)
}

/// Whether `id` is the main thread of its process.
pub fn is_main_thread(id: i32) -> bool {
    ids(id, "Tgid").and_then(|v| v.first().copied()) == Some(id)
}

/// Every mapping of `/proc/<who>/maps` (`who` = "self" or an id): (start, end, name),
/// where name is the path or "[heap]", "[vdso]", ... (empty for anonymous memory).
pub fn maps(who: &str) -> std::io::Result<Vec<(u64, u64, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{who}/maps"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (s, e) = f.next()?.split_once('-')?;
            let name = f.nth(4).unwrap_or("").to_string();
            Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?, name))
        })
        .collect())
}

/// Start and end of the vdso of `who`.
pub fn vdso(who: &str) -> Option<(u64, u64)> {
    maps(who).ok()?.into_iter().find(|(_, _, n)| n == "[vdso]").map(|(s, e, _)| (s, e))
}

/// A path the kernel reports for an open or mapped file (the target of a
/// /proc/PID/fd/N, map_files/A-B, exe or cwd link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLink {
    /// The path, as bytes from readlink(2) (not the escaped text of /proc/PID/maps).
    pub path: String,
    /// The name was unlinked: the kernel appended " (deleted)" to `path` (a file
    /// whose real name ends in " (deleted)" is not deleted).
    pub deleted: bool,
}

/// Reads the proc link `link` (e.g. "/proc/42/fd/3"). Fails with `InvalidData` for
/// a path that is not UTF-8 (images store paths as text).
pub fn file_link(link: &str) -> std::io::Result<FileLink> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::read_link(link)?;
    let path = target.into_os_string().into_string().map_err(|raw| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("path {raw:?} is not UTF-8"))
    })?;
    let Some(stripped) = path.strip_suffix(" (deleted)") else { return Ok(FileLink { path, deleted: false }) };
    // The same file under the literal name: not deleted.
    let open = std::fs::metadata(link)?;
    let literal = std::fs::symlink_metadata(&path).ok().is_some_and(|m| m.dev() == open.dev() && m.ino() == open.ino());
    Ok(if literal { FileLink { path, deleted: false } } else { FileLink { path: stripped.to_string(), deleted: true } })
}

/// Whether process group `pgid` is orphaned as the kernel decides it for SIGTSTP,
/// SIGTTIN and SIGTTOU (kernel/exit.c `will_become_orphaned_pgrp`): no member has
/// a living parent, other than init, in another group of the same session. An
/// empty group counts as orphaned. Ids are those of crtool's PID namespace.
pub fn pgrp_orphaned(pgid: i32) -> bool {
    let Ok(all) = procfs::process::all_processes() else { return true };
    let stats: Vec<procfs::process::Stat> = all.flatten().filter_map(|p| p.stat().ok()).collect();
    let by_pid: std::collections::HashMap<i32, &procfs::process::Stat> = stats.iter().map(|s| (s.pid, s)).collect();
    !stats.iter().filter(|s| s.pgrp == pgid && s.state != 'Z').any(|s| {
        by_pid.get(&s.ppid).is_some_and(|parent| parent.pid != 1 && parent.state != 'Z' && parent.pgrp != pgid && parent.session == s.session)
    })
}

/// Whether signal `sig` of process `pid` has its default action (neither caught nor
/// ignored, from `SigCgt`/`SigIgn` of /proc/PID/status).
pub fn signal_default(pid: i32, sig: i32) -> bool {
    let Ok(st) = procfs::process::Process::new(pid).and_then(|p| p.status()) else { return false };
    let bit = 1u64 << (sig - 1);
    st.sigcgt & bit == 0 && st.sigign & bit == 0
}
