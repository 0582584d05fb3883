//! The task's VMAs: read from /proc/PID/smaps, classified, and checked for what this
//! version can restore.

use crate::error::{Error, Result};
use images_format::pb::{self, VmaKind};
use procfs::process::MMapPath;

/// Reads and classifies every VMA of `pid`, failing on kinds crtool cannot restore.
/// `tracked`: write protection by a userfaultfd ("uw") is crtool's own memory
/// tracking (see `mem::track`), not the process's state.
pub fn collect(pid: i32, tracked: bool) -> Result<Vec<pb::Vma>> {
    // Read once (the kernel walks every page table for it: it costs frozen
    // time), parsed by procfs; the VmFlags lines as the kernel prints them too
    // (procfs knows only the older flags, and an unknown one must not pass
    // unseen), one per VMA, in order.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| Error::proc(pid, "smaps", e))?;
    let maps = <procfs::process::MemoryMaps as procfs::FromBufRead>::from_buf_read(smaps.as_bytes()).map_err(|e| Error::proc(pid, "smaps", std::io::Error::other(e)))?;
    let flag_lines: Vec<&str> = smaps.lines().filter_map(|l| l.strip_prefix("VmFlags:")).collect();
    if flag_lines.len() != maps.len() {
        return Err(Error::proc(pid, "smaps", std::io::Error::other("VmFlags lines do not match the mappings")));
    }
    let mut out = Vec::new();
    for (m, flag_line) in maps.into_iter().zip(flag_lines) {
        let (start, end) = m.address;
        let p = m.perms;
        use procfs::process::MMPermissions as P;
        let mut prot = 0u32;
        if p.contains(P::READ) { prot |= libc::PROT_READ as u32; }
        if p.contains(P::WRITE) { prot |= libc::PROT_WRITE as u32; }
        if p.contains(P::EXECUTE) { prot |= libc::PROT_EXEC as u32; }
        let shared = p.contains(P::SHARED);
        let flags = m.extension.vm_flags;
        let growsdown = flags.contains(procfs::process::VmFlags::GD);
        let unsupported = |what: String| Error::Unsupported { pid, fd: None, what, hint: None };
        let special = matches!(m.pathname, MMapPath::Vdso | MMapPath::Vvar | MMapPath::Vsyscall)
            || matches!(&m.pathname, MMapPath::Other(n) if n == "vvar_vclock" || n == "[vvar_vclock]");
        // The kernel's own mappings come back from the restoring kernel as they are.
        let kept = if special { Ok(Vec::new()) } else { kept_flags(flag_line, tracked) };
        let aio = matches!(&m.pathname, MMapPath::Path(p) if p.to_string_lossy().starts_with("/[aio]"));
        let kept = kept.map_err(|f| match aio {
            true => Error::Unsupported { pid, fd: None, what: format!("mapping at {start:#x} is the ring of an AIO context (io_setup(2))"), hint: Some("Linux AIO contexts are not supported (requests in flight cannot be seen); io_destroy it before the dump") },
            false => unsupported(format!("mapping at {start:#x} has VmFlag {f:?} ({})", flag_meaning(f))),
        })?;
        let mut v = pb::Vma { start, end, prot, pgoff: m.offset, growsdown, flags: kept, ..Default::default() };
        let kind = match &m.pathname {
            MMapPath::Vdso => VmaKind::VmaVdso,
            MMapPath::Vvar => VmaKind::VmaVvar,
            MMapPath::Other(n) if n == "vvar_vclock" || n == "[vvar_vclock]" => VmaKind::VmaVvarVclock,
            MMapPath::Vsyscall => VmaKind::VmaVsyscall,
            MMapPath::Vsys(key) => {
                (v.shmid, v.path, v.open_flags) = (m.inode, format!("/SYSV{key:08x}"), crate::ipc::shm::attach_flags(flag_line));
                VmaKind::VmaSysvShm
            }
            MMapPath::Heap | MMapPath::Stack | MMapPath::TStack(_) | MMapPath::Anonymous if !shared || m.inode == 0 => {
                if m.inode != 0 {
                    return Err(unsupported(format!("mapping at {start:#x} has an inode but no path")));
                }
                if shared { VmaKind::VmaAnonShared } else { VmaKind::VmaAnonPrivate }
            }
            // MAP_SHARED|MAP_ANONYMOUS memory is a shmem file named "/dev/zero (deleted)".
            MMapPath::Path(path) if shared && path.as_os_str() == "/dev/zero (deleted)" => VmaKind::VmaAnonShared,
            MMapPath::Path(_) => {
                // The real path from map_files (the text in maps is escaped, and says
                // " (deleted)" for a file literally named so, too).
                let link = crate::procinfo::file_link(&format!("/proc/{pid}/map_files/{start:x}-{end:x}")).map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => unsupported(format!("mapping at {start:#x}: {e}")),
                    _ => Error::proc(pid, format!("map_files/{start:x}-{end:x}"), e),
                })?;
                let s = link.path;
                if s.starts_with("/memfd:") {
                    // The memfd's inode; its data is dumped once (files::memfd).
                    v.path = s;
                    v.shmid = m.inode;
                    // The mapped file's open mode (the map_files link's permissions):
                    // without FMODE_WRITE a shared mapping is not VM_SHARED/VM_MAYWRITE.
                    use std::os::unix::fs::PermissionsExt;
                    let link = std::fs::symlink_metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).map(|m| m.permissions().mode()).unwrap_or(0);
                    if link & 0o200 != 0 {
                        v.open_flags = libc::O_RDWR as u32;
                    }
                    if shared { VmaKind::VmaMemfdShared } else { VmaKind::VmaMemfdPrivate }
                } else {
                if s.starts_with("/dev/zero") || s.starts_with("/SYSV") {
                    return Err(unsupported(format!("mapping at {start:#x} of {s} is not supported yet")));
                }
                // A deleted file: a ghost file (files::ghost), made again at restore.
                v.ghost = link.deleted;
                v.path = s;
                v.dev = ((m.dev.0 as u64) << 8) | m.dev.1 as u64;
                v.ino = m.inode;
                if shared && prot & libc::PROT_WRITE as u32 != 0 {
                    v.open_flags = libc::O_RDWR as u32;
                }
                if shared { VmaKind::VmaFileShared } else { VmaKind::VmaFilePrivate }
                }
            }
            other => {
                // Named anonymous mappings ("[anon:...]") are anonymous memory too.
                let name = format!("{other:?}");
                if m.inode == 0 && name.contains("anon") {
                    if shared { VmaKind::VmaAnonShared } else { VmaKind::VmaAnonPrivate }
                } else {
                    return Err(unsupported(format!("mapping at {start:#x} ({name}) is not supported yet")));
                }
            }
        };
        if matches!(m.pathname, MMapPath::Heap) { v.path = "[heap]".into(); }
        if matches!(m.pathname, MMapPath::Stack) { v.path = "[stack]".into(); }
        v.set_kind(kind);
        out.push(v);
    }
    Ok(out)
}

/// mlockall(2) flags for future mappings, seen on a mapping the task has just made
/// (the parasite's at `addr`): the kernel locks new mappings ("lo", with "lf" for
/// MCL_ONFAULT) only under MCL_FUTURE. There is no other interface to read it.
pub fn future_lock(pid: i32, addr: u64) -> Result<u32> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| Error::proc(pid, "smaps", e))?;
    let mut inside = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ') && let Some((s, _)) = range.split_once('-') && let Ok(s) = u64::from_str_radix(s, 16) && !l.starts_with(char::is_uppercase) {
            inside = s == addr;
        }
        if let (true, Some(flags)) = (inside, l.strip_prefix("VmFlags:")) {
            let has = |f: &str| flags.split_whitespace().any(|x| x == f);
            return Ok(match (has("lo"), has("lf")) {
                (false, _) => 0,
                (true, false) => libc::MCL_FUTURE as u32,
                (true, true) => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32,
            });
        }
    }
    Ok(0)
}

/// The task's locked memory (VmLck of /proc/PID/status), KiB: cheap, unlike
/// smaps (which walks every page table). A mapping made under MCL_FUTURE adds
/// to it, which tells whether `future_lock` needs to look.
pub fn locked_kib(pid: i32) -> Result<u64> {
    let status = procfs::process::Process::new(pid).and_then(|p| p.status()).map_err(|e| Error::proc(pid, "status", std::io::Error::other(e)))?;
    Ok(status.vmlck.unwrap_or(0))
}

/// Records what each mapped file is (see `files::identity`), from the mapped file
/// itself (/proc/PID/map_files), not from whatever its path names now.
pub fn identify(pid: i32, vmas: &mut [pb::Vma], cache: &mut crate::files::identity::Cache) -> Result<()> {
    for v in vmas.iter_mut().filter(|v| matches!(v.kind(), VmaKind::VmaFilePrivate | VmaKind::VmaFileShared) && !v.ghost) {
        let what = format!("map_files/{:x}-{:x}", v.start, v.end);
        let f = std::fs::File::open(format!("/proc/{pid}/{what}")).map_err(|e| Error::proc(pid, what.clone(), e))?;
        let private = v.kind() == VmaKind::VmaFilePrivate;
        v.identity = Some(cache.identify(&f, v.pgoff, v.end - v.start, private).map_err(|e| Error::proc(pid, what, e))?);
    }
    Ok(())
}

/// VmFlags (proc_pid_smaps(5)) that restore reproduces, in the order they are
/// stored: accounting, advice, locking.
const KEPT: [&str; 12] = ["ac", "nr", "dc", "dd", "wf", "hg", "nh", "mg", "sr", "rr", "lo", "lf"];
/// VmFlags that need nothing: protection and sharing (restored from the mapping
/// itself), growsdown, denywrite, soft-dirty, the guard-page hint, mergeable-ness
/// bookkeeping.
const IMPLIED: [&str; 11] = ["rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "dw", "sd"];
const GUARD_HINT: &str = "gu";

fn flag_meaning(f: &str) -> &'static str {
    match f {
        "dp" => "MAP_DROPPABLE: not supported yet",
        "sl" => "sealed with mseal(2): not supported yet",
        "uw" => "registered with userfaultfd for write protection: not supported, unless it is crtool's memory tracking of an earlier pre-dump, which a dump with --prev-images-dir naming that pre-dump continues",
        "um" | "ui" => "registered with userfaultfd: not supported",
        "ss" => "shadow stack: not supported yet",
        "ht" => "hugetlbfs pages: not supported yet",
        "io" | "pf" | "mm" | "ar" | "de" => "a device or special mapping: not supported",
        "sf" => "synchronous page faults (DAX): not supported",
        _ => "unknown to this crtool: refused rather than dropped",
    }
}

/// The flags of a VmFlags line that restore reproduces; `Err(flag)` for one it
/// cannot.
fn kept_flags(line: &str, tracked: bool) -> std::result::Result<Vec<String>, &str> {
    let mut out = Vec::new();
    for f in line.split_whitespace() {
        if f == "uw" && tracked {
            continue;
        }
        if KEPT.contains(&f) {
            out.push(f.to_string());
        } else if !IMPLIED.contains(&f) && f != GUARD_HINT {
            return Err(f);
        }
    }
    out.sort_by_key(|f| KEPT.iter().position(|k| k == f));
    Ok(out)
}

pub fn has_flag(v: &pb::Vma, name: &str) -> bool {
    v.flags.iter().any(|f| f == name)
}

/// madvise() advice reproducing the VMA's advice flags.
pub fn advice(v: &pb::Vma) -> Vec<i32> {
    [
        ("dc", libc::MADV_DONTFORK),
        ("dd", libc::MADV_DONTDUMP),
        ("wf", libc::MADV_WIPEONFORK),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("mg", libc::MADV_MERGEABLE),
        ("sr", libc::MADV_SEQUENTIAL),
        ("rr", libc::MADV_RANDOM),
    ]
        .into_iter()
        .filter(|(n, _)| has_flag(v, n))
        .map(|(_, a)| a)
        .collect()
}

/// Whether the restorer recreates this VMA from the image (vs. kernel-provided ones).
pub fn is_restorable(v: &pb::Vma) -> bool {
    !matches!(v.kind(), VmaKind::VmaVdso | VmaKind::VmaVvar | VmaKind::VmaVvarVclock | VmaKind::VmaVsyscall)
}

/// Whether this task's page image holds pages of this VMA (shared anonymous memory is
/// stored once, with its first owner; file-backed shared memory lives in its file).
pub fn has_private_pages(v: &pb::Vma) -> bool {
    match v.kind() {
        VmaKind::VmaAnonPrivate | VmaKind::VmaFilePrivate | VmaKind::VmaMemfdPrivate => true,
        VmaKind::VmaAnonShared => v.shmem_owner,
        _ => false,
    }
}

/// Identifies shared anonymous memory by its shmem inode, and makes the first task
/// seen mapping each object its owner.
pub fn mark_shmem(pid: i32, vmas: &mut [pb::Vma], seen: &mut std::collections::BTreeSet<u64>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for v in vmas.iter_mut().filter(|v| v.kind() == VmaKind::VmaAnonShared) {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        let md = std::fs::metadata(&path).map_err(|e| Error::proc(pid, format!("map_files/{:x}-{:x}", v.start, v.end), e))?;
        v.shmid = md.ino();
        v.shmem_owner = seen.insert(md.ino());
    }
    Ok(())
}

/// Whether restore can map `v` again as the image describes it: its file opens with
/// the mode the mapping needs and (per `how`) is the file that was mapped. `Err`
/// says why not.
pub fn check_mappable(v: &pb::Vma, how: crate::files::identity::Validation) -> std::result::Result<(), String> {
    use crate::files::identity::{self, Validation};
    if !matches!(v.kind(), VmaKind::VmaFilePrivate | VmaKind::VmaFileShared) || v.ghost {
        return Ok(());
    }
    let write = v.open_flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32;
    let f = std::fs::OpenOptions::new().read(true).write(write).open(&v.path).map_err(|e| format!("cannot open it: {e}"))?;
    let (Some(want), len) = (v.identity.as_ref(), v.end - v.start) else { return Ok(()) };
    if v.kind() == VmaKind::VmaFileShared {
        // A shared mapping shows the file as it is now; it only has to cover what was
        // mapped (and existed).
        let need = want.size.min(v.pgoff + len);
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        return if how == Validation::None || size >= need { Ok(()) } else { Err(format!("it shrank to {size} bytes; {need} were mapped")) };
    }
    identity::compare(&f, want, v.pgoff, len, how)
}

/// Checks that VMAs read from an image are sane before anything trusts them: page
/// aligned, non-empty, sorted, non-overlapping and inside the user address space.
pub fn validate(pid: u32, vmas: &[pb::Vma]) -> Result<()> {
    const TASK_SIZE: u64 = (1 << 47) - 4096;
    let bad = |msg: String| Error::BadImage { file: format!("mm-{pid}.img"), msg };
    let mut prev_end = 0;
    for (i, v) in vmas.iter().enumerate() {
        let aligned = v.start % 4096 == 0 && v.end % 4096 == 0;
        let user = v.end <= TASK_SIZE || v.kind() == VmaKind::VmaVsyscall;
        if !aligned || v.start >= v.end || v.start < prev_end || !user {
            return Err(bad(format!("VMA {i} ({:#x}-{:#x}) is malformed or overlaps the previous one", v.start, v.end)));
        }
        prev_end = v.end;
    }
    Ok(())
}
