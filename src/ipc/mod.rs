//! SysV IPC and the UTS namespace of the tree.
//!
//! Dump: a thread of crtool enters the root's IPC namespace (setns affects only the
//! calling thread) and reads every object there (`/proc/sysvipc/*`, IPC_STAT,
//! GETALL, msgrcv with MSG_COPY, which leaves the queue as it is, and shmat
//! read-only for segment contents); in crtool's own namespace only the segments the
//! tree has attached. Images: `ipc.img` (namespace, segments, semaphore sets,
//! queues), `shmdata.img` (segment pages), `uts.img` (host and domain name).
//!
//! Restore, own namespace: the root task, first thing after it is forked, unshares
//! the IPC (and UTS) namespace and creates every object with its exact id
//! (`/proc/sys/kernel/{shm,sem,msg}_next_id`) before any task attaches; the tasks
//! then attach their segments while premapping their memory (`shm::attach`). In
//! crtool's namespace, crtool itself re-attaches a segment that still exists
//! (same key, size, creator and ctime), recreates one that is gone and refuses one
//! whose id now belongs to another segment; a failed restore removes what it
//! created.

pub mod msg;
pub mod sem;
pub mod shm;
pub mod uts;

use crate::error::{Error, Result};
use images_format::{ImageKind, pb, read_entries, write_entries};
use pb::ipc_entry::Kind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The namespace kinds this module handles, with their clone flags.
fn ns_flag(ns: &str) -> nix::sched::CloneFlags {
    match ns {
        "uts" => nix::sched::CloneFlags::CLONE_NEWUTS,
        _ => nix::sched::CloneFlags::CLONE_NEWIPC,
    }
}

fn ns_link(pid: &str, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

/// Whether `pid` is in an IPC/UTS namespace other than crtool's.
pub fn own_ns(pid: i32, ns: &str) -> bool {
    let theirs = ns_link(&pid.to_string(), ns);
    theirs.is_some() && theirs != ns_link("self", ns)
}

/// The IPC and UTS namespaces of the tree's root that differ from crtool's: every
/// process of the tree may be in them (and in no other).
pub fn tree_namespaces(root: i32) -> Vec<(&'static str, PathBuf)> {
    ["ipc", "uts"].into_iter().filter(|ns| own_ns(root, ns)).filter_map(|ns| Some((ns, ns_link(&root.to_string(), ns)?))).collect()
}

/// Runs `f` in a thread that entered `pid`'s namespace `ns` ("ipc" or "uts"), or
/// right here when `enter` is false.
pub fn in_ns<T: Send>(pid: i32, ns: &str, enter: bool, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if !enter {
        return f();
    }
    let file = std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|e| Error::proc(pid, format!("ns/{ns}"), e))?;
    let flag = ns_flag(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, flag).map_err(|e| Error::sys(format!("setns into the {ns} namespace of pid {pid}"), e))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Reported(format!("pid {pid}: reading its {ns} namespace panicked"))))
    })
}

/// `/proc/sysvipc/KIND` ("shm", "sem", "msg") as `pid`'s IPC namespace shows it.
pub fn sysvipc_text(pid: i32, kind: &str) -> String {
    let path = format!("/proc/sysvipc/{kind}");
    in_ns(pid, "ipc", own_ns(pid, "ipc"), || Ok(std::fs::read_to_string(&path).unwrap_or_default())).unwrap_or_default()
}

/// The ids in a `/proc/sysvipc/*` listing (column "shmid", "semid" or "msqid").
pub(crate) fn listed_ids(text: &str) -> Vec<i32> {
    let mut lines = text.lines();
    let Some(col) = lines.next().and_then(|h| h.split_whitespace().position(|c| c.ends_with("id"))) else { return Vec::new() };
    let mut ids: Vec<i32> = lines.filter_map(|l| l.split_whitespace().nth(col)?.parse().ok()).collect();
    ids.sort_unstable();
    ids
}

pub(crate) fn perm_of(p: &crate::sys::ipc::Perm) -> pb::IpcPerm {
    pb::IpcPerm { key: p.key, uid: p.uid, gid: p.gid, cuid: p.cuid, cgid: p.cgid, mode: p.mode & 0o777 }
}

/// The namespace's IPC knobs that are saved and restored with it.
const VARS: &[&str] = &[
    "kernel/msgmax", "kernel/msgmnb", "kernel/msgmni", "kernel/sem", "kernel/shm_rmid_forced", "kernel/shmall", "kernel/shmmax", "kernel/shmmni",
    "fs/mqueue/msg_default", "fs/mqueue/msg_max", "fs/mqueue/msgsize_default", "fs/mqueue/msgsize_max", "fs/mqueue/queues_max",
];

pub(crate) fn read_var(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{name}")).ok().map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

pub(crate) fn write_var(name: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{name}"), value)
}

/// What `dump` found: the namespaces to record in the inventory.
#[derive(Debug, Default, Clone, Copy)]
pub struct NsFlags {
    pub new_ipc_ns: bool,
    pub new_uts_ns: bool,
}

/// Dumps the SysV objects and UTS namespace of the frozen tree rooted at `root`
/// (crtool's pid) into `dir`, after its mm images are written (`vpids`: their
/// names), adding the files written to `manifest`.
pub fn dump(dir: &Path, root: i32, vpids: &[u32], manifest: &mut Vec<pb::ImageFile>) -> Result<NsFlags> {
    let flags = NsFlags { new_ipc_ns: own_ns(root, "ipc"), new_uts_ns: own_ns(root, "uts") };
    // Segments the tree has attached, with a task and address that shows each.
    let mut attached = std::collections::BTreeMap::new();
    for &vp in vpids {
        let mm: pb::Mm = images_format::read_one(dir, ImageKind::Mm, vp)?;
        for v in mm.vmas.iter().filter(|v| v.kind() == pb::VmaKind::VmaSysvShm) {
            attached.entry(v.shmid as i32).or_insert((vp as i32, v.start));
        }
    }
    if flags.new_ipc_ns || !attached.is_empty() {
        let own = flags.new_ipc_ns;
        let d = dir.to_path_buf();
        let files = in_ns(root, "ipc", own, move || {
            let mut entries = vec![pb::IpcEntry { kind: Some(Kind::Ns(pb::IpcNamespace {
                own,
                vars: if own { VARS.iter().filter_map(|n| Some(pb::IpcVar { name: n.to_string(), value: read_var(n)? })).collect() } else { Vec::new() },
            })) }];
            let mut data = images_format::ImageWriter::create(&d, ImageKind::ShmData, 0)?;
            entries.extend(shm::dump(root, own, &attached, &mut data)?);
            if own {
                entries.extend(sem::dump(root)?);
                entries.extend(msg::dump(root)?);
            }
            Ok(vec![write_entries(&d, ImageKind::Ipc, 0, &entries)?, data.finish()?])
        })?;
        manifest.extend(files);
    }
    if flags.new_uts_ns {
        let u = in_ns(root, "uts", true, uts::read)?;
        manifest.push(write_entries(dir, ImageKind::Uts, 0, &[u])?);
    }
    Ok(flags)
}

/// Refuses, naming the process, SEM_UNDO adjustments: the kernel has no interface
/// to read them (CRIU does not restore them either). `sem_text` is
/// /proc/sysvipc/sem of the process's namespace.
pub fn undo_refusal(pid: i32) -> Error {
    Error::Unsupported {
        pid,
        fd: None,
        what: "it holds SysV semaphore undo records (semop with SEM_UNDO)".into(),
        hint: Some("the kernel has no interface to read SEM_UNDO adjustments, so they cannot be restored; semaphore sets without SEM_UNDO are supported"),
    }
}

/// The IPC images of a dump, loaded before the tree is forked, and what crtool
/// created for it in its own namespace (removed again unless `keep` is called).
#[derive(Default)]
pub struct IpcRestore {
    own_ipc: bool,
    dir: PathBuf,
    root: i32,
    ns: Option<pb::IpcNamespace>,
    shm: Vec<pb::ShmSegment>,
    sem: Vec<pb::SemSet>,
    msg: Vec<pb::MsgQueue>,
    uts: Option<pb::UtsNamespace>,
    /// Crtool's namespace: segments recreated here, and attachments holding removed
    /// ones alive until the tasks have theirs.
    host: shm::Created,
}

impl IpcRestore {
    /// Loads the images and, for a tree in crtool's IPC namespace, re-attaches or
    /// recreates the segments its tasks attach.
    pub fn prepare(dir: &Path, inv: &pb::Inventory, vmas: &[(u32, &pb::Mm)]) -> Result<IpcRestore> {
        let mut r = IpcRestore { own_ipc: inv.new_ipc_ns, dir: dir.to_path_buf(), root: inv.root_pid as i32, ..Default::default() };
        let used: BTreeSet<(u32, i32, u64)> =
            vmas.iter().flat_map(|(pid, mm)| mm.vmas.iter().filter(|v| v.kind() == pb::VmaKind::VmaSysvShm).map(move |v| (*pid, v.shmid as i32, v.start))).collect();
        let has = |k: ImageKind| dir.join(k.file_name(0)).exists();
        if has(ImageKind::Ipc) {
            for e in read_entries::<pb::IpcEntry>(dir, ImageKind::Ipc, 0)? {
                match e.kind {
                    Some(Kind::Ns(n)) => r.ns = Some(n),
                    Some(Kind::Shm(s)) => r.shm.push(s),
                    Some(Kind::Sem(s)) => r.sem.push(s),
                    Some(Kind::Msg(m)) => r.msg.push(m),
                    None => {}
                }
            }
        }
        let bad = |msg: String| Error::BadImage { file: "ipc.img".into(), msg };
        if (inv.new_ipc_ns || !used.is_empty()) && r.ns.as_ref().map(|n| n.own) != Some(inv.new_ipc_ns) {
            return Err(bad(format!("no IPC namespace entry matching the inventory (own namespace: {})", inv.new_ipc_ns)));
        }
        for &(pid, id, at) in &used {
            if !r.shm.iter().any(|s| s.id == id) {
                return Err(bad(format!("pid {pid} attaches SysV segment {id} at {at:#x}, which the image does not hold")));
            }
        }
        if inv.new_uts_ns {
            r.uts = Some(images_format::read_one(dir, ImageKind::Uts, 0)?);
        }
        if !inv.new_ipc_ns && !r.shm.is_empty() {
            let user = |id: i32| used.iter().find(|u| u.1 == id).map(|&(p, _, a)| (p as i32, a)).unwrap_or((r.root, 0));
            r.host = shm::prepare_host(dir, &r.shm, &user)?;
        }
        Ok(r)
    }

    /// In the restored root, before anything else: new UTS and IPC namespaces
    /// (if the tree had its own) with every object in place.
    pub fn enter_namespaces(&self) -> Result<()> {
        let pid = self.root;
        let fail = |what: &str, e: nix::errno::Errno| Error::Restore { pid, msg: format!("{what}: {e}") };
        if let Some(u) = &self.uts {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).map_err(|e| fail("unshare(CLONE_NEWUTS)", e))?;
            uts::set(u).map_err(|e| fail("setting the host and domain name", e))?;
        }
        if !self.own_ipc {
            return Ok(());
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| fail("unshare(CLONE_NEWIPC)", e))?;
        let vars = self.ns.as_ref().map(|n| n.vars.as_slice()).unwrap_or_default();
        let var = |n: &str| vars.iter().find(|v| v.name == n).and_then(|v| v.value.parse::<u64>().ok()).unwrap_or(0);
        let set = |name: &str, value: &str| -> Result<()> {
            if read_var(name).as_deref() == Some(value) {
                return Ok(());
            }
            write_var(name, value).map_err(|e| Error::Restore { pid, msg: format!("writing {value} into /proc/sys/{name}: {e}") })
        };
        // Limits first, raised while objects are made where they had been lowered
        // below what the objects hold.
        let raised: [(&str, u64); 4] = [
            ("kernel/msgmax", self.msg.iter().flat_map(|q| q.messages.iter().map(|m| m.text.len() as u64)).max().unwrap_or(0)),
            ("kernel/msgmnb", self.msg.iter().map(|q| q.qbytes).max().unwrap_or(0)),
            ("kernel/shmmax", self.shm.iter().map(|s| s.size).max().unwrap_or(0)),
            ("kernel/shmall", self.shm.iter().map(|s| s.size.div_ceil(4096)).sum()),
        ];
        for v in vars {
            let up = raised.iter().find(|r| r.0 == v.name).map(|r| r.1.max(var(&v.name)).to_string());
            set(&v.name, up.as_deref().unwrap_or(&v.value))?;
        }
        // Attachments that keep removed segments alive until the tasks have theirs
        // (the restorer unmaps these copies in every task).
        let keep = shm::create_all(&self.dir, &self.shm, pid)?;
        std::mem::forget(keep);
        sem::create_all(&self.sem, pid)?;
        msg::create_all(&self.msg, pid)?;
        for v in vars.iter().filter(|v| raised.iter().any(|r| r.0 == v.name)) {
            set(&v.name, &v.value)?;
        }
        Ok(())
    }

    /// The tree runs: what crtool created stays, its own attachments go.
    pub fn keep(&mut self) {
        self.host.keep();
    }
}

/// The IPC objects and UTS names of an image directory, for `crtool show`.
pub fn describe(dir: &Path) -> Result<String> {
    use std::fmt::Write;
    let mut s = String::new();
    if dir.join(ImageKind::Ipc.file_name(0)).exists() {
        let data: Vec<pb::ShmChunk> = read_entries(dir, ImageKind::ShmData, 0)?;
        for e in read_entries::<pb::IpcEntry>(dir, ImageKind::Ipc, 0)? {
            let p = |p: &Option<pb::IpcPerm>| {
                let p = p.unwrap_or_default();
                format!("key {:#010x} mode {:03o} uid {} gid {} cuid {} cgid {}", p.key, p.mode, p.uid, p.gid, p.cuid, p.cgid)
            };
            let _ = match e.kind {
                Some(Kind::Ns(n)) => writeln!(s, "\nSysV IPC ({} IPC namespace{})", if n.own { "its own" } else { "crtool's" },
                    n.vars.iter().map(|v| format!("; {} {}", v.name, v.value)).collect::<String>()),
                Some(Kind::Shm(m)) => {
                    let stored: usize = data.iter().filter(|c| c.shmid == m.id).map(|c| c.data.len()).sum();
                    writeln!(s, "  shm {} {} size {}{}{}, {} bytes stored", m.id, p(&m.perm), m.size,
                        if m.removed { " (removed, still attached)" } else { "" }, if m.locked { " SHM_LOCKED" } else { "" }, stored)
                }
                Some(Kind::Sem(m)) => writeln!(s, "  sem {} {} values {:?}", m.id, p(&m.perm), m.values),
                Some(Kind::Msg(m)) => writeln!(s, "  msg {} {} qbytes {}, {} messages (types {:?})", m.id, p(&m.perm), m.qbytes, m.messages.len(),
                    m.messages.iter().map(|x| x.mtype).collect::<Vec<_>>()),
                None => Ok(()),
            };
        }
    }
    if dir.join(ImageKind::Uts.file_name(0)).exists() {
        let u: pb::UtsNamespace = images_format::read_one(dir, ImageKind::Uts, 0)?;
        let _ = writeln!(s, "\nUTS namespace of its own: hostname {:?}, domainname {:?}", String::from_utf8_lossy(&u.hostname), String::from_utf8_lossy(&u.domainname));
    }
    Ok(s)
}

/// Writes `want` into `/proc/sys/kernel/KIND_next_id` and runs `create` as the
/// creator `creator` (uid, gid; see `as_creator`), which must return the id `want`;
/// on any other id the object is removed with `remove`.
pub(crate) fn with_next_id(
    kind: &str,
    want: i32,
    creator: (u32, u32),
    create: impl FnOnce() -> std::result::Result<i32, nix::errno::Errno>,
    remove: impl FnOnce(i32),
) -> std::result::Result<(), String> {
    let var = format!("kernel/{kind}_next_id");
    write_var(&var, &want.to_string()).map_err(|e| format!("writing /proc/sys/{var}: {e}"))?;
    let got = as_creator(creator.0, creator.1, create);
    let _ = write_var(&var, "-1");
    let got = got?;
    match got {
        Ok(id) if id == want => Ok(()),
        Ok(id) => {
            remove(id);
            Err(format!("the kernel gave id {id} instead"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `f` with effective uid/gid `uid`/`gid` (so that the object it creates has
/// them as creator), then goes back.
pub(crate) fn as_creator<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    use nix::unistd::{Gid, Uid, getegid, geteuid, setegid, seteuid};
    let (eu, eg) = (geteuid(), getegid());
    setegid(Gid::from_raw(gid)).map_err(|e| format!("setegid({gid}): {e}"))?;
    if let Err(e) = seteuid(Uid::from_raw(uid)) {
        let _ = setegid(eg);
        return Err(format!("seteuid({uid}): {e}"));
    }
    let r = f();
    seteuid(eu).map_err(|e| format!("seteuid back to {eu}: {e}"))?;
    setegid(eg).map_err(|e| format!("setegid back to {eg}: {e}"))?;
    Ok(r)
}
