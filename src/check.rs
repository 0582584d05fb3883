//! `crtool check`: probes the kernel features crtool relies on, on a real child.

use crate::sys::{cpu, mm, process, ptrace};

pub struct Probe {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn probe(name: &'static str, r: Result<String, String>) -> Probe {
    match r {
        Ok(detail) => Probe { name, ok: true, detail },
        Err(detail) => Probe { name, ok: false, detail },
    }
}

pub fn check() -> Vec<Probe> {
    let mut out = Vec::new();
    out.push(probe("vdso syscall instruction", mm::vdso_syscall_offset().map(|o| format!("at vdso+{o:#x}")).ok_or("not found".into())));
    let x = cpu::xcr0();
    out.push(probe("XSAVE", if x != 0 { Ok(format!("xcr0 {x:#x}, area {} bytes", cpu::xsave_size())) } else { Err("XSAVE not enabled".into()) }));
    let g = cpu::sigframe_xstate();
    out.push(probe("signal frame XSAVE geometry", if g.xstate_size > 0 { Ok(format!("{} bytes, features {:#x}", g.xstate_size, g.xfeatures)) } else { Err("no fx_sw_bytes in the signal frame".into()) }));
    out.push(probe("pagemap PFNs (zero page detection)", mm::zero_pfn().map(|p| format!("zero pfn {p:#x}")).ok_or("no PFNs in pagemap".into())));
    let mm_size = process::mm_map_size().map(|s| format!("struct of {s} bytes")).map_err(|e| e.to_string());
    out.push(probe("prctl(PR_SET_MM_MAP)", mm_size));
    // Asking for a PID that is surely taken (1) must fail with EEXIST, which proves
    // clone3 understands set_tid and that we may use it, without creating a process.
    let set_tid = match process::fork_with_pids(&[1], 0) {
        Err(nix::errno::Errno::EEXIST) => Ok("exact PIDs available".to_string()),
        Err(e) => Err(format!("{e} (needs Linux 5.5+ and CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)")),
        Ok(process::Forked::Child) => process::exit_now(0),
        Ok(process::Forked::Parent(_)) => Err("PID 1 was free?".into()),
    };
    out.push(probe("clone3 with set_tid", set_tid));
    out.push(probe("ptrace on a child (seize, interrupt, regsets, rseq, pidfd_getfd)", ptrace_probe()));
    out
}

fn ptrace_probe() -> Result<String, String> {
    let child = process::fork_idle_child().map_err(|e| format!("fork: {e}"))?;
    let res = (|| -> Result<String, String> {
        ptrace::seize(child, true).map_err(|e| format!("PTRACE_SEIZE: {e}"))?;
        ptrace::interrupt(child).map_err(|e| format!("PTRACE_INTERRUPT: {e}"))?;
        ptrace::wait(child, false).map_err(|e| e.to_string())?;
        let x = ptrace::get_xstate(child, cpu::xsave_size()).map_err(|e| format!("NT_X86_XSTATE: {e}"))?;
        ptrace::get_sigmask(child).map_err(|e| format!("PTRACE_GETSIGMASK: {e}"))?;
        let r = ptrace::get_rseq(child).map_err(|e| format!("PTRACE_GET_RSEQ_CONFIGURATION: {e}"))?;
        let pidfd = process::pidfd_open(child).map_err(|e| format!("pidfd_open: {e}"))?;
        process::pidfd_getfd(&pidfd, 0).map_err(|e| format!("pidfd_getfd: {e}"))?;
        Ok(format!("xstate {} bytes, rseq len {}", x.len(), r.rseq_abi_size))
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    res
}
