//! SysV IPC system calls (shm, sem, msg) and the UTS domain name as safe functions.
//! Everything acts in the calling thread's IPC namespace.

use nix::errno::Errno;

/// What IPC_STAT tells about any object: key, owner, creator, mode (with the
/// SHM_DEST/SHM_LOCKED bits for segments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

fn perm(p: &libc::ipc_perm) -> Perm {
    Perm { key: p.__key, uid: p.uid, gid: p.gid, cuid: p.cuid, cgid: p.cgid, mode: p.mode as u32 }
}

fn set_perm(p: &mut libc::ipc_perm, uid: u32, gid: u32, mode: u32) {
    p.uid = uid;
    p.gid = gid;
    p.mode = (mode & 0o777) as _;
}

/// A shared memory segment as IPC_STAT reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShmInfo {
    pub perm: Perm,
    pub size: u64,
    pub nattch: u64,
    pub cpid: i32,
    pub ctime: i64,
}

/// SHM_DEST: the segment was removed (IPC_RMID) and goes with its last attachment.
pub const SHM_DEST: u32 = 0o1000;
/// SHM_LOCKED: shmctl(SHM_LOCK) keeps its pages in memory.
pub const SHM_LOCKED: u32 = 0o2000;
/// shmat(2) flag: an executable attachment.
pub const SHM_EXEC: i32 = 0o100000;

pub fn shm_stat(id: i32) -> Result<ShmInfo, Errno> {
    // SAFETY: a zeroed plain C struct is a valid shmid_ds.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ShmInfo { perm: perm(&ds.shm_perm), size: ds.shm_segsz as u64, nattch: ds.shm_nattch, cpid: ds.shm_cpid, ctime: ds.shm_ctime })
}

/// shmget(2).
pub fn shm_get(key: i32, size: u64, flags: i32) -> Result<i32, Errno> {
    // SAFETY: plain syscall, no memory passed.
    Errno::result(unsafe { libc::shmget(key, size as usize, flags) })
}

/// IPC_SET of owner and mode.
pub fn shm_set(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: a zeroed plain C struct is a valid shmid_ds.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    set_perm(&mut ds.shm_perm, uid, gid, mode);
    // SAFETY: IPC_SET reads one shmid_ds.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// shmctl(IPC_RMID), SHM_LOCK or SHM_UNLOCK: commands without a buffer.
pub fn shm_ctl(id: i32, cmd: i32) -> Result<(), Errno> {
    // SAFETY: these commands ignore the buffer.
    Errno::result(unsafe { libc::shmctl(id, cmd, std::ptr::null_mut()) }).map(drop)
}

/// An attachment of a whole segment in crtool's own address space, detached when
/// dropped.
pub struct ShmAttachment {
    addr: u64,
    len: u64,
    writable: bool,
}

impl ShmAttachment {
    /// Attaches segment `id` (`len` bytes, its size) wherever the kernel puts it.
    pub fn new(id: i32, len: u64, writable: bool) -> Result<ShmAttachment, Errno> {
        // SAFETY: a new attachment at a kernel-chosen address touches nothing existing.
        let r = unsafe { libc::shmat(id, std::ptr::null(), if writable { 0 } else { libc::SHM_RDONLY }) };
        if r as isize == -1 {
            return Err(Errno::last());
        }
        Ok(ShmAttachment { addr: r as u64, len, writable })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the attachment covers `len` readable bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len as usize) }
    }

    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as `bytes`, writable, borrowed mutably.
        self.writable.then(|| unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len as usize) })
    }

    /// Which pages are in memory (mincore(2)), without faulting any in.
    pub fn resident(&self) -> Result<Vec<bool>, Errno> {
        let pages = self.len.div_ceil(super::mm::PAGE) as usize;
        let mut v = vec![0u8; pages];
        // SAFETY: mincore writes one byte per page of our own attachment into `v`.
        Errno::result(unsafe { libc::mincore(self.addr as *mut _, self.len as usize, v.as_mut_ptr()) })?;
        Ok(v.into_iter().map(|b| b & 1 != 0).collect())
    }
}

impl Drop for ShmAttachment {
    fn drop(&mut self) {
        // SAFETY: no borrow of the attachment outlives `self`.
        unsafe { libc::shmdt(self.addr as *const _) };
    }
}

/// A semaphore set as IPC_STAT reports it.
pub fn sem_stat(id: i32) -> Result<(Perm, u64), Errno> {
    // SAFETY: a zeroed plain C struct is a valid semid_ds.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds through the pointer argument.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) })?;
    Ok((perm(&ds.sem_perm), ds.sem_nsems as u64))
}

pub fn sem_get(key: i32, nsems: i32, flags: i32) -> Result<i32, Errno> {
    // SAFETY: plain syscall.
    Errno::result(unsafe { libc::semget(key, nsems, flags) })
}

pub fn sem_getall(id: i32, nsems: usize) -> Result<Vec<u16>, Errno> {
    let mut v = vec![0u16; nsems];
    // SAFETY: GETALL writes nsems values into `v`.
    Errno::result(unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) })?;
    Ok(v)
}

pub fn sem_setall(id: i32, values: &[u16]) -> Result<(), Errno> {
    let mut v = values.to_vec();
    // SAFETY: SETALL reads nsems values (the set was made with values.len()).
    Errno::result(unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) }).map(drop)
}

pub fn sem_set(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: a zeroed plain C struct is a valid semid_ds.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    set_perm(&mut ds.sem_perm, uid, gid, mode);
    // SAFETY: IPC_SET reads one semid_ds.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }).map(drop)
}

pub fn sem_rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_RMID) }).map(drop)
}

/// A message queue as IPC_STAT reports it: perm, qbytes, cbytes, qnum.
pub fn msg_stat(id: i32) -> Result<(Perm, u64, u64, u64), Errno> {
    // SAFETY: a zeroed plain C struct is a valid msqid_ds.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok((perm(&ds.msg_perm), ds.msg_qbytes, ds.__msg_cbytes, ds.msg_qnum))
}

pub fn msg_get(key: i32, flags: i32) -> Result<i32, Errno> {
    // SAFETY: plain syscall.
    Errno::result(unsafe { libc::msgget(key, flags) })
}

pub fn msg_set(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<(), Errno> {
    // SAFETY: a zeroed plain C struct is a valid msqid_ds.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    set_perm(&mut ds.msg_perm, uid, gid, mode);
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads one msqid_ds.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

pub fn msg_rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

const MSG_COPY: i32 = 0o40000;

/// A copy of message number `index` of queue `id` (MSG_COPY: the queue is left as
/// it is), at most `max` bytes: (type, text). None past the last message.
pub fn msg_copy(id: i32, index: usize, max: usize) -> Result<Option<(i64, Vec<u8>)>, Errno> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: msgrcv writes a long and at most `max` bytes into `buf`.
    let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr() as *mut _, max, index as i64, MSG_COPY | libc::IPC_NOWAIT) };
    if n < 0 {
        return match Errno::last() {
            Errno::ENOMSG => Ok(None),
            e => Err(e),
        };
    }
    let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
    Ok(Some((mtype, buf[8..8 + n as usize].to_vec())))
}

/// msgsnd(2) without blocking.
pub fn msg_send(id: i32, mtype: i64, text: &[u8]) -> Result<(), Errno> {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(text);
    // SAFETY: msgsnd reads a long and text.len() bytes from `buf`.
    Errno::result(unsafe { libc::msgsnd(id, buf.as_ptr() as *const _, text.len(), libc::IPC_NOWAIT) }).map(drop)
}

/// setdomainname(2) (the UTS namespace's NIS domain name).
pub fn set_domainname(name: &[u8]) -> Result<(), Errno> {
    // SAFETY: the kernel reads name.len() bytes.
    Errno::result(unsafe { libc::setdomainname(name.as_ptr() as *const _, name.len()) }).map(drop)
}

/// sethostname(2) (the UTS namespace's host name).
pub fn set_hostname(name: &[u8]) -> Result<(), Errno> {
    // SAFETY: the kernel reads name.len() bytes.
    Errno::result(unsafe { libc::sethostname(name.as_ptr() as *const _, name.len()) }).map(drop)
}
