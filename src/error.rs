//! crtool's error type: every variant says which task, fd, file or image it concerns.

use images_format::ImageError;
use nix::errno::Errno;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pid {pid}: {op} failed: {errno}")]
    Ptrace { pid: i32, op: &'static str, errno: Errno },

    #[error("cannot read /proc/{pid}/{what}: {source}")]
    Proc { pid: i32, what: String, source: std::io::Error },

    #[error("no such process: pid {0}")]
    NoProcess(i32),

    #[error("cannot dump pid {pid}{}: {what}{}", fd.map(|f| format!(" fd {f}")).unwrap_or_default(), hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Unsupported { pid: i32, fd: Option<i32>, what: String, hint: Option<&'static str> },

    #[error("cannot dump pid {pid}: {msg}; restoring the images would fail, so the dump is refused and the tree runs on")]
    NotRestorable { pid: i32, msg: String },

    #[error("pid {pid}: parasite: {msg}")]
    Parasite { pid: i32, msg: String },

    #[error("pid {pid}: task {state} while crtool was working on it")]
    TaskGone { pid: i32, state: String },

    #[error(transparent)]
    Image(#[from] ImageError),

    #[error("image {file}: {msg}")]
    BadImage { file: String, msg: String },

    #[error("cannot restore pid {pid}: the PID is taken by {holder} (end it, or wait until it is reaped, or restore in a fresh PID namespace with --pidns)")]
    PidTaken { pid: i32, holder: String },

    #[error("cannot restore pid {pid}: {msg}")]
    Restore { pid: i32, msg: String },

    #[error("cannot restore pid {pid}: this CPU {msg}")]
    Cpu { pid: i32, msg: String },

    #[error("lazy pages: {msg}")]
    Lazy { msg: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// An error the restore child already worded in full.
    #[error("{0}")]
    Reported(String),

    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },

    /// The memory of a background snapshot changed in a way the copy cannot
    /// account for (`mem::background`); the tree runs on, untouched.
    #[error("pid {pid}: its memory changed under the background copy ({what})")]
    BackgroundCopy { pid: i32, what: String },

    #[error("interrupted by signal {sig} ({}): stopped, and nothing was left half-done", nix::sys::signal::Signal::try_from(*sig).map(|s| s.as_str()).unwrap_or("?"))]
    Interrupted { sig: i32 },

    /// A failure injected on purpose with `CRTOOL_FAULT` (see `fault`).
    #[error("CRTOOL_FAULT: injected failure at step {step}")]
    Fault { step: u32 },

    /// A SysV IPC object (`object`: "shared memory segment", ...) of the tree.
    #[error("pid {pid}: SysV {object} {id}: {msg}")]
    Ipc { pid: i32, object: &'static str, id: i32, msg: String },
}

/// Fails with `Error::Interrupted` once crtool received SIGINT, SIGTERM, SIGHUP or
/// SIGPIPE (see `sys::signals`): long work calls this at safe points.
pub fn check_interrupt() -> Result<()> {
    match crate::sys::signals::interrupted() {
        Some(sig) => Err(Error::Interrupted { sig }),
        None => Ok(()),
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn sys(what: impl Into<String>, errno: Errno) -> Self {
        Error::Sys { what: what.into(), errno }
    }
    pub fn proc(pid: i32, what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Proc { pid, what: what.into(), source: source.into() }
    }
}

/// Adds the pid and operation to a ptrace-layer errno.
pub trait PtraceCtx<T> {
    fn ptrace(self, pid: nix::unistd::Pid, op: &'static str) -> Result<T>;
}

impl<T> PtraceCtx<T> for std::result::Result<T, Errno> {
    fn ptrace(self, pid: nix::unistd::Pid, op: &'static str) -> Result<T> {
        self.map_err(|errno| Error::Ptrace { pid: pid.as_raw(), op, errno })
    }
}
