//! The crtool command line. All work happens in the library; this file parses
//! arguments, sets up logging and turns errors into messages and exit codes.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use crtool::{check, dump, restore, show};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Parser)]
#[command(name = "crtool", version, about = "Checkpoint and restore Linux processes", long_about = "\
crtool freezes a running process, saves everything the kernel holds for it into a
directory of image files, and later brings it back exactly: same PID, memory,
registers, open files and signal state.

  crtool dump -t PID -D DIR        checkpoint PID into DIR (then kill it)
  crtool restore -D DIR -d         bring it back and leave it running
  crtool show DIR                  what is in DIR
  crtool check                     does this kernel have what crtool needs?")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct LogOpts {
    /// More detail in the log and on stderr (-v, -vv, -vvv).
    #[arg(short, action = clap::ArgAction::Count, global = true)]
    v: u8,
    /// Log file (relative paths are inside the image directory).
    #[arg(short = 'o', long = "log-file")]
    log: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a process into an image directory. The process is frozen while
    /// crtool works, then killed (or left running with --leave-running).
    Dump(DumpArgs),
    /// CRIU's pre-dump: a dump that leaves the tree running and tracks its memory
    /// (--track-mem), so that the next dump with --prev-images-dir DIR stores only
    /// the pages written since. Takes the options of `dump`.
    #[command(name = "pre-dump")]
    PreDump(DumpArgs),
    /// Restore a process from an image directory. Without -d crtool stays its parent,
    /// waits for it and exits with its exit status.
    Restore {
        /// Image directory of a complete dump.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Detach: exit once the process runs; it is reparented.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Accepted for CRIU compatibility: a tree dumped with --shell-job joins
        /// crtool's session and process group and gets its terminal either way.
        #[arg(short = 'j', long)]
        shell_job: bool,
        /// How files are compared with the dumped ones before restoring: `buildid`
        /// (default: mapped files must have the same size and ELF build-id, or the
        /// same mapped bytes), `filesize` (every regular file, mapped or open, must
        /// have the same size; CRIU's method) or `none`.
        #[arg(long, value_name = "METHOD", default_value = "buildid")]
        file_validation: crtool::files::identity::Validation,
        /// Restore into a new PID namespace (with its own /proc) under a minimal init
        /// that outlives crtool: the PIDs are free there whatever runs here, and the
        /// same images can be restored several times side by side.
        #[arg(long)]
        pidns: bool,
        /// Write the PID of the restored root (as crtool sees it) to FILE.
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// fd[N]:pipe:[ID]: use crtool's fd N for the pipe that was external at dump
        /// (--external pipe:[ID]); fd[N]:socket:[INO]: use crtool's fd N (a
        /// connected unix stream socket) for socket INO, whose peer was outside the
        /// tree (dump --ext-unix-sk); fd[N]:KEY: crtool's fd N (a network namespace
        /// file) is the namespace of --external net[INO]:KEY. Repeatable.
        #[arg(long, value_name = "fd[N]:RES")]
        inherit_fd: Vec<String>,
        /// Accepted for CRIU compatibility (what is external is in the images).
        #[arg(long)]
        ext_unix_sk: bool,
        /// Accepted for CRIU compatibility (locks in the images are always taken).
        #[arg(long)]
        file_locks: bool,
        /// Accepted for CRIU compatibility (connections in the images are always
        /// restored, and their network lock removed).
        #[arg(long)]
        tcp_established: bool,
        /// IN=OUT: the veth IN of the tree's network namespace is made again with
        /// its peer outside named OUT (CRIU's --veth-pair). Repeatable.
        #[arg(long, value_name = "IN=OUT")]
        veth_pair: Vec<String>,
        /// macvlan[IN]:OUT: the macvlan link IN of the tree's network namespace,
        /// whose lower link was outside, is made again on the link OUT of crtool's
        /// namespace (CRIU's meaning). Repeatable.
        #[arg(long, value_name = "macvlan[IN]:OUT")]
        external: Vec<String>,
        /// Run the tree before its private anonymous memory is filled: the
        /// lazy-pages daemon serving this directory (`crtool lazy-pages -D DIR`,
        /// waited for up to 5 s) supplies each page on first touch and pushes the
        /// rest in the background.
        #[arg(long)]
        lazy_pages: bool,
        #[command(flatten)]
        log: LogOpts,
        #[command(flatten)]
        not_yet: RestoreNotYet,
    },
    /// The init of a PID namespace made by `restore --pidns` (internal).
    #[command(name = "__pidns-init", hide = true)]
    PidnsInit { root: i32 },
    /// The lazy-pages daemon's watchdog (internal).
    #[command(name = "__lazy-watchdog", hide = true)]
    LazyWatchdog,
    /// CRIU's page server: receives the page images of one `dump --page-server`
    /// over TCP and writes them into DIR; exits 0 once that dump is complete
    /// (a dump that goes away leaves nothing behind).
    #[command(name = "page-server")]
    PageServer {
        /// Image directory the page images go into (created if missing).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        address: String,
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        log: LogOpts,
    },
    /// CRIU's lazy-pages daemon: serves the memory of one `restore --lazy-pages`
    /// of DIR over the socket DIR/lazy-pages.socket, answering page faults and
    /// pushing the remaining pages; exits 0 once every restored process has all
    /// of its memory (or has exited). If a page cannot be supplied, the processes
    /// still owed memory are killed and it exits 1.
    #[command(name = "lazy-pages")]
    LazyPages {
        /// Image directory of the dump being restored.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Fetch the memory a `dump --lazy-pages` kept from that dump, at
        /// --address and --port (CRIU's post-copy migration).
        #[arg(long, requires = "port")]
        page_server: bool,
        /// The dump's address (with --page-server).
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
        /// The dump's port (with --page-server).
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        log: LogOpts,
    },
    /// CRIU's dedup: removes from the parent directories of DIR (its chain of
    /// --prev-images-dir dumps) the page data no dump after them reads, punching
    /// it out of their page files. DIR restores as before; a parent alone can
    /// no longer be restored.
    Dedup {
        /// Image directory at the end of the chain.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Probe the kernel features crtool needs and say which are missing.
    Check,
    /// Summarise an image directory.
    Show {
        /// Image directory.
        dir: PathBuf,
    },
    /// Decode one image file (every kind) to JSON.
    Decode {
        /// An image file (e.g. DIR/core-42.img).
        file: PathBuf,
        /// Print JSON (the default and only format today).
        #[arg(long)]
        json: bool,
    },
    /// Check every image file's framing and checksums.
    Verify {
        /// Image directory.
        dir: PathBuf,
    },
}

/// The options of `dump` and `pre-dump`.
#[derive(Args)]
struct DumpArgs {
    /// PID of the process to dump.
    #[arg(short = 't', long = "tree")]
    pid: i32,
    /// Image directory (created if missing).
    #[arg(short = 'D', long = "images-dir")]
    dir: PathBuf,
    /// Let the process run on after the dump instead of killing it (its private
    /// anonymous memory is then copied in the background: the tree is frozen
    /// only while it is write-protected).
    #[arg(short = 'R', long)]
    leave_running: bool,
    /// Compress page data with zstd.
    #[arg(long)]
    compress: bool,
    /// Allow a process that is not a session leader (started from a shell);
    /// restore it from the same session.
    #[arg(short = 'j', long)]
    shell_job: bool,
    /// A resource shared with a process outside the tree that is expected to be
    /// handed over at restore: pipe:[ID] (a pipe or FIFO by inode, as
    /// /proc/PID/fd shows it); net[INO]:KEY (the tree's network namespace, by
    /// inode, is the caller's: not saved, joined at restore). Repeatable.
    #[arg(long, value_name = "RES")]
    external: Vec<String>,
    /// Dump unix sockets connected to a peer outside the tree: at restore a
    /// datagram socket is connected to the peer's name again, a stream socket is
    /// taken from --inherit-fd fd[N]:socket:[INO].
    #[arg(long)]
    ext_unix_sk: bool,
    /// Dump file locks (POSIX, flock, OFD) held through the tree's fds; restore
    /// takes them again before the tree runs. Without it a lock is refused.
    #[arg(long)]
    file_locks: bool,
    /// Largest deleted file (ghost file) whose data is saved in the images:
    /// bytes, or with a K, M or G suffix (default 1M, as CRIU).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    ghost_limit: Option<u64>,
    /// A deleted file that still has another name is taken along by a hard link
    /// made beside its old path (.crtool-link-remap.INODE.TAG, TAG standing for DIR), which restore opens
    /// and removes. Without it such a file is refused.
    #[arg(long)]
    link_remap: bool,
    /// Dump established TCP connections (TCP_REPAIR), locking the network for
    /// them (nftables) until they are restored. Without it an established
    /// connection is refused.
    #[arg(long)]
    tcp_established: bool,
    /// Dump even when clients are in the middle of their TCP handshake with a
    /// listener of the tree (SYN_RECV): those handshakes start over.
    #[arg(long)]
    skip_in_flight: bool,
    /// With --leave-running: copy the memory while the tree is frozen, as
    /// without it, instead of in the background (for programs that use
    /// FUTEX_WAKE_OP, or a debugger writing their memory, during the dump:
    /// those kernel writes cannot wait for a write-protected page).
    #[arg(long)]
    no_background_copy: bool,
    /// With --prev-images-dir: once the dump is complete, remove from the
    /// previous dumps the page data it makes unneeded (as `crtool dedup`).
    #[arg(long, requires = "prev_images_dir")]
    auto_dedup: bool,
    /// Track the tree's memory from this dump on (it must be left running: -R, or
    /// pre-dump), so that a later dump with --prev-images-dir naming this
    /// directory stores only the pages written since (userfaultfd write
    /// protection and PAGEMAP_SCAN; no soft-dirty needed).
    #[arg(long)]
    track_mem: bool,
    /// The directory of the previous (pre-)dump of this tree, relative to the
    /// image directory or absolute: pages not written since it are not stored
    /// again but read from it at restore (the `parent` link, as CRIU's).
    #[arg(long, value_name = "DIR")]
    prev_images_dir: Option<PathBuf>,
    /// Send the page images to the page server at --address and --port
    /// (`crtool page-server` there) instead of writing them into DIR; the other
    /// images stay in DIR, to be copied next to them before a restore there.
    #[arg(long, requires = "port")]
    page_server: bool,
    /// The page server's address (with --page-server; default 127.0.0.1), or
    /// the address to serve the tree's memory on (with --lazy-pages; default
    /// 0.0.0.0).
    #[arg(long)]
    address: Option<String>,
    /// The page server's port (with --page-server), or the port to serve the
    /// tree's memory on (with --lazy-pages).
    #[arg(long)]
    port: Option<u16>,
    /// CRIU's post-copy migration: private anonymous memory stays in the tree,
    /// which stays stopped and serves it on --address/--port (default 0.0.0.0
    /// for this) to `crtool lazy-pages --page-server` of a `restore --lazy-pages`
    /// elsewhere; the dump ends, killing the tree, once that has all of it. DIR
    /// must hold no dump (these images are useless once the tree is gone).
    #[arg(long, requires = "port", conflicts_with_all = ["page_server", "leave_running", "track_mem"])]
    lazy_pages: bool,
    /// Write a zero byte to this fd (and close it) once the images of a
    /// --lazy-pages dump are complete and its memory is being served (CRIU's).
    #[arg(long, value_name = "FD")]
    status_fd: Option<i32>,
    #[command(flatten)]
    log: LogOpts,
    #[command(flatten)]
    not_yet: DumpNotYet,
}

/// CRIU dump options crtool does not implement yet: accepted by the parser so that
/// they are refused with a clear message, not as unknown.
#[derive(Args)]
#[command(next_help_heading = "CRIU options not supported yet")]
struct DumpNotYet {
    /// cgroup handling (not supported yet).
    #[arg(long, num_args = 0..=1)]
    manage_cgroups: Option<Option<String>>,
    /// Freeze through a cgroup (not supported yet).
    #[arg(long, value_name = "CGROUP")]
    freeze_cgroup: Option<String>,
}

impl DumpNotYet {
    fn used(&self) -> Option<&'static str> {
        [
            (self.manage_cgroups.is_some(), "--manage-cgroups"),
            (self.freeze_cgroup.is_some(), "--freeze-cgroup"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }
}

/// CRIU restore options crtool does not implement yet (see `DumpNotYet`).
#[derive(Args)]
#[command(next_help_heading = "CRIU options not supported yet")]
struct RestoreNotYet {
    /// cgroup handling (not supported yet).
    #[arg(long, num_args = 0..=1)]
    manage_cgroups: Option<Option<String>>,
    /// Restore into another root directory (not supported yet).
    #[arg(short = 'r', long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Restore the tree as a sibling of crtool (not supported yet).
    #[arg(long)]
    restore_sibling: bool,
}

impl RestoreNotYet {
    fn used(&self) -> Option<&'static str> {
        [
            (self.manage_cgroups.is_some(), "--manage-cgroups"),
            (self.root.is_some(), "--root"),
            (self.restore_sibling, "--restore-sibling"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }
}

/// "4096", "64K", "1M", "2G" → bytes.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mul)).ok_or_else(|| format!("{s:?}: expected bytes, or a number with K, M or G"))
}

/// "pipe:[ID]" → ID.
fn parse_pipe(s: &str) -> Result<u64> {
    s.strip_prefix("pipe:[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse().ok()).context("expected pipe:[ID], ID a pipe's inode number")
}

/// "fd[N]:pipe:[ID]" or "fd[N]:socket:[INO]" → (N, ID, is a socket); fd N must be
/// open in crtool.
/// What --inherit-fd hands over.
enum Inherited {
    Pipe(u64),
    Socket(u64),
    /// A network namespace for the key of an --external net[INO]:KEY.
    Netns(String),
}

fn parse_inherit(s: &str) -> Result<(i32, Inherited)> {
    let (fd, res) = s.strip_prefix("fd[").and_then(|r| r.split_once("]:")).context("expected fd[N]:pipe:[ID], fd[N]:socket:[INO] or fd[N]:KEY")?;
    let fd: i32 = fd.parse().context("fd[N]: N must be a number")?;
    std::fs::read_link(format!("/proc/self/fd/{fd}")).with_context(|| format!("fd {fd} is not open in crtool"))?;
    // Any other key names a network namespace (--external net[INO]:KEY; the fd is
    // checked when it is joined).
    if !res.starts_with("pipe:[") && !res.starts_with("socket:[") {
        return Ok((fd, Inherited::Netns(res.to_string())));
    }
    Ok((fd, parse_inherit_res(res)?))
}

fn parse_inherit_res(res: &str) -> Result<Inherited> {
    if let Some(ino) = res.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
        return Ok(Inherited::Socket(ino.parse().context("expected socket:[INO], INO a socket's inode number")?));
    }
    Ok(Inherited::Pipe(parse_pipe(res)?))
}

fn not_yet(option: Option<&str>) -> Result<()> {
    match option {
        Some(o) => anyhow::bail!("option {o} is not supported yet"),
        None => Ok(()),
    }
}

struct Logger {
    file: Option<Mutex<std::fs::File>>,
    file_level: log::LevelFilter,
    stderr_level: log::LevelFilter,
    start: std::time::Instant,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.file_level || m.level() <= self.stderr_level
    }
    fn log(&self, r: &log::Record) {
        let t = self.start.elapsed().as_secs_f64();
        let line = format!("({t:>9.6}) {:<5} {}\n", r.level(), r.args());
        // The final error is printed on stderr by main itself, once. Libraries'
        // notes (netlink-packet-route on attributes newer than it knows) go to the
        // log file only.
        let ours = r.target().starts_with("crtool");
        // (netlink-packet-route warns of every attribute newer than it knows.)
        if !ours && r.level() > log::Level::Error {
            return;
        }
        if r.level() <= self.stderr_level && r.target() != FINAL {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let (true, Some(f)) = (r.level() <= self.file_level, &self.file) {
            let _ = f.lock().map(|mut f| f.write_all(line.as_bytes()));
        }
    }
    fn flush(&self) {}
}

/// Log target of the final error (written to the log file only).
const FINAL: &str = "crtool::final";

fn init_log(opts: &LogOpts, dir: &Path, default_name: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{}: not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = match &opts.log {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join(default_name),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::File::create(&path).with_context(|| format!("creating log {}", path.display()))?;
    let stderr_level = match opts.v {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let logger = Logger { file: Some(Mutex::new(file)), file_level: log::LevelFilter::Debug.max(stderr_level), stderr_level, start: std::time::Instant::now() };
    log::set_boxed_logger(Box::new(logger)).ok();
    log::set_max_level(log::LevelFilter::Trace);
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

fn run() -> Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Dump(a) => run_dump(a, false),
        Cmd::PreDump(a) => run_dump(a, true),
        Cmd::Restore { dir, detach, shell_job: _, file_validation, pidns, pidfile, inherit_fd, ext_unix_sk: _, file_locks: _, tcp_established: _, veth_pair, external, lazy_pages, log, not_yet: n } => {
            not_yet(n.used())?;
            let mut inherit = std::collections::BTreeMap::new();
            let mut inherit_socks = std::collections::BTreeMap::new();
            let mut inherit_ns = std::collections::BTreeMap::new();
            for spec in &inherit_fd {
                match parse_inherit(spec).with_context(|| format!("--inherit-fd {spec}"))? {
                    (fd, Inherited::Socket(id)) => inherit_socks.insert(id, fd),
                    (fd, Inherited::Pipe(id)) => inherit.insert(id, fd),
                    (fd, Inherited::Netns(key)) => inherit_ns.insert(key, fd),
                };
            }
            let mut veth = std::collections::BTreeMap::new();
            for spec in &veth_pair {
                let (inside, outside) = spec.split_once('=').filter(|(i, o)| !i.is_empty() && !o.is_empty() && o.len() < 16).with_context(|| format!("--veth-pair {spec}: want IN=OUT (OUT at most 15 characters)"))?;
                veth.insert(inside.to_string(), outside.to_string());
            }
            for spec in &external {
                let (inside, outside) = spec
                    .strip_prefix("macvlan[")
                    .and_then(|r| r.split_once("]:"))
                    .filter(|(i, o)| !i.is_empty() && !o.is_empty())
                    .with_context(|| format!("--external {spec}: want macvlan[IN]:OUT"))?;
                veth.insert(inside.to_string(), outside.to_string());
            }
            let dir = absolute(&dir)?;
            // Nothing is created (not even the log) where there is no dump.
            restore::check_dir(&dir)?;
            crtool::sys::signals::catch_interrupts();
            init_log(&log, &dir, "restore.log")?;
            let checks = restore::preflight::Checks { validation: file_validation };
            match restore::restore(&restore::RestoreOpts { dir, detach, checks, pidns, pidfile, inherit, inherit_socks, veth, inherit_ns, lazy_pages })? {
                restore::Outcome::Detached(pid) => {
                    eprintln!("crtool: restored pid {pid}, running detached");
                    Ok(0)
                }
                restore::Outcome::Exited(code) => Ok(code),
            }
        }
        Cmd::PidnsInit { root } => Ok(restore::pidns::init_loop(root)),
        Cmd::LazyWatchdog => Ok(crtool::lazy::watchdog::run()),
        Cmd::PageServer { dir, address, port, log } => {
            let dir = absolute(&dir)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            init_log(&log, &dir, "page-server.log")?;
            let n = crtool::pageserver::serve(&address, port, &dir)?;
            eprintln!("crtool: page server: {n} page image{} received into {}", if n == 1 { "" } else { "s" }, dir.display());
            Ok(0)
        }
        Cmd::LazyPages { dir, page_server, address, port, log } => {
            let dir = absolute(&dir)?;
            restore::check_dir(&dir)?;
            init_log(&log, &dir, "lazy-pages.log")?;
            let s = crtool::lazy::serve(&dir, port.filter(|_| page_server).map(|p| (address.as_str(), p)))?;
            eprintln!(
                "crtool: lazy-pages: {} process{} served in {} ms: {} faults ({} KiB), {} KiB pushed, {} zero pages",
                s.processes,
                if s.processes == 1 { "" } else { "es" },
                s.serving.as_millis(),
                s.faults,
                s.fault_bytes >> 10,
                s.pushed_bytes >> 10,
                s.zero_pages
            );
            Ok(0)
        }
        Cmd::Dedup { dir, log } => {
            let dir = absolute(&dir)?;
            restore::check_dir(&dir)?;
            init_log(&log, &dir, "dedup.log")?;
            let d = crtool::mem::dedup::dedup(&dir)?;
            eprintln!("crtool: dedup: {} chunks ({} MiB) of the parent directories of {} removed", d.chunks, d.bytes >> 20, dir.display());
            Ok(0)
        }
        Cmd::Check => {
            let probes = check::check();
            let mut ok = true;
            for p in &probes {
                println!("{:<62} {} {}", p.name, if p.ok { "ok  " } else { "FAIL" }, p.detail);
                ok &= p.ok;
            }
            println!("{}", if ok { "Looks good." } else { "Some features crtool needs are missing." });
            Ok(if ok { 0 } else { 1 })
        }
        Cmd::Show { dir } => {
            crtool::restore::check_dir(&dir)?;
            print!("{}", show::show(&dir)?);
            Ok(0)
        }
        Cmd::Decode { file, json: _ } => {
            let v = images_format::decode_to_json(&file)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Verify { dir } => {
            // A missing directory is named as such; a checkpoint an interrupted dump
            // had set aside is put back first.
            crtool::restore::check_dir(&dir)?;
            let report = images_format::verify_dir(&dir)?;
            for (path, n) in &report.files {
                println!("ok {} ({n} entries)", path.display());
            }
            Ok(0)
        }
    }
}

/// The error and its causes, each once: a cause whose text the message already
/// includes (our errors name their OS error) is not repeated.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() {
    // Die quietly on a closed pipe (`crtool show DIR | head`), like other CLI tools.
    crtool::sys::process::default_sigpipe();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = message(&e);
            log::error!(target: FINAL, "{msg}");
            eprintln!("crtool: error: {msg}");
            std::process::exit(1);
        }
    }
}

fn run_dump(a: DumpArgs, pre_dump: bool) -> anyhow::Result<i32> {
    let DumpArgs { pid, dir, leave_running, compress, shell_job, external, ext_unix_sk, file_locks, ghost_limit, link_remap, tcp_established, skip_in_flight, no_background_copy, track_mem, prev_images_dir, page_server, address, port, lazy_pages, status_fd, auto_dedup, log, not_yet: n } = a;
    not_yet(n.used())?;
    crtool::sys::signals::catch_interrupts();
    let dir = absolute(&dir)?;
    if lazy_pages && pre_dump {
        anyhow::bail!("--lazy-pages: a pre-dump leaves the tree running; use it with the final `crtool dump`");
    }
    if lazy_pages && dir.join(images_format::ImageKind::Inventory.file_name(0)).exists() {
        anyhow::bail!("--lazy-pages: {} holds a dump, which these images would replace (and they are useless once the tree is gone): use an empty directory", dir.display());
    }
    dump::check_target(pid)?;
    init_log(&log, &dir, "dump.log")?;
    for e in &external {
        if crtool::net::parse_external(e).is_none() {
            parse_pipe(e).with_context(|| format!("--external {e} (or net[INO]:KEY)"))?;
        }
    }
    // The parent directory: as given (the `parent` link's text), and resolved.
    let prev = match prev_images_dir {
        Some(p) => {
            let abs = if p.is_absolute() { p.clone() } else { dir.join(&p) };
            if !abs.join(images_format::ImageKind::Inventory.file_name(0)).is_file() {
                anyhow::bail!("--prev-images-dir {}: {} holds no complete dump (no inventory)", p.display(), abs.display());
            }
            Some((p, abs))
        }
        None => None,
    };
    let lazy_pages = port.filter(|_| lazy_pages).map(|p| (address.clone().unwrap_or_else(|| "0.0.0.0".into()), p));
    let leave_running = leave_running || pre_dump;
    let opts = dump::DumpOpts { pid, dir: dir.clone(), leave_running, compress, shell_job, external, ext_unix_sk, file_locks, ghost_limit: ghost_limit.unwrap_or(crtool::files::ghost::DEFAULT_LIMIT), link_remap, tcp_established, skip_in_flight, background_copy: !no_background_copy, track_mem: (track_mem || pre_dump) && leave_running, prev, page_server: port.filter(|_| page_server).map(|p| (address.unwrap_or_else(|| "127.0.0.1".into()), p)), lazy_pages, status_fd };
    let stats = dump::dump(&opts)?;
    eprintln!(
        "crtool: {} pid {pid} into {} ({} process{}, {} thread{}; {} pages{}, {} VMAs, {} fds; frozen {:.1} ms)",
        if pre_dump { "pre-dumped" } else { "dumped" },
        dir.display(),
        stats.processes,
        if stats.processes == 1 { "" } else { "es" },
        stats.threads,
        if stats.threads == 1 { "" } else { "s" },
        stats.pages.dumped,
        match (opts.prev.is_some(), opts.lazy_pages.is_some()) {
            (_, true) => format!(" (and {} left in the tree for the lazy restore)", stats.pages.lazy),
            (true, false) => format!(" ({} unchanged, in the parent)", stats.pages.in_parent),
            _ => String::new(),
        },
        stats.vmas,
        stats.fds,
        stats.frozen.as_secs_f64() * 1e3
    );
    if auto_dedup {
        let d = crtool::mem::dedup::dedup(&dir)?;
        eprintln!("crtool: dedup: {} chunks ({} MiB) of the previous dumps removed", d.chunks, d.bytes >> 20);
    }
    if let Some((bytes, t)) = stats.lazy_served {
        eprintln!("crtool: {} MiB of memory served to the lazy-pages daemon in {} ms; the tree is gone", bytes >> 20, t.as_millis());
    }
    Ok(0)
}
