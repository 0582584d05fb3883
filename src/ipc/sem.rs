//! SysV semaphore sets: owner, mode and the value of each semaphore (GETALL /
//! SETALL). Undo adjustments (SEM_UNDO) are refused at dump (see `undo_refusal`);
//! the pid of the last operation and the times are not restorable.

use super::{listed_ids, perm_of, with_next_id};
use crate::error::{Error, Result};
use crate::sys::ipc;
use images_format::pb;

const OBJECT: &str = "semaphore set";

fn err(pid: i32, id: i32, msg: String) -> Error {
    Error::Ipc { pid, object: OBJECT, id, msg }
}

/// Every semaphore set of the calling thread's IPC namespace (`pid`: the tree's
/// root, for errors).
pub fn dump(pid: i32) -> Result<Vec<pb::IpcEntry>> {
    let text = std::fs::read_to_string("/proc/sysvipc/sem").map_err(|e| Error::io("/proc/sysvipc/sem", e))?;
    let mut out = Vec::new();
    for id in listed_ids(&text) {
        let (perm, nsems) = ipc::sem_stat(id).map_err(|e| err(pid, id, format!("IPC_STAT: {e}")))?;
        let values = ipc::sem_getall(id, nsems as usize).map_err(|e| err(pid, id, format!("GETALL: {e}")))?;
        let set = pb::SemSet { id, perm: Some(perm_of(&perm)), values: values.into_iter().map(u32::from).collect() };
        out.push(pb::IpcEntry { kind: Some(pb::ipc_entry::Kind::Sem(set)) });
    }
    Ok(out)
}

/// Creates `sets` in the calling thread's (new) IPC namespace with their ids,
/// owners, modes and values.
pub fn create_all(sets: &[pb::SemSet], pid: i32) -> Result<()> {
    for s in sets {
        let p = s.perm.unwrap_or_default();
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (p.mode & 0o777) as i32;
        let n = s.values.len() as i32;
        with_next_id("sem", s.id, (p.cuid, p.cgid), || ipc::sem_get(p.key, n, flags), |got| { let _ = ipc::sem_rmid(got); })
            .map_err(|e| err(pid, s.id, format!("cannot recreate it (key {:#x}, {n} semaphores) with its id: {e}", p.key)))?;
        ipc::sem_set(s.id, p.uid, p.gid, p.mode).map_err(|e| err(pid, s.id, format!("IPC_SET: {e}")))?;
        let values: Vec<u16> = s.values.iter().map(|&v| v as u16).collect();
        ipc::sem_setall(s.id, &values).map_err(|e| err(pid, s.id, format!("SETALL: {e}")))?;
    }
    Ok(())
}
