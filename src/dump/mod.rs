//! `crtool dump`: discover → freeze → collect (proc, ptrace, parasite) → write images
//! → cure and detach, or kill. This module only sequences; resource knowledge lives
//! in `task`, `mem` and `files`.

use crate::error::{Error, Result};
use crate::infect::{Parasite, Tracee};
use crate::mem::{dump::PageDumper, dump::PageStats, vma};
use crate::sys::{cpu, mm};
use crate::{files, task};
use images_format::{pb, Compression, ImageKind, PagesWriter, write_entries};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DumpOpts {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub compress: bool,
    pub shell_job: bool,
}

#[derive(Debug, Default)]
pub struct DumpStats {
    pub frozen: Duration,
    pub pages: PageStats,
    pub vmas: usize,
    pub fds: usize,
}

/// Fields of /proc/PID/stat after the command name, 0-based from "state".
struct Stat(Vec<u64>);

impl Stat {
    fn read(pid: i32) -> Result<Stat> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoProcess(pid),
            _ => Error::proc(pid, "stat", e),
        })?;
        let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        Ok(Stat(rest.split_whitespace().skip(1).map(|v| v.parse::<i64>().map(|x| x as u64).unwrap_or(0)).collect()))
    }
    /// Field number `n` as numbered in proc(5).
    fn field(&self, n: usize) -> u64 {
        self.0.get(n - 4).copied().unwrap_or(0)
    }
}

pub fn dump(opts: &DumpOpts) -> Result<DumpStats> {
    let pid = opts.pid;
    Stat::read(pid)?; // a clear "no such process" before anything else
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    let xsave_size = cpu::xsave_size();
    let zero_pfn = mm::zero_pfn();
    let vdso_syscall = mm::vdso_syscall_offset();

    let t0 = Instant::now();
    let mut tracee = Tracee::seize(Pid::from_raw(pid), xsave_size)?;
    log::info!("pid {pid}: frozen");
    let mut stats = DumpStats::default();
    let result = collect(&mut tracee, opts, zero_pfn, vdso_syscall, &mut stats);
    match result {
        Ok(()) => {
            let kill = !opts.leave_running;
            tracee.release(kill)?;
            stats.frozen = t0.elapsed();
            log::info!("pid {pid}: {} after {:?} frozen", if kill { "killed" } else { "resumed" }, stats.frozen);
            Ok(stats)
        }
        Err(e) => {
            // The task's state goes back exactly; it runs on as if nothing happened.
            let released = tracee.release(false);
            remove_images(&opts.dir, pid);
            if let Err(r) = released {
                log::error!("pid {pid}: releasing after a failed dump: {r}");
            }
            Err(e)
        }
    }
}

fn collect(tracee: &mut Tracee, opts: &DumpOpts, zero_pfn: Option<u64>, vdso_syscall: Option<u64>, stats: &mut DumpStats) -> Result<()> {
    let pid = opts.pid;
    let unsupported = |what: String, hint: Option<&'static str>| Error::Unsupported { pid, fd: None, what, hint };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| Error::proc(pid, "task", e))?.count();
    if threads != 1 {
        return Err(unsupported(format!("it has {threads} threads"), Some("multi-threaded processes are not supported yet")));
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).map_err(|e| Error::proc(pid, "children", e))?;
    if !children.trim().is_empty() {
        return Err(unsupported(format!("it has child processes ({})", children.trim()), Some("process trees are not supported yet")));
    }
    let stat = Stat::read(pid)?;
    let (ppid, pgid, sid) = (stat.field(4), stat.field(5), stat.field(6));
    if sid != pid as u64 && !opts.shell_job {
        return Err(unsupported(format!("it is not a session leader (session {sid})"), Some("start it with setsid, or use --shell-job")));
    }

    let fds = files::list(pid)?;
    files::precheck(pid, &fds)?;
    let vmas = vma::collect(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| Error::proc(pid, "exe", e))?.to_string_lossy().into_owned();
    if exe.ends_with(" (deleted)") {
        return Err(unsupported(format!("its executable {exe} was deleted"), None));
    }
    let vdso = vmas.iter().find(|v| v.kind() == pb::VmaKind::VmaVdso);
    match (vdso, vdso_syscall) {
        (Some(v), Some(off)) => tracee.set_syscall_ip(v.start + off),
        _ => return Err(unsupported("it has no vdso to run syscalls through".into(), None)),
    }

    let mut parasite = Parasite::inject(tracee)?;
    let info = parasite.info()?;
    let numbers: Vec<i32> = fds.iter().map(|f| f.fd).collect();
    let dups = parasite.fds(&numbers)?;
    let (fd_entries, file_entries) = files::dump(pid, &fds, &dups)?;
    drop(dups);

    let compression = if opts.compress { Compression::Zstd } else { Compression::Raw };
    let mut pages = PagesWriter::create(&opts.dir, pid as u32, compression)?;
    let mut dumper = PageDumper::new(pid, zero_pfn)?;
    dumper.dump(&vmas, &mut parasite, &mut pages)?;
    parasite.finish()?;
    pages.finish()?;
    stats.pages = dumper.stats;
    stats.vmas = vmas.len();
    stats.fds = fds.len();
    log::info!("pid {pid}: {} pages dumped ({} scanned, {} zero), {} VMAs, {} fds",
        dumper.stats.dumped, dumper.stats.scanned, dumper.stats.zero, vmas.len(), fds.len());

    let core = task::dump(tracee, &info)?;
    let auxv_bytes = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| Error::proc(pid, "auxv", e))?;
    let auxv = auxv_bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    let mm_img = pb::Mm {
        start_code: stat.field(26),
        end_code: stat.field(27),
        start_stack: stat.field(28),
        start_data: stat.field(45),
        end_data: stat.field(46),
        start_brk: stat.field(47),
        brk: info.brk,
        arg_start: stat.field(48),
        arg_end: stat.field(49),
        env_start: stat.field(50),
        env_end: stat.field(51),
        auxv,
        exe,
        vmas,
    };
    let p = pid as u32;
    let dir = &opts.dir;
    let inventory = pb::Inventory { format_version: images_format::FORMAT_VERSION, root_pid: p, page_compression: compression.code(), pids: vec![p] };
    write_entries(dir, ImageKind::Inventory, 0, &[inventory])?;
    let tree = pb::PstreeEntry { pid: p, ppid: ppid as u32, pgid: pgid as u32, sid: sid as u32, threads: vec![p] };
    write_entries(dir, ImageKind::Pstree, 0, &[tree])?;
    write_entries(dir, ImageKind::Core, p, &[core])?;
    write_entries(dir, ImageKind::Mm, p, &[mm_img])?;
    write_entries(dir, ImageKind::Pagemap, p, &dumper.entries)?;
    write_entries(dir, ImageKind::Fdinfo, p, &fd_entries)?;
    write_entries(dir, ImageKind::Files, 0, &file_entries)?;
    // Like CRIU, images are not fsync()ed: they sit in the page cache when the task
    // is killed, which survives everything but a host crash.
    Ok(())
}

/// Removes the image files a failed dump may have left, so that nobody restores them.
fn remove_images(dir: &std::path::Path, pid: i32) {
    for k in ImageKind::all() {
        let _ = std::fs::remove_file(dir.join(k.file_name(pid as u32)));
    }
}
