//! SysV shared memory segments: dump (IPC_STAT, contents through a read-only
//! attachment, zero and absent pages skipped), creation with the exact id and
//! contents, and the attachments of restored tasks at their addresses.

use super::{listed_ids, perm_of, with_next_id};
use crate::error::{Error, Result};
use crate::sys::ipc::{self, SHM_DEST, SHM_LOCKED, ShmAttachment};
use crate::sys::mm::{Area, Mapping, PAGE};
use images_format::{ImageKind, ImageReader, ImageWriter, pb};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::path::Path;

const OBJECT: &str = "shared memory segment";
/// Largest run of pages stored in one shmdata.img entry.
const CHUNK_PAGES: usize = 256;

fn err(pid: i32, id: i32, msg: String) -> Error {
    Error::Ipc { pid, object: OBJECT, id, msg }
}

/// The "swap" column of /proc/sysvipc/shm for segment `id` (0 if unknown).
fn swapped(text: &str, id: i32) -> u64 {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let (Some(ic), Some(sc)) = (head.iter().position(|c| *c == "shmid"), head.iter().position(|c| *c == "swap")) else { return 0 };
    lines.map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.get(ic).and_then(|v| v.parse::<i32>().ok()) == Some(id)).and_then(|f| f.get(sc)?.parse().ok()).unwrap_or(0)
}

/// Dumps the segments of the calling thread's IPC namespace: all of them (`own`)
/// or those in `attached` (id → a task and address that attach it). Contents go to
/// `data`.
pub fn dump(root: i32, own: bool, attached: &BTreeMap<i32, (i32, u64)>, data: &mut ImageWriter) -> Result<Vec<pb::IpcEntry>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").map_err(|e| Error::io("/proc/sysvipc/shm", e))?;
    let ids: Vec<i32> = if own { listed_ids(&text) } else { attached.keys().copied().collect() };
    let mut out = Vec::new();
    for id in ids {
        let (pid, at) = attached.get(&id).copied().unwrap_or((root, 0));
        let where_ = if at != 0 { format!("attached at {at:#x}: ") } else { String::new() };
        let info = ipc::shm_stat(id).map_err(|e| err(pid, id, format!("{where_}IPC_STAT: {e}")))?;
        let seg = pb::ShmSegment {
            id,
            perm: Some(perm_of(&info.perm)),
            size: info.size,
            removed: info.perm.mode & SHM_DEST != 0,
            locked: info.perm.mode & SHM_LOCKED != 0,
            cpid: info.cpid,
            ctime: info.ctime,
        };
        let len = info.size.next_multiple_of(PAGE);
        let att = ShmAttachment::new(id, len, false).map_err(|e| err(pid, id, format!("{where_}attaching it read-only to save its contents: {e}")))?;
        // Pages never touched are not read (that would allocate them); swapped-out
        // pages do not show in mincore, so a segment with some is read whole.
        let resident = att.resident().map_err(|e| err(pid, id, format!("mincore: {e}")))?;
        let all = swapped(&text, id) > 0;
        let bytes = att.bytes();
        let mut run: Option<(usize, usize)> = None;
        let mut flush = |run: &mut Option<(usize, usize)>| -> Result<()> {
            if let Some((first, n)) = run.take() {
                let (a, b) = (first * PAGE as usize, ((first + n) * PAGE as usize).min(info.size as usize));
                data.write(&pb::ShmChunk { shmid: id, offset: a as u64, data: bytes[a..b].to_vec() })?;
            }
            Ok(())
        };
        for (i, &res) in resident.iter().enumerate() {
            let page = &bytes[i * PAGE as usize..((i + 1) * PAGE as usize).min(bytes.len())];
            let wanted = (res || all) && page.iter().any(|&b| b != 0);
            match (&mut run, wanted) {
                (Some((first, n)), true) if *first + *n == i && *n < CHUNK_PAGES => *n += 1,
                (_, true) => {
                    flush(&mut run)?;
                    run = Some((i, 1));
                }
                (_, false) => flush(&mut run)?,
            }
        }
        flush(&mut run)?;
        out.push(pb::IpcEntry { kind: Some(pb::ipc_entry::Kind::Shm(seg)) });
    }
    Ok(out)
}

/// Segments crtool made in its own namespace for a restore: removed again when
/// dropped unless kept; attachments that hold removed segments alive until the
/// tasks attach.
#[derive(Default)]
pub struct Created {
    ids: Vec<i32>,
    holds: Vec<ShmAttachment>,
    kept: bool,
}

impl Created {
    /// The tree runs: the segments stay, crtool's own attachments go.
    pub fn keep(&mut self) {
        self.kept = true;
        self.holds.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        self.holds.clear();
        if !self.kept {
            for &id in &self.ids {
                let _ = ipc::shm_ctl(id, libc::IPC_RMID);
            }
        }
    }
}

/// Creates `segs` in the calling thread's IPC namespace with their ids, owners,
/// modes and contents (from `dir`'s shmdata.img), locks the locked ones and
/// removes the removed ones (still attached by the returned `Created`, which
/// removes every segment it made if dropped before `keep`). `pid` is for errors.
pub fn create_all(dir: &Path, segs: &[pb::ShmSegment], pid: i32) -> Result<Created> {
    let mut made = Created::default();
    let mut atts: BTreeMap<i32, ShmAttachment> = BTreeMap::new();
    for s in segs {
        let p = s.perm.unwrap_or_default();
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (p.mode & 0o777) as i32;
        let key = if s.removed { libc::IPC_PRIVATE } else { p.key };
        let made_id = with_next_id("shm", s.id, (p.cuid, p.cgid), || ipc::shm_get(key, s.size, flags), |got| {
            let _ = ipc::shm_ctl(got, libc::IPC_RMID);
        });
        match made_id {
            Ok(()) => made.ids.push(s.id),
            Err(e) if e == Errno::EEXIST.to_string() => {
                let holder = listed_ids(&std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default())
                    .into_iter()
                    .find(|&i| ipc::shm_stat(i).is_ok_and(|x| x.perm.key == key));
                return Err(err(pid, s.id, format!("cannot recreate it: its key {key:#x} now belongs to segment {}", holder.map_or("?".into(), |h| h.to_string()))));
            }
            Err(e) => return Err(err(pid, s.id, format!("cannot recreate it (key {key:#x}, {} bytes) with its id: {e}", s.size))),
        }
        ipc::shm_set(s.id, p.uid, p.gid, p.mode).map_err(|e| err(pid, s.id, format!("IPC_SET: {e}")))?;
        let att = ShmAttachment::new(s.id, s.size.next_multiple_of(PAGE), true).map_err(|e| err(pid, s.id, format!("attaching it to fill it: {e}")))?;
        atts.insert(s.id, att);
    }
    if !segs.is_empty() {
        let mut r = ImageReader::open(dir, ImageKind::ShmData, 0)?;
        while let Some(c) = r.next::<pb::ShmChunk>()? {
            let Some(att) = atts.get_mut(&c.shmid) else { continue };
            let dst = att.bytes_mut().and_then(|b| b.get_mut(c.offset as usize..(c.offset as usize).checked_add(c.data.len())?));
            let dst = dst.ok_or_else(|| Error::BadImage { file: "shmdata.img".into(), msg: format!("{} bytes at {} lie past segment {}", c.data.len(), c.offset, c.shmid) })?;
            dst.copy_from_slice(&c.data);
        }
    }
    for s in segs {
        if s.locked {
            ipc::shm_ctl(s.id, libc::SHM_LOCK).map_err(|e| err(pid, s.id, format!("SHM_LOCK: {e}")))?;
        }
        if s.removed {
            ipc::shm_ctl(s.id, libc::IPC_RMID).map_err(|e| err(pid, s.id, format!("IPC_RMID: {e}")))?;
            if let Some(a) = atts.remove(&s.id) {
                made.holds.push(a);
            }
        }
    }
    Ok(made)
}

/// For a tree in crtool's IPC namespace: keeps every segment that still exists as
/// it was (same key, size, creator and ctime), recreates those that are gone and
/// refuses an id that now belongs to another segment. `user` names a task and
/// address attaching a segment, for errors.
pub fn prepare_host(dir: &Path, segs: &[pb::ShmSegment], user: &dyn Fn(i32) -> (i32, u64)) -> Result<Created> {
    let mut missing = Vec::new();
    for s in segs {
        let p = s.perm.unwrap_or_default();
        let (pid, at) = user(s.id);
        match ipc::shm_stat(s.id) {
            Ok(now) if now.perm.key == p.key && now.size == s.size && now.cpid == s.cpid && now.ctime == s.ctime => {
                log::info!("SysV segment {} (key {:#x}, {} bytes) still exists: re-attached as it is", s.id, p.key, s.size);
            }
            Ok(now) => {
                return Err(err(pid, s.id, format!(
                    "attached at {at:#x} (key {:#x}, {} bytes): that id now belongs to another segment (key {:#x}, {} bytes, created by pid {}); remove it (ipcrm -m {}) or restore the tree in its own IPC namespace",
                    p.key, s.size, now.perm.key, now.size, now.cpid, s.id
                )));
            }
            Err(_) => missing.push(*s),
        }
    }
    for s in &missing {
        log::info!("SysV segment {} (key {:#x}, {} bytes) is gone: recreated with its contents", s.id, s.perm.as_ref().map_or(0, |p| p.key), s.size);
    }
    create_all(dir, &missing, user(missing.first().map_or(0, |s| s.id)).0)
}

/// The flags of shmat(2) that an attachment with these VmFlags (smaps) had: read-only
/// without "mw" (may write).
pub fn attach_flags(vm_flags: &str) -> u32 {
    if vm_flags.split_whitespace().any(|f| f == "mw") { 0 } else { libc::SHM_RDONLY as u32 }
}

/// Attaches the SysV VMA `v` at the next `len` bytes of a restoring task's area (the
/// restorer moves it into place like any other mapping).
pub fn attach(area: &mut Area, v: &pb::Vma, len: u64) -> std::result::Result<Mapping, Errno> {
    let info = ipc::shm_stat(v.shmid as i32)?;
    area.attach_shm(v.shmid as i32, info.size.next_multiple_of(PAGE), v.pgoff, len, v.open_flags as i32, v.prot as i32)
}
