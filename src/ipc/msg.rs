//! SysV message queues: owner, mode, byte limit and every message with its type, in
//! order. Messages are read with msgrcv(MSG_COPY), which leaves the queue as it is;
//! the pids of the last send/receive and the times are not restorable.

use super::{listed_ids, perm_of, with_next_id};
use crate::error::{Error, Result};
use crate::sys::ipc;
use images_format::pb;

const OBJECT: &str = "message queue";
/// Queues holding more than this are refused (an image entry's limit is 64 MiB).
const MAX_QUEUE_BYTES: u64 = 32 << 20;

fn err(pid: i32, id: i32, msg: String) -> Error {
    Error::Ipc { pid, object: OBJECT, id, msg }
}

/// Every queue of the calling thread's IPC namespace (`pid`: the tree's root, for
/// errors).
pub fn dump(pid: i32) -> Result<Vec<pb::IpcEntry>> {
    let text = std::fs::read_to_string("/proc/sysvipc/msg").map_err(|e| Error::io("/proc/sysvipc/msg", e))?;
    let mut out = Vec::new();
    for id in listed_ids(&text) {
        let (perm, qbytes, cbytes, qnum) = ipc::msg_stat(id).map_err(|e| err(pid, id, format!("IPC_STAT: {e}")))?;
        if cbytes > MAX_QUEUE_BYTES {
            return Err(err(pid, id, format!("it holds {cbytes} bytes of messages, more than the {MAX_QUEUE_BYTES} crtool saves")));
        }
        let mut messages = Vec::new();
        for i in 0..qnum as usize {
            match ipc::msg_copy(id, i, cbytes as usize) {
                Ok(Some((mtype, text))) => messages.push(pb::MsgMessage { mtype, text }),
                Ok(None) => break,
                Err(nix::errno::Errno::ENOSYS) => {
                    return Err(err(pid, id, "msgrcv(MSG_COPY) is not available (kernel without CONFIG_CHECKPOINT_RESTORE)".into()));
                }
                Err(e) => return Err(err(pid, id, format!("copying message {i}: {e}"))),
            }
        }
        if messages.len() as u64 != qnum {
            return Err(err(pid, id, format!("{} of its {qnum} messages could be copied", messages.len())));
        }
        let q = pb::MsgQueue { id, perm: Some(perm_of(&perm)), qbytes, messages };
        out.push(pb::IpcEntry { kind: Some(pb::ipc_entry::Kind::Msg(q)) });
    }
    Ok(out)
}

/// Creates `queues` in the calling thread's (new) IPC namespace with their ids,
/// owners, modes, limits and messages (the namespace's msgmax and msgmnb must
/// allow them: see `IpcRestore::enter_namespaces`).
pub fn create_all(queues: &[pb::MsgQueue], pid: i32) -> Result<()> {
    for q in queues {
        let p = q.perm.unwrap_or_default();
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (p.mode & 0o777) as i32;
        with_next_id("msg", q.id, (p.cuid, p.cgid), || ipc::msg_get(p.key, flags), |got| { let _ = ipc::msg_rmid(got); })
            .map_err(|e| err(pid, q.id, format!("cannot recreate it (key {:#x}) with its id: {e}", p.key)))?;
        ipc::msg_set(q.id, p.uid, p.gid, p.mode, q.qbytes).map_err(|e| err(pid, q.id, format!("IPC_SET (msg_qbytes {}): {e}", q.qbytes)))?;
        for (i, m) in q.messages.iter().enumerate() {
            ipc::msg_send(q.id, m.mtype, &m.text).map_err(|e| err(pid, q.id, format!("sending message {i} (type {}, {} bytes) again: {e}", m.mtype, m.text.len())))?;
        }
    }
    Ok(())
}
