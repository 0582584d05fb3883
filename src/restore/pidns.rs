//! `crtool restore --pidns`: the tree is restored into a PID namespace (and mount
//! namespace, with its own /proc) that crtool creates, under a minimal init that
//! outlives crtool. The same checkpoint can so be restored several times side by
//! side, each copy with the PIDs it had, whatever runs on the host.
//!
//! The init is a fork of crtool that forks the tree's root (with its PID, inside
//! the namespace) and then replaces itself with `crtool __pidns-init`: it reaps
//! whatever ends in the namespace, passes SIGINT/SIGTERM/SIGHUP on to the root, and
//! exits, with the root's status, once nothing is left.

use crate::error::{Error, Result};
use crate::sys::process::{Forked, fork_with_pids};
use std::time::{Duration, Instant};

/// What `fork_root` returned in this process.
pub enum Root {
    /// This process is the tree's root (inside the new namespace).
    Child,
    /// crtool: the init's and the root's PIDs as crtool sees them.
    Parent { init: i32, root: i32 },
}

/// Forks the init of a new PID and mount namespace, which forks the root with PID
/// `root_pid`. Only the root and crtool return.
pub fn fork_root(root_pid: i32) -> Result<Root> {
    let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    let fail = |msg: String| Error::Restore { pid: root_pid, msg };
    match fork_with_pids(&[], flags).map_err(|e| fail(format!("creating the PID namespace: {e}")))? {
        Forked::Child => {
            // The init: its own /proc, then the root, then a small program.
            if super::child::remount_proc().is_err() {
                crate::sys::process::exit_now(125);
            }
            match fork_with_pids(&[root_pid], 0) {
                Ok(Forked::Child) => return Ok(Root::Child),
                Ok(Forked::Parent(_)) => {}
                Err(_) => crate::sys::process::exit_now(125),
            }
            exec_init(root_pid)
        }
        Forked::Parent(init) => {
            let init = init.as_raw();
            // The root is the init's only child: wait until it shows.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let kids = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
                if let Some(root) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    return Ok(Root::Parent { init, root });
                }
                if Instant::now() > deadline || !std::path::Path::new(&format!("/proc/{init}")).exists() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::Signal::SIGKILL);
                    return Err(fail("the new PID namespace's init did not start the root".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Replaces the init (a fork of crtool) with `crtool __pidns-init ROOT`, stdio on
/// /dev/null (it must not hold crtool's terminal or pipes).
fn exec_init(root_pid: i32) -> ! {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/proc/self/exe")
        .arg0("crtool")
        .arg("__pidns-init")
        .arg(root_pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .exec();
    let _ = err;
    crate::sys::process::exit_now(126)
}

/// The init's loop: reaps every process that ends in the namespace, passes the
/// interrupting signals on to the root, and ends once none is left, with the root's
/// exit status (or 128 + the signal that killed it).
pub fn init_loop(root_pid: i32) -> i32 {
    crate::sys::signals::catch_interrupts();
    let mut code = 0;
    loop {
        match crate::sys::ptrace::wait_for(-1) {
            Ok((pid, crate::sys::ptrace::Stop::Exited(c))) if pid.as_raw() == root_pid => code = c,
            Ok((pid, crate::sys::ptrace::Stop::Killed(s))) if pid.as_raw() == root_pid => code = 128 + s,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {
                if let Some(sig) = crate::sys::signals::take().filter(|&s| s != libc::SIGPIPE) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(root_pid), nix::sys::signal::Signal::try_from(sig).ok());
                }
            }
            Err(_) => return code, // ECHILD: nothing left
        }
    }
}
