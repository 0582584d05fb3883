//! Unit tests: shared fixtures.

mod corruption;
mod json;
mod kinds;
mod manifest;
mod pages;
mod roundtrip;
mod verify;
mod ipc;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pb::{self, VmaKind, file_entry};
use crate::{Compression, ImageKind, PAGE_SIZE, PagesWriter, write_entries};

pub const PID: u32 = 42;

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("images-format-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn inventory() -> pb::Inventory {
    pb::Inventory {
        format_version: 1,
        root_pid: PID,
        page_compression: 1,
        pids: vec![PID, 43],
        new_pid_ns: true,
        new_mount_ns: false,
        outer_pids: vec![4242, 4243],
        files: vec![],
        ..Default::default()
    }
}

/// The manifest of every image file in `dir` but the inventory, as a dump writes it.
pub fn manifest_of(dir: &Path) -> Vec<pb::ImageFile> {
    let mut files: Vec<pb::ImageFile> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img") && n != "inventory.img")
        .map(|name| {
            let data = std::fs::read(dir.join(&name)).unwrap();
            pb::ImageFile { size: data.len() as u64, crc32: crc32fast::hash(&data), entries: 0, name }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

pub fn pstree() -> Vec<pb::PstreeEntry> {
    vec![
        pb::PstreeEntry {
            pid: PID,
            ppid: 1,
            pgid: PID,
            sid: PID,
            threads: vec![PID, 44],
            zombie: false,
            exit_status: 0,
            comm: String::new(),
            ..Default::default()
        },
        pb::PstreeEntry {
            pid: 43,
            ppid: PID,
            pgid: PID,
            sid: PID,
            threads: vec![43],
            zombie: false,
            exit_status: 0,
            comm: String::new(),
            ..Default::default()
        },
        pb::PstreeEntry {
            pid: 45,
            ppid: 43,
            pgid: 45,
            sid: PID,
            threads: vec![],
            zombie: true,
            exit_status: 9,
            comm: "worker".into(),
            uids: vec![1000, 1000, 1000, 1000],
            gids: vec![100, 100, 100, 100],
            exit_signal: 17,
        },
    ]
}

pub fn core() -> pb::TaskCore {
    let thread = |tid: u32, rip: u64| pb::ThreadCore {
        tid,
        regs: Some(pb::Regs {
            rip,
            rsp: 0x7ffd_0000_1000,
            rax: u64::MAX,
            cs: 0x33,
            ..Default::default()
        }),
        fpu: Some(pb::Fpu {
            xsave: (0..64u8).collect(),
            xcr0: 0x2e7,
            layout: vec![pb::XsaveComponent {
                feature: 2,
                offset: 576,
                size: 256,
            }],
        }),
        blocked: 1 << 9,
        altstack: Some(pb::SigAltStack {
            sp: 0x1000,
            flags: 2,
            size: 8192,
        }),
        rseq: Some(pb::Rseq {
            ptr: 0x7f00_0000_0020,
            len: 32,
            flags: 0,
            sig: 0x5305_3053,
        }),
        robust_list: 0x7f00_0000_0a20,
        robust_list_len: 24,
        clear_child_tid: 0x7f00_0000_0910,
        comm: format!("worker-{tid}"),
        pending: vec![vec![10u8; 128]],
        restart: (tid == 44).then(|| pb::SyscallRestart { nr: 202, args: vec![0x7f00_0000_0100, 128, 0, 0, 0, 0xffff_ffff], timeout_arg: Some(3), remaining_ns: 1_500_000_000 }),
        cpu_affinity: vec![3],
        pdeath_signal: 15,
        mce_kill: 2,
        sched: Some(pb::Sched { policy: 1, flags: 1, priority: 7, ..Default::default() }),
        ioprio: (2 << 13) | 6,
        timerslack_ns: 123_456,
    };
    pb::TaskCore {
        pid: PID,
        comm: "memstate".into(),
        threads: vec![thread(PID, 0x40_1000), thread(44, 0x40_2000)],
        sigactions: vec![pb::SigAction {
            sig: 10,
            handler: 0x40_3000,
            flags: 0x0400_0004,
            restorer: 0x40_4000,
            mask: 0,
        }],
        itimers: vec![pb::Itimer {
            which: 0,
            interval_usec: 1000,
            value_usec: 500,
        }],
        creds: Some(pb::Creds {
            ruid: 1000,
            euid: 1000,
            groups: vec![4, 27],
            cap_bnd: 0x1ff_ffff_ffff,
            securebits: 0x10,
            ..Default::default()
        }),
        rlimits: vec![pb::Rlimit {
            resource: 7,
            cur: 1024,
            max: 4096,
        }],
        umask: 0o022,
        cwd: "/home/user".into(),
        cwd_deleted: None,
        root: "/".into(),
        personality: 0,
        dumpable: 1,
        shared_pending: vec![vec![14u8; 128]],
        posix_timers: vec![pb::PosixTimer {
            id: 3,
            clock: 1,
            signo: 34,
            notify: 4,
            sigev_value: 7,
            notify_tid: 44,
            interval_ns: 250_000_000,
            value_ns: 100_000_000,
            overrun: 0,
        }],
        child_subreaper: true,
        thp_disable: 3,
        membarrier: 0x110,
        no_new_privs: false,
        stop_signal: 19,
        stop_unreported: true,
        oom_score_adj: 345,
        coredump_filter: 0x7f,
        loginuid: 1000,
    }
}

pub fn mm() -> pb::Mm {
    let vma = |start: u64, end: u64, kind: VmaKind, path: &str| pb::Vma {
        start,
        end,
        prot: 3,
        kind: kind as i32,
        pgoff: 0,
        path: path.into(),
        dev: 0x803,
        ino: 1234,
        growsdown: path == "[stack]",
        open_flags: 0,
        shmid: if kind == VmaKind::VmaAnonShared { 99 } else { 0 },
        shmem_owner: kind == VmaKind::VmaAnonShared,
        flags: if path == "[heap]" { vec!["ac".into()] } else { vec![] },
        identity: path.starts_with('/').then(|| pb::FileIdentity { size: 8192, mtime_ns: 1_700_000_000_000_000_000, build_id: vec![0xab; 20], crc32: None }),
        ghost: false,
    };
    pb::Mm {
        start_code: 0x40_0000,
        end_code: 0x40_5000,
        start_brk: 0x60_0000,
        brk: 0x62_1000,
        start_stack: 0x7ffd_0000_2000,
        auxv: vec![6, 4096, 0, 0],
        exe: "/usr/bin/memstate".into(),
        exe_ghost: false,
        exe_ino: 0,
        vmas: vec![
            vma(
                0x40_0000,
                0x40_5000,
                VmaKind::VmaFilePrivate,
                "/usr/bin/memstate",
            ),
            vma(0x60_0000, 0x62_1000, VmaKind::VmaAnonPrivate, "[heap]"),
            vma(
                0x7ffd_0000_0000,
                0x7ffd_0002_1000,
                VmaKind::VmaAnonPrivate,
                "[stack]",
            ),
            vma(
                0x7ffd_1000_0000,
                0x7ffd_1000_2000,
                VmaKind::VmaVdso,
                "[vdso]",
            ),
            vma(
                0x7ffd_2000_0000,
                0x7ffd_2000_4000,
                VmaKind::VmaAnonShared,
                "/dev/zero (deleted)",
            ),
        ],
        ..Default::default()
    }
}

pub fn fdinfo() -> Vec<pb::FdEntry> {
    vec![
        pb::FdEntry {
            fd: 0,
            file_id: 1,
            cloexec: false,
            locks: vec![],
        },
        pb::FdEntry {
            fd: 1,
            file_id: 1,
            cloexec: false,
            locks: vec![],
        },
        pb::FdEntry {
            fd: 3,
            file_id: 2,
            cloexec: true,
            locks: vec![pb::FileLock { kind: 1, write: true, start: 5, end: 14, to_eof: false }],
        },
    ]
}

pub fn files() -> Vec<pb::FileEntry> {
    vec![
        pb::FileEntry {
            id: 1,
            kind: Some(file_entry::Kind::Chr(pb::ChrDev {
                path: "/dev/null".into(),
                flags: 2,
                major: 1,
                minor: 3,
                pos: 0,
            })),
            ..Default::default()
        },
        pb::FileEntry {
            id: 2,
            kind: Some(file_entry::Kind::Reg(pb::RegFile {
                path: "/tmp/data".into(),
                flags: 0o2,
                pos: 77,
                size: 4096,
                mode: 0o100644,
                dev: 0x803,
                ino: 99,
                ghost: false,
            })),
            owner: Some(pb::FileOwner { r#type: 1, pid: 42 }),
            signum: 36,
        },
        pb::FileEntry { id: 3, kind: Some(file_entry::Kind::Pipe(pb::PipeEnd { pipe_id: 555, flags: 0o4000, external: false })), ..Default::default() },
        pb::FileEntry {
            id: 4,
            kind: Some(file_entry::Kind::Fifo(pb::Fifo { path: "/tmp/fifo".into(), pipe_id: 556, flags: 1, quiet: true, external: true })),
            ..Default::default()
        },
    ]
}

/// Page data for a run of `nr` pages: compressible but distinct per `seed`.
pub fn page_data(nr: u32, seed: u8) -> Vec<u8> {
    (0..u64::from(nr) * PAGE_SIZE)
        .map(|i| if i % 512 < 64 { seed ^ (i as u8) } else { seed })
        .collect()
}

/// Writes pages-PID.img and pagemap-PID.img holding the given runs.
pub fn write_pages(
    dir: &Path,
    compression: Compression,
    runs: &[(u64, u32)],
) -> Vec<pb::PagemapEntry> {
    let mut w = PagesWriter::create(dir, PID, compression).expect("create pages");
    let map: Vec<pb::PagemapEntry> = runs
        .iter()
        .enumerate()
        .map(|(i, &(vaddr, nr_pages))| {
            let c = w.append(&page_data(nr_pages, i as u8 + 1)).expect("append");
            pb::PagemapEntry {
                vaddr,
                nr_pages,
                offset: c.offset,
                stored_len: c.stored_len,
                crc32: c.crc32,
                ..Default::default()
            }
        })
        .collect();
    w.finish().expect("finish pages");
    write_entries(dir, ImageKind::Pagemap, PID, &map).expect("write pagemap");
    map
}

/// Writes a complete, valid image set into `dir`.
pub fn write_image_set(dir: &Path, compression: Compression) {
    write_entries(dir, ImageKind::Pstree, 0, &pstree()).unwrap();
    write_entries(dir, ImageKind::Core, PID, &[core()]).unwrap();
    write_entries(dir, ImageKind::Mm, PID, &[mm()]).unwrap();
    write_entries(dir, ImageKind::Fdinfo, PID, &fdinfo()).unwrap();
    write_entries(dir, ImageKind::Files, 0, &files()).unwrap();
    write_entries(dir, ImageKind::Pipes, 0, &pipes()).unwrap();
    write_pages(dir, compression, &[(0x60_0000, 2), (0x7ffd_0002_0000, 1)]);
    write_inventory(dir);
}

/// Writes the inventory with the manifest of what `dir` holds now.
pub fn write_inventory(dir: &Path) {
    let inv = pb::Inventory { files: manifest_of(dir), ..inventory() };
    write_entries(dir, ImageKind::Inventory, 0, &[inv]).unwrap();
}

pub fn pipes() -> Vec<pb::PipeData> {
    vec![
        pb::PipeData { pipe_id: 555, capacity: 65536, data: b"unread bytes".to_vec() },
        pb::PipeData { pipe_id: 556, capacity: 1 << 20, data: vec![] },
    ]
}
