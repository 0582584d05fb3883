//! eventfd, signalfd, timerfd and epoll by raw syscalls (eventfd(2), signalfd(2),
//! timerfd_create(2), epoll_ctl(2)), with what nix does not cover (TFD_IOC_SET_TICKS).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `_IOW('T', 0, u64)`: sets a timerfd's count of unread expirations
/// (fs/timerfd.c, CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

fn owned(r: libc::c_int) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(r)?;
    // SAFETY: the syscall just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// eventfd(count, flags) (EFD_CLOEXEC is added; counts above u32 are set by a write).
pub fn eventfd(count: u64, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let fd = owned(unsafe { libc::eventfd(0, flags | libc::EFD_CLOEXEC) })?;
    if count > 0 {
        let b = count.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer.
        Errno::result(unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 8) })?;
    }
    Ok(fd)
}

/// signalfd(-1, mask, flags) for the signals of `mask` (bit N-1 = signal N).
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd, Errno> {
    // The kernel's sigset_t is one u64 on x86-64 (sizemask 8).
    // SAFETY: raw syscall reading 8 bytes of `mask`.
    owned(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &raw const mask, 8usize, flags | libc::SFD_CLOEXEC) } as libc::c_int)
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

/// timerfd_create(clockid, flags) armed with `value`/`interval` (ns; relative, or
/// absolute with `settime_flags` TFD_TIMER_ABSTIME) and `ticks` unread expirations.
pub fn timerfd(clockid: i32, flags: i32, settime_flags: i32, value_ns: u64, interval_ns: u64, ticks: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let fd = owned(unsafe { libc::timerfd_create(clockid, flags | libc::TFD_CLOEXEC) })?;
    if value_ns > 0 {
        let spec = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(value_ns) };
        // SAFETY: `spec` is a valid itimerspec; no old value is asked for.
        Errno::result(unsafe { libc::timerfd_settime(fd.as_raw_fd(), settime_flags, &spec, std::ptr::null_mut()) })?;
    }
    // After settime, which resets the count.
    if ticks > 0 {
        // SAFETY: the ioctl reads one u64 from `ticks`.
        Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &raw const ticks) })?;
    }
    Ok(fd)
}

/// clock_gettime(clockid) in nanoseconds.
pub fn clock_ns(clockid: i32) -> Result<i64, Errno> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    Errno::result(unsafe { libc::clock_gettime(clockid, &mut t) })?;
    Ok(t.tv_sec * 1_000_000_000 + t.tv_nsec)
}

/// epoll_create1(flags) (EPOLL_CLOEXEC added).
pub fn epoll_create(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall.
    owned(unsafe { libc::epoll_create1(flags | libc::EPOLL_CLOEXEC) })
}

/// epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data}).
pub fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call.
    Errno::result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// timerfd_gettime(2), for its effect: a periodic timer that has expired is moved
/// to its next period and its missed periods added to the unread count, as the
/// task's own next read or gettime would do (fs/timerfd.c timerfd_gettime), so
/// that fdinfo then shows when it fires next.
pub fn timerfd_settle(fd: RawFd) -> Result<(), Errno> {
    let mut cur = libc::itimerspec { it_interval: ts(0), it_value: ts(0) };
    // SAFETY: writes one itimerspec.
    Errno::result(unsafe { libc::timerfd_gettime(fd, &mut cur) }).map(drop)
}

/// inotify_init1(flags) (IN_CLOEXEC added).
pub fn inotify_init(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall.
    owned(unsafe { libc::inotify_init1(flags | libc::IN_CLOEXEC) })
}

/// inotify_add_watch(fd, path, mask): the watch descriptor.
pub fn inotify_add(fd: RawFd, path: &str, mask: u32) -> Result<i32, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string for the call.
    Errno::result(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) })
}

/// inotify_rm_watch(fd, wd).
pub fn inotify_rm(fd: RawFd, wd: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall.
    Errno::result(unsafe { libc::inotify_rm_watch(fd, wd) }).map(drop)
}

/// Bytes waiting to be read (ioctl FIONREAD).
pub fn pending_bytes(fd: RawFd) -> Result<i32, Errno> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    Errno::result(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n)
}

/// open_by_handle_at(mount_fd, handle, O_PATH): the file a handle names.
pub fn open_by_handle(mount_fd: RawFd, handle_type: i32, handle: &[u8]) -> Result<OwnedFd, Errno> {
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: `buf` holds a complete struct file_handle for the call.
    owned(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) } as libc::c_int)
}

/// epoll_wait(epfd, ..., timeout 0): how many events were ready (and reported).
pub fn epoll_wait_now(epfd: RawFd) -> Result<usize, Errno> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    // SAFETY: the kernel writes at most 64 events into `evs`.
    Errno::result(unsafe { libc::epoll_wait(epfd, evs.as_mut_ptr(), 64, 0) }).map(|n| n as usize)
}

/// fanotify_init(flags, event_f_flags).
pub fn fanotify_init(flags: u32, event_flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    owned(unsafe { libc::fanotify_init(flags, event_flags) })
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path).
pub fn fanotify_mark(fd: RawFd, flags: u32, mask: u64, path: &str) -> Result<(), Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string for the call.
    Errno::result(unsafe { libc::fanotify_mark(fd, flags, mask, libc::AT_FDCWD, c.as_ptr()) }).map(drop)
}
