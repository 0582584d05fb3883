//! `sysvipc`: SysV shared memory, semaphores and message queues across a dump.
//!
//!     sysvipc DIR own|host [undo]
//!
//! `own`: run inside an IPC and UTS namespace of the tree's own (the scenario starts
//! it under `unshare -iu`, with host name "crtool-ipc" and domain name
//! "crtool.test"). It first churns ids (objects made and removed) so that the ids
//! it keeps are not those a fresh namespace hands out, then makes:
//! - segment A (key 0xA11CE, 5 pages, 0640): attached by the parent P at ADDR_P
//!   with its second page made read-only (three VMAs), and by the child C at
//!   ADDR_C;
//! - segment B (IPC_PRIVATE, 3 pages + 100 bytes, 0600) attached by P (and C,
//!   inherited) at ADDR_B, then removed with IPC_RMID;
//! - segment L (key 0xC0C0, 2 pages, 0640), not attached, one page written,
//!   SHM_LOCK'ed;
//! - segment D made by `ipcmk` (its id in DIR/ipcmk.id, if any): attached read-only
//!   by P at ADDR_D;
//! - semaphore sets S1 (key 0x5E5, values 0 1 7 32767) and S2 (private, 3);
//! - queues Q1 (key 0x3E55, msg_qbytes 4000, messages of types 1 5 2 5, one
//!   empty) and Q2 (private, empty).
//!
//! `host`: in crtool's IPC namespace, only A and B, both IPC_PRIVATE.
//! `undo`: P also makes a semop with SEM_UNDO on S1 (own namespace).
//!
//! The ids go to DIR/ids ("A B L S1 S2 Q1 Q2"). After SIGUSR1 (to P, which passes
//! it on) both check ids, keys, modes, sizes, nattch, contents, SysV mappings,
//! values, messages in order and the names; then new traffic: P writes into A,
//! C sees it and writes back, P sees that; a semop, a new message. C writes
//! DIR/result.child, P DIR/result.

#[path = "common.rs"]
mod common;

use common::*;

const PAGE: usize = 4096;
const ADDR_P: usize = 0x5a00_0000_0000;
const ADDR_B: usize = 0x5a10_0000_0000;
const ADDR_D: usize = 0x5a20_0000_0000;
const ADDR_C: usize = 0x5b00_0000_0000;
const A_LEN: usize = 5 * PAGE;
const B_LEN: usize = 3 * PAGE + 100;
const L_LEN: usize = 2 * PAGE;
const SEM1: [u16; 4] = [0, 1, 7, 32767];
const QBYTES: u64 = 4000;
const MSG_COPY: i32 = 0o40000;

fn stat_shm(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: IPC_STAT into a zeroed local struct.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        (libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds)
    }
}

fn attach(id: i32, at: usize, flags: i32) -> *mut u8 {
    // SAFETY: shmat at a fixed address nothing else uses.
    let p = unsafe { libc::shmat(id, at as *const _, flags) };
    check(p as usize == at, &format!("shmat({id}, {at:#x})"));
    p as *mut u8
}

fn bytes(at: usize, len: usize) -> &'static mut [u8] {
    // SAFETY: callers pass a live attachment of at least len bytes.
    unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) }
}

fn shm_new(key: i32, len: usize, mode: i32) -> i32 {
    // SAFETY: plain syscall.
    let id = unsafe { libc::shmget(key, len, libc::IPC_CREAT | libc::IPC_EXCL | mode) };
    check(id >= 0, "shmget");
    id
}

/// Makes and removes a few objects of each kind, so that ids are not the first ones.
fn churn() {
    for _ in 0..3 {
        // SAFETY: creating and removing private objects.
        unsafe {
            let s = libc::shmget(libc::IPC_PRIVATE, PAGE, 0o600);
            let m = libc::msgget(libc::IPC_PRIVATE, 0o600);
            let e = libc::semget(libc::IPC_PRIVATE, 1, 0o600);
            check(s >= 0 && m >= 0 && e >= 0, "churn");
            libc::shmctl(s, libc::IPC_RMID, std::ptr::null_mut());
            libc::msgctl(m, libc::IPC_RMID, std::ptr::null_mut());
            libc::semctl(e, 0, libc::IPC_RMID);
        }
    }
}

/// The /proc/self/maps line of the mapping starting at `at`.
fn maps_line(at: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().find(|l| l.starts_with(&format!("{at:x}-"))).unwrap_or("").to_string()
}

fn check_sysv_map(r: &mut Report, who: &str, at: usize, id: i32, perms: &str) {
    let l = maps_line(at);
    let f: Vec<&str> = l.split_whitespace().collect();
    let ok = f.get(1) == Some(&perms) && f.get(4) == Some(&id.to_string().as_str()) && f.get(5).is_some_and(|p| p.starts_with("/SYSV"));
    r.expect(ok, || format!("{who}: the mapping at {at:#x} is {l:?}, expected a SysV attachment of {id} ({perms})"));
}

fn msg_send(q: i32, t: i64, text: &[u8]) -> bool {
    let mut buf = t.to_ne_bytes().to_vec();
    buf.extend_from_slice(text);
    // SAFETY: msgsnd reads a long and text.len() bytes.
    unsafe { libc::msgsnd(q, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) == 0 }
}

fn msg_recv(q: i32, t: i64, flags: i32) -> Option<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + 8192];
    // SAFETY: msgrcv writes a long and at most 8192 bytes.
    let n = unsafe { libc::msgrcv(q, buf.as_mut_ptr().cast(), 8192, t, flags | libc::IPC_NOWAIT) };
    (n >= 0).then(|| (i64::from_ne_bytes(buf[..8].try_into().unwrap()), buf[8..8 + n as usize].to_vec()))
}

fn messages() -> Vec<(i64, Vec<u8>)> {
    vec![(1, b"first".to_vec()), (5, pattern(100, 9)), (2, Vec::new()), (5, b"last five".to_vec())]
}

fn semvals(id: i32, n: usize) -> Vec<u16> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes n values.
    unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) };
    v
}

struct Ids {
    a: i32,
    b: i32,
    l: i32,
    d: i32,
    s1: i32,
    s2: i32,
    q1: i32,
    q2: i32,
}

fn check_shm(r: &mut Report, name: &str, id: i32, key: i32, len: usize, mode: u32, nattch: Option<u64>) {
    match stat_shm(id) {
        None => r.0.push(format!("segment {name} ({id}): IPC_STAT: {}", errno())),
        Some(ds) => {
            let got = (ds.shm_perm.__key, ds.shm_segsz, ds.shm_perm.mode as u32);
            r.expect(got == (key, len, mode), || format!("segment {name} ({id}): key, size, mode {got:?}, expected {:?}", (key, len, mode)));
            if let Some(n) = nattch {
                r.expect(ds.shm_nattch == n, || format!("segment {name} ({id}): nattch {}, expected {n}", ds.shm_nattch));
            }
        }
    }
}

fn main() {
    let (dir, rest) = args();
    let own = rest.first().map(String::as_str) != Some("host");
    block_usr1();
    if own {
        churn();
    }
    let mut ids = Ids { a: 0, b: 0, l: -1, d: -1, s1: -1, s2: -1, q1: -1, q2: -1 };
    let a_key = if own { 0xA11CE } else { libc::IPC_PRIVATE };
    ids.a = shm_new(a_key, A_LEN, 0o640);
    attach(ids.a, ADDR_P, 0);
    fill(bytes(ADDR_P, A_LEN), 1);
    // SAFETY: the second page of our attachment becomes read-only.
    check(unsafe { libc::mprotect((ADDR_P + PAGE) as *mut _, PAGE, libc::PROT_READ) } == 0, "mprotect");
    ids.b = shm_new(libc::IPC_PRIVATE, B_LEN, 0o600);
    attach(ids.b, ADDR_B, 0);
    fill(bytes(ADDR_B, B_LEN), 2);
    // SAFETY: removing B (it stays attached).
    check(unsafe { libc::shmctl(ids.b, libc::IPC_RMID, std::ptr::null_mut()) } == 0, "IPC_RMID");
    if own {
        ids.l = shm_new(0xC0C0, L_LEN, 0o640);
        let p = attach(ids.l, ADDR_D + 0x1000_0000, 0);
        fill(bytes(p as usize, PAGE), 3);
        // SAFETY: detaching and locking our segment.
        unsafe {
            libc::shmdt(p.cast());
            check(libc::shmctl(ids.l, libc::SHM_LOCK, std::ptr::null_mut()) == 0, "SHM_LOCK");
        }
        if let Ok(t) = std::fs::read_to_string(dir.join("ipcmk.id")) {
            ids.d = t.trim().parse().unwrap_or(-1);
            attach(ids.d, ADDR_D, libc::SHM_RDONLY);
        }
        // SAFETY: semaphore sets and queues of our own.
        unsafe {
            ids.s1 = libc::semget(0x5E5, 4, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            ids.s2 = libc::semget(libc::IPC_PRIVATE, 1, 0o640);
            check(ids.s1 >= 0 && ids.s2 >= 0, "semget");
            let mut v = SEM1;
            check(libc::semctl(ids.s1, 0, libc::SETALL, v.as_mut_ptr()) == 0, "SETALL");
            check(libc::semctl(ids.s2, 0, libc::SETVAL, 3) == 0, "SETVAL");
            ids.q1 = libc::msgget(0x3E55, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            ids.q2 = libc::msgget(libc::IPC_PRIVATE, 0o644);
            check(ids.q1 >= 0 && ids.q2 >= 0, "msgget");
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            check(libc::msgctl(ids.q1, libc::IPC_STAT, &mut ds) == 0, "msgctl");
            ds.msg_qbytes = QBYTES;
            check(libc::msgctl(ids.q1, libc::IPC_SET, &mut ds) == 0, "IPC_SET qbytes");
        }
        for (t, m) in messages() {
            check(msg_send(ids.q1, t, &m), "msgsnd");
        }
    }

    if rest.iter().any(|a| a == "undo") {
        // An undo record: what dump must refuse (the kernel cannot report it).
        // SAFETY: semop on our own set.
        let ok = unsafe {
            let mut op = libc::sembuf { sem_num: 2, sem_op: 1, sem_flg: libc::SEM_UNDO as i16 };
            libc::semop(ids.s1, &mut op, 1) == 0
        };
        check(ok, "semop SEM_UNDO");
    }
    let child = fork();
    if child == 0 {
        // SAFETY: dropping the inherited attachment of A (all three VMAs).
        check(unsafe { libc::shmdt(ADDR_P as *const _) } == 0, "shmdt");
        attach(ids.a, ADDR_C, 0);
        wait_usr1();
        let mut r = Report::default();
        check_sysv_map(&mut r, "child", ADDR_C, ids.a, "rw-s");
        check_sysv_map(&mut r, "child", ADDR_B, ids.b, "rw-s");
        let a = bytes(ADDR_C, A_LEN);
        r.expect(first_mismatch(&a[..4 * PAGE], 1).is_none(), || format!("child: segment A differs at {:?}", first_mismatch(&a[..4 * PAGE], 1)));
        // P wrote this after the restore, before it signalled us.
        r.expect(&a[4 * PAGE..4 * PAGE + 6] == b"parent", || format!("child: P's write into A is not seen: {:?}", &a[4 * PAGE..4 * PAGE + 6]));
        a[4 * PAGE + 8..4 * PAGE + 13].copy_from_slice(b"child");
        r.expect(first_mismatch(&bytes(ADDR_B, B_LEN)[..B_LEN], 2).is_none(), || "child: segment B differs".into());
        std::process::exit(r.write(&dir.join("result.child")));
    }
    // Wait until the child attached A at its address.
    check(wait_for(5000, || maps_line_of(child, ADDR_C)), "the child's attachment");
    let nattch_a = stat_shm(ids.a).map(|d| d.shm_nattch).unwrap_or(0);
    let nattch_b = stat_shm(ids.b).map(|d| d.shm_nattch).unwrap_or(0);
    write_file(&dir.join("ids"), &format!("{} {} {} {} {} {} {}\n", ids.a, ids.b, ids.l, ids.s1, ids.s2, ids.q1, ids.q2));
    write_file(&dir.join("ready"), &format!("{child}\n"));

    wait_usr1();
    let mut r = Report::default();
    check_sysv_map(&mut r, "parent", ADDR_P, ids.a, "rw-s");
    check_sysv_map(&mut r, "parent", ADDR_P + PAGE, ids.a, "r--s");
    check_sysv_map(&mut r, "parent", ADDR_P + 2 * PAGE, ids.a, "rw-s");
    check_sysv_map(&mut r, "parent", ADDR_B, ids.b, "rw-s");
    check_shm(&mut r, "A", ids.a, a_key, A_LEN, 0o640, Some(nattch_a));
    check_shm(&mut r, "B", ids.b, 0, B_LEN, 0o600 | 0o1000, Some(nattch_b));
    let a = bytes(ADDR_P, A_LEN);
    r.expect(first_mismatch(a, 1).is_none(), || format!("segment A differs at {:?}", first_mismatch(a, 1)));
    r.expect(first_mismatch(&bytes(ADDR_B, B_LEN)[..B_LEN], 2).is_none(), || "segment B differs".into());
    if own {
        check_shm(&mut r, "L", ids.l, 0xC0C0, L_LEN, 0o640 | 0o2000, Some(0));
        let p = attach(ids.l, ADDR_D + 0x1000_0000, libc::SHM_RDONLY);
        let l = bytes(p as usize, L_LEN);
        r.expect(first_mismatch(&l[..PAGE], 3).is_none() && l[PAGE..].iter().all(|&b| b == 0), || "segment L differs".into());
        if ids.d >= 0 {
            check_sysv_map(&mut r, "parent", ADDR_D, ids.d, "r--s");
            match stat_shm(ids.d) {
                Some(ds) => r.expect(ds.shm_perm.cuid == 0 && ds.shm_perm.mode & 0o777 == 0o666, || format!("ipcmk's segment: cuid {} mode {:o}", ds.shm_perm.cuid, ds.shm_perm.mode)),
                None => r.0.push(format!("ipcmk's segment {}: {}", ids.d, errno())),
            }
        }
        // SAFETY: plain syscalls with our own objects.
        let (s1, q1) = unsafe { (libc::semget(0x5E5, 0, 0), libc::msgget(0x3E55, 0)) };
        r.expect(s1 == ids.s1 && q1 == ids.q1, || format!("keys lead to semaphore set {s1} and queue {q1}, expected {} and {}", ids.s1, ids.q1));
        r.expect(semvals(ids.s1, 4) == SEM1, || format!("S1 values {:?}, expected {SEM1:?}", semvals(ids.s1, 4)));
        r.expect(semvals(ids.s2, 1) == [3], || format!("S2 values {:?}", semvals(ids.s2, 1)));
        // SAFETY: IPC_STAT into a zeroed local struct.
        let ds = unsafe {
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            libc::msgctl(ids.q1, libc::IPC_STAT, &mut ds);
            ds
        };
        r.expect(ds.msg_qbytes == QBYTES && ds.msg_qnum == 4 && ds.msg_perm.mode & 0o777 == 0o600, || format!("Q1: qbytes {} qnum {} mode {:o}", ds.msg_qbytes, ds.msg_qnum, ds.msg_perm.mode));
        let copy = msg_recv(ids.q1, 3, MSG_COPY);
        r.expect(copy.as_ref().is_some_and(|m| m.0 == 5 && m.1 == b"last five"), || format!("Q1: MSG_COPY of message 3: {copy:?}"));
        let m = messages();
        let want = [m[1].clone(), m[0].clone(), m[2].clone(), m[3].clone()];
        let got: Vec<_> = [5, 0, 0, 0].iter().map(|&t| msg_recv(ids.q1, t, 0)).collect();
        r.expect(got.iter().zip(want.iter()).all(|(g, w)| g.as_ref() == Some(w)), || format!("Q1 messages: {got:?}"));
        r.expect(msg_recv(ids.q1, 0, 0).is_none() && msg_recv(ids.q2, 0, 0).is_none(), || "more messages than sent".into());
        r.expect(msg_send(ids.q1, 7, b"new") && msg_recv(ids.q1, 0, 0) == Some((7, b"new".to_vec())), || "Q1: a new message does not go through".into());
        // SAFETY: semop on our own set, without SEM_UNDO.
        let (ok, busy) = unsafe {
            let mut op = libc::sembuf { sem_num: 1, sem_op: -1, sem_flg: libc::IPC_NOWAIT as i16 };
            let ok = libc::semop(ids.s1, &mut op, 1) == 0;
            let mut op0 = libc::sembuf { sem_num: 0, sem_op: -1, sem_flg: libc::IPC_NOWAIT as i16 };
            (ok, libc::semop(ids.s1, &mut op0, 1) == -1 && errno().raw_os_error() == Some(libc::EAGAIN))
        };
        r.expect(ok && busy && semvals(ids.s1, 4) == [0, 0, 7, 32767], || format!("S1 after semop: {:?}", semvals(ids.s1, 4)));
        let u = uname();
        r.expect(u == ("crtool-ipc".to_string(), "crtool.test".to_string()), || format!("host and domain name {u:?}"));
    }
    // New traffic through A: P writes, C checks it and writes back.
    a[4 * PAGE..4 * PAGE + 6].copy_from_slice(b"parent");
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    r.child_verdict(child, &dir.join("result.child"));
    r.expect(&a[4 * PAGE + 8..4 * PAGE + 13] == b"child", || format!("the child's write into A is not seen: {:?}", &a[4 * PAGE + 8..4 * PAGE + 13]));
    std::process::exit(r.write(&dir.join("result")));
}

fn maps_line_of(pid: i32, at: usize) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().any(|l| l.starts_with(&format!("{at:x}-")))
}

fn uname() -> (String, String) {
    // SAFETY: uname into a zeroed local struct.
    let u = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        u
    };
    let s = |f: &[libc::c_char]| f.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect::<String>();
    (s(&u.nodename), s(&u.domainname))
}
