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
    Dump {
        /// PID of the process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Let the process run on after the dump instead of killing it.
        #[arg(short = 'R', long)]
        leave_running: bool,
        /// Compress page data with zstd.
        #[arg(long)]
        compress: bool,
        /// Allow a process that is not a session leader (started from a shell);
        /// restore it from the same session.
        #[arg(short = 'j', long)]
        shell_job: bool,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Restore a process from an image directory. Without -d crtool stays its parent,
    /// waits for it and exits with its exit status.
    Restore {
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Detach: exit once the process runs; it is reparented.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Accepted for CRIU compatibility: the session is taken from the images.
        #[arg(short = 'j', long)]
        shell_job: bool,
        /// How files are compared with the dumped ones before restoring: `buildid`
        /// (default: mapped files must have the same size and ELF build-id, or the
        /// same mapped bytes), `filesize` (every regular file, mapped or open, must
        /// have the same size; CRIU's method) or `none`.
        #[arg(long, value_name = "METHOD", default_value = "buildid")]
        file_validation: crtool::files::identity::Validation,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Probe the kernel features crtool needs and say which are missing.
    Check,
    /// Summarise an image directory.
    Show { dir: PathBuf },
    /// Decode one image file (every kind) to JSON.
    Decode {
        file: PathBuf,
        /// Print JSON (the default and only format today).
        #[arg(long)]
        json: bool,
    },
    /// Check every image file's framing and checksums.
    Verify { dir: PathBuf },
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
        if r.level() <= self.stderr_level {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let (true, Some(f)) = (r.level() <= self.file_level, &self.file) {
            let _ = f.lock().map(|mut f| f.write_all(line.as_bytes()));
        }
    }
    fn flush(&self) {}
}

fn init_log(opts: &LogOpts, dir: &Path, default_name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = match &opts.log {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join(default_name),
    };
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
        Cmd::Dump { pid, dir, leave_running, compress, shell_job, log } => {
            let dir = absolute(&dir)?;
            init_log(&log, &dir, "dump.log")?;
            let opts = dump::DumpOpts { pid, dir: dir.clone(), leave_running, compress, shell_job };
            let stats = dump::dump(&opts)?;
            eprintln!(
                "crtool: dumped pid {pid} into {} ({} process{}, {} thread{}; {} pages, {} VMAs, {} fds; frozen {:.1} ms)",
                dir.display(),
                stats.processes,
                if stats.processes == 1 { "" } else { "es" },
                stats.threads,
                if stats.threads == 1 { "" } else { "s" },
                stats.pages.dumped,
                stats.vmas,
                stats.fds,
                stats.frozen.as_secs_f64() * 1e3
            );
            Ok(0)
        }
        Cmd::Restore { dir, detach, shell_job: _, file_validation, log } => {
            let dir = absolute(&dir)?;
            init_log(&log, &dir, "restore.log")?;
            let checks = restore::preflight::Checks { validation: file_validation };
            match restore::restore(&restore::RestoreOpts { dir, detach, checks })? {
                restore::Outcome::Detached(pid) => {
                    eprintln!("crtool: restored pid {pid}, running detached");
                    Ok(0)
                }
                restore::Outcome::Exited(code) => Ok(code),
            }
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
            print!("{}", show::show(&dir)?);
            Ok(0)
        }
        Cmd::Decode { file, json: _ } => {
            let v = images_format::decode_to_json(&file)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Verify { dir } => {
            let report = images_format::verify_dir(&dir)?;
            for (path, n) in &report.files {
                println!("ok {} ({n} entries)", path.display());
            }
            Ok(0)
        }
    }
}

fn main() {
    // Die quietly on a closed pipe (`crtool show DIR | head`), like other CLI tools.
    crtool::sys::process::default_sigpipe();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("crtool: error: {e:#}");
            std::process::exit(1);
        }
    }
}
