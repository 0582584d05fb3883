//! POSIX timers (timer_create): ids, clocks and notification from /proc/PID/timers,
//! values from timer_gettime in the task; recreated with their ids by the restorer.

use crate::error::{Error, Result};
use crate::infect::Tracee;
use crate::sys::abi::TimerArgs;
use crate::sys::process::read_remote;
use images_format::pb;

/// Parses /proc/PID/timers (without values).
pub fn list(pid: i32) -> Result<Vec<pb::PosixTimer>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).map_err(|e| Error::proc(pid, "timers", e))?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Vec<pb::PosixTimer> {
    let mut out: Vec<pb::PosixTimer> = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once(':').map(|(k, v)| (k.trim(), v.trim())).unwrap_or(("", ""));
        match k {
            "ID" => out.push(pb::PosixTimer { id: v.parse().unwrap_or(-1), ..Default::default() }),
            "signal" => {
                if let (Some(t), Some((sig, val))) = (out.last_mut(), v.split_once('/')) {
                    t.signo = sig.parse().unwrap_or(0);
                    t.sigev_value = u64::from_str_radix(val.trim_start_matches("0x"), 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((how, who))) = (out.last_mut(), v.split_once('/')) {
                    let base = match how { "signal" => 0, "none" => 1, "thread" => 2, _ => 0 };
                    let (kind, id) = who.split_once('.').unwrap_or(("pid", "0"));
                    t.notify = base | if kind == "tid" { 4 } else { 0 };
                    t.notify_tid = if kind == "tid" { id.parse().unwrap_or(0) } else { 0 };
                }
            }
            "ClockID" => {
                if let Some(t) = out.last_mut() {
                    t.clock = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    out.sort_by_key(|t| t.id);
    out
}

/// Reads each timer's interval, remaining time and overrun with remote syscalls.
pub fn read_values(t: &Tracee, timers: &mut [pb::PosixTimer], scratch: u64) -> Result<()> {
    for timer in timers.iter_mut() {
        t.syscall_ok("timer_gettime", libc::SYS_timer_gettime, &[timer.id as u64, scratch])?;
        let mut b = [0u8; 32];
        read_remote(t.pid, scratch, &mut b).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "process_vm_readv", errno: e })?;
        let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()) as u64;
        timer.interval_ns = w(0) * 1_000_000_000 + w(1);
        timer.value_ns = w(2) * 1_000_000_000 + w(3);
        timer.overrun = t.syscall_ok("timer_getoverrun", libc::SYS_timer_getoverrun, &[timer.id as u64])? as i32;
    }
    Ok(())
}

/// The restorer's arguments for timer `t`; `pending`: its signal was queued at dump
/// (the timer fires again at once instead of the siginfo being queued by hand).
pub fn to_args(t: &pb::PosixTimer, pending: bool) -> TimerArgs {
    let split = |ns: u64| ((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64);
    let (is, ins) = split(t.interval_ns);
    let (vs, vns) = split(t.value_ns);
    // A disarmed timer keeps value 0; an armed one that is due right now must still
    // fire, so give it the smallest positive value.
    let (vs, vns) = if t.value_ns == 0 && t.interval_ns != 0 { (0, 1) } else { (vs, vns) };
    TimerArgs {
        id: t.id,
        clock: t.clock,
        signo: t.signo,
        notify: t.notify,
        notify_tid: t.notify_tid,
        pending: pending as i32,
        sigev_value: t.sigev_value,
        interval_sec: is,
        interval_nsec: ins,
        value_sec: vs,
        value_nsec: vns,
    }
}

/// SI_TIMER siginfos in `queue`: the timer ids whose signal is pending. They are not
/// queued again by hand: a restored timer re-fires for its own (see `to_args`), and
/// the signal of a deleted timer is dropped by the kernel at delivery anyway.
pub fn pending_timer_ids<'a>(queue: impl Iterator<Item = &'a Vec<u8>>) -> Vec<i32> {
    queue.filter(|si| is_timer_signal(si)).filter_map(|si| si.get(16..20).map(|b| i32::from_le_bytes(b.try_into().unwrap()))).collect()
}

/// Whether a raw siginfo was sent by a POSIX timer (si_code SI_TIMER).
pub fn is_timer_signal(si: &[u8]) -> bool {
    si.get(8..12).map(|b| i32::from_le_bytes(b.try_into().unwrap())) == Some(-2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 2\nsignal: 34/00000000deadbeef\nnotify: thread/tid.17\nClockID: 1\n\
                    ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.12\nClockID: 0\n\
                    ID: 1\nsignal: 0/0000000000000000\nnotify: none/pid.12\nClockID: 7\n";
        let t = parse(text);
        assert_eq!(t.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((t[0].signo, t[0].notify, t[0].clock, t[0].notify_tid), (14, 0, 0, 0));
        assert_eq!((t[1].notify, t[1].clock), (1, 7));
        assert_eq!((t[2].signo, t[2].notify, t[2].notify_tid, t[2].sigev_value), (34, 2 | 4, 17, 0xdeadbeef));
    }

    #[test]
    fn armed_timer_due_now_still_fires() {
        let t = pb::PosixTimer { id: 1, interval_ns: 5, value_ns: 0, ..Default::default() };
        let a = to_args(&t, false);
        assert_eq!((a.value_sec, a.value_nsec, a.interval_nsec), (0, 1, 5));
        let off = pb::PosixTimer { id: 2, ..Default::default() };
        assert_eq!(to_args(&off, false).value_nsec, 0, "a disarmed timer stays disarmed");
    }
}
