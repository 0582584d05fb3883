//! `crtool check`: probes the kernel features crtool relies on, on a real child.

use crate::sys::{cpu, mm, process, ptrace};
use nix::unistd::{ForkResult, fork};

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
    let mm_size = {
        let mut size: u32 = 0;
        // SAFETY: PR_SET_MM_MAP_SIZE only writes the struct size into `size`.
        let r = unsafe { libc::prctl(libc::PR_SET_MM, 15 /* PR_SET_MM_MAP_SIZE */, &mut size as *mut u32, 0, 0) };
        if r == 0 { Ok(format!("struct of {size} bytes")) } else { Err(std::io::Error::last_os_error().to_string()) }
    };
    out.push(probe("prctl(PR_SET_MM_MAP)", mm_size));
    out.push(probe("ptrace on a child (seize, interrupt, regsets, rseq, pidfd_getfd)", ptrace_probe()));
    out
}

fn ptrace_probe() -> Result<String, String> {
    // SAFETY: the child only sleeps and is killed below; crtool is single-threaded here.
    let child = match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => loop {
            // SAFETY: pause(2) in the child until killed.
            unsafe { libc::pause() };
        },
        ForkResult::Parent { child } => child,
    };
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
