//! The SysV IPC and UTS image kinds: round trips, JSON decoding, determinism.

use super::*;
use crate::{decode_to_json, read_entries};
use pb::ipc_entry::Kind;

fn perm(key: i32, mode: u32) -> Option<pb::IpcPerm> {
    Some(pb::IpcPerm { key, uid: 1000, gid: 1000, cuid: 0, cgid: 0, mode })
}

pub fn ipc() -> Vec<pb::IpcEntry> {
    let e = |k| pb::IpcEntry { kind: Some(k) };
    vec![
        e(Kind::Ns(pb::IpcNamespace { own: true, vars: vec![pb::IpcVar { name: "kernel/msgmnb".into(), value: "16384".into() }] })),
        e(Kind::Shm(pb::ShmSegment { id: 32768, perm: perm(0xA11CE, 0o640), size: 20480, removed: false, locked: true, cpid: 7, ctime: 1_700_000_000 })),
        e(Kind::Shm(pb::ShmSegment { id: 5, perm: perm(0, 0o600), size: 12388, removed: true, ..Default::default() })),
        e(Kind::Sem(pb::SemSet { id: 3, perm: perm(0x5E5, 0o600), values: vec![0, 1, 7, 32767] })),
        e(Kind::Msg(pb::MsgQueue {
            id: 4,
            perm: perm(0x3E55, 0o600),
            qbytes: 4000,
            messages: vec![pb::MsgMessage { mtype: 5, text: b"five".to_vec() }, pb::MsgMessage { mtype: 1, text: vec![] }],
        })),
    ]
}

#[test]
fn ipc_kinds_round_trip_and_decode() {
    let dir = TempDir::new();
    let d = dir.path();
    let chunks = vec![pb::ShmChunk { shmid: 32768, offset: 4096, data: vec![7; 4096] }];
    let uts = pb::UtsNamespace { hostname: b"crtool-ipc".to_vec(), domainname: b"crtool.test".to_vec() };
    let first = write_entries(d, ImageKind::Ipc, 0, &ipc()).unwrap();
    write_entries(d, ImageKind::ShmData, 0, &chunks).unwrap();
    write_entries(d, ImageKind::Uts, 0, &[uts.clone()]).unwrap();
    assert_eq!(read_entries::<pb::IpcEntry>(d, ImageKind::Ipc, 0).unwrap(), ipc());
    assert_eq!(read_entries::<pb::ShmChunk>(d, ImageKind::ShmData, 0).unwrap(), chunks);
    assert_eq!(read_entries::<pb::UtsNamespace>(d, ImageKind::Uts, 0).unwrap(), vec![uts]);
    // Deterministic: the same entries give the same bytes.
    assert_eq!(write_entries(d, ImageKind::Ipc, 0, &ipc()).unwrap(), first);

    let j = decode_to_json(&d.join("ipc.img")).unwrap();
    assert_eq!(j["kind"], "ipc");
    assert_eq!(j["entries"][0]["ns"]["own"], true);
    assert_eq!(j["entries"][1]["shm"]["perm"]["key"], 0xA11CE);
    assert_eq!(j["entries"][1]["shm"]["locked"], true);
    assert_eq!(j["entries"][3]["sem"]["values"][3], 32767);
    assert_eq!(j["entries"][4]["msg"]["qbytes"], 4000);
    assert_eq!(j["entries"][4]["msg"]["messages"][0]["mtype"], 5);
    assert!(j["entries"][1].get("msg").is_none(), "only the set oneof member");
    let j = decode_to_json(&d.join("shmdata.img")).unwrap();
    assert_eq!(j["entries"][0]["offset"], 4096);
    let j = decode_to_json(&d.join("uts.img")).unwrap();
    assert_eq!(j["kind"], "uts");
    assert!(j["entries"][0]["hostname"].is_string(), "bytes are base64");
}

#[test]
fn ipc_file_names() {
    assert_eq!(ImageKind::Ipc.file_name(5), "ipc.img");
    assert_eq!(ImageKind::ShmData.file_name(5), "shmdata.img");
    assert_eq!(ImageKind::Uts.file_name(5), "uts.img");
    assert_eq!(ImageKind::parse_file_name("ipc-5.img"), None);
}
