//! Before anything is created: can these images be restored here? Every file they
//! reopen or map opens with its recorded mode and is (per `--file-validation`) the
//! file that was dumped, the executable may be executed, the cwd and root exist, the
//! CPU holds every register the images use, and the address space fits under
//! `vm.max_map_count` together with what restoring needs on top.
//!
//! `crtool dump` runs the same checks on the images it has just written, before it
//! kills the tree (or reports success with `--leave-running`): a dump that restore
//! could not rebuild fails while the tasks still run.

use super::TreeImages;
use crate::error::{Error, Result};
use crate::files::{self, identity::Validation};
use crate::mem;
use crate::task;
use images_format::pb;
use std::collections::BTreeSet;

/// What the checks may skip (restore options).
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// How files are compared with the dumped ones.
    pub validation: Validation,
}

/// Mappings restoring a process may need on top of its own at the peak (the
/// restorer's region, crtool's own mappings in the restoring process, slack).
const OWN_SLACK: usize = 16;

fn fail(pid: u32, msg: String) -> Error {
    Error::Restore { pid: pid as i32, msg }
}

pub fn check(imgs: &TreeImages, checks: Checks) -> Result<()> {
    let max_maps = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse::<usize>().ok());
    let own_maps = crate::procinfo::maps("self").map(|m| m.len()).unwrap_or(64);
    let shm_objects: BTreeSet<u64> = imgs
        .procs
        .iter()
        .filter_map(|p| p.task.as_ref())
        .flat_map(|t| t.mm.vmas.iter().filter(|v| v.kind() == pb::VmaKind::VmaAnonShared).map(|v| v.shmid))
        .collect();
    for p in &imgs.procs {
        let Some(t) = &p.task else { continue };
        let pid = t.core.pid;
        for th in &t.core.threads {
            let fpu = th.fpu.as_ref().ok_or_else(|| Error::BadImage { file: format!("core-{pid}.img"), msg: "no FPU state".into() })?;
            task::regs::check_cpu(pid as i32, fpu)?;
        }
        task::check_restorable(&t.core, &t.mm).map_err(|m| fail(pid, m))?;
        for v in &t.mm.vmas {
            mem::vma::check_mappable(v, checks.validation)
                .map_err(|m| fail(pid, format!("{} mapped at {:#x}: {m}", v.path, v.start)))?;
        }
        if let Some(max) = max_maps {
            let own = own_maps + shm_objects.len() + OWN_SLACK;
            let need = (t.mm.vmas.len() + 2).max(own + mem::restore::peak_vmas(&t.mm.vmas, &t.pagemap));
            if need > max {
                return Err(fail(pid, format!(
                    "its {} mappings need {need} at once to restore, more than vm.max_map_count ({max}); raise it (sysctl vm.max_map_count)",
                    t.mm.vmas.len()
                )));
            }
        }
    }
    for f in &imgs.files {
        let Some(kind) = f.kind.as_ref() else { continue };
        if let Err(m) = files::check_reopen(kind, checks.validation) {
            // Name a task and fd that hold it.
            let holder = imgs.procs.iter().filter_map(|p| p.task.as_ref()).find_map(|t| t.fds.iter().find(|e| e.file_id == f.id).map(|e| (t.core.pid, e.fd)));
            let (pid, fd) = holder.unwrap_or((imgs.inv.root_pid, -1));
            return Err(fail(pid, format!("fd {fd} ({}): {m}", files::describe(kind))));
        }
    }
    Ok(())
}
