//! Schema-driven JSON decoding of every kind.

use serde_json::{Value, json};

use super::*;
use crate::decode_to_json;

fn decode(dir: &std::path::Path, kind: ImageKind, pid: u32) -> Value {
    let v = decode_to_json(&dir.join(kind.file_name(pid))).unwrap();
    assert_eq!(v["kind"], kind.name());
    assert_eq!(v["version"], crate::FORMAT_VERSION);
    assert_eq!(v["magic"], format!("{:#010x}", kind.magic()));
    v
}

#[test]
fn every_kind_decodes_to_json() {
    let dir = TempDir::new();
    let d = dir.path();
    write_image_set(d, Compression::Zstd);

    let inv = decode(d, ImageKind::Inventory, 0);
    let mut e = inv["entries"][0].clone();
    let files = e.as_object_mut().unwrap().remove("files").unwrap();
    assert_eq!(
        e,
        json!({"format_version": 1, "root_pid": 42, "page_compression": 1, "pids": [42, 43],
                "new_pid_ns": true, "new_mount_ns": false, "outer_pids": [4242, 4243],
                "new_ipc_ns": false, "new_uts_ns": false, "remote_pages": false, "lazy_pages": false})
    );
    assert_eq!(files.as_array().unwrap().len(), 8, "the manifest lists every file but the inventory: {files}");
    assert_eq!(files[0]["name"], "core-42.img");

    let ps = decode(d, ImageKind::Pstree, 0);
    assert_eq!(
        ps["entries"][1],
        json!({"pid": 43, "ppid": 42, "pgid": 42, "sid": 42, "threads": [43], "zombie": false, "exit_status": 0, "comm": "", "uids": [], "gids": [], "exit_signal": 0})
    );

    let core = decode(d, ImageKind::Core, PID);
    let e = &core["entries"][0];
    assert_eq!(e["comm"], "memstate");
    assert_eq!(e["threads"][1]["tid"], 44);
    assert_eq!(e["threads"][0]["regs"]["rip"], 0x40_1000);
    assert_eq!(
        e["threads"][0]["regs"]["rax"],
        u64::MAX,
        "64-bit integers stay numbers"
    );
    assert_eq!(
        e["threads"][0]["regs"]["r15"], 0,
        "default fields are present"
    );
    assert_eq!(e["threads"][0]["fpu"]["layout"][0]["offset"], 576);
    assert!(
        e["threads"][0]["fpu"]["xsave"].is_string(),
        "bytes are base64"
    );
    assert_eq!(e["creds"]["groups"], json!([4, 27]));
    assert_eq!(e["sigactions"][0]["handler"], 0x40_3000);
    assert_eq!(e["umask"], 0o22);

    let mm = decode(d, ImageKind::Mm, PID);
    let vmas = &mm["entries"][0]["vmas"];
    assert_eq!(vmas[0]["kind"], "VMA_FILE_PRIVATE");
    assert_eq!(vmas[1]["kind"], "VMA_ANON_PRIVATE");
    assert_eq!(vmas[2]["growsdown"], true);
    assert_eq!(vmas[3]["path"], "[vdso]");
    assert_eq!(mm["entries"][0]["exe"], "/usr/bin/memstate");

    let map = decode(d, ImageKind::Pagemap, PID);
    assert_eq!(map["entries"].as_array().unwrap().len(), 2);
    assert_eq!(map["entries"][0]["vaddr"], 0x60_0000);
    assert_eq!(map["entries"][0]["offset"], 4096);
    assert_eq!(map["entries"][1]["nr_pages"], 1);

    let fds = decode(d, ImageKind::Fdinfo, PID);
    assert_eq!(
        fds["entries"][2],
        json!({"fd": 3, "file_id": 2, "cloexec": true, "locks": [{"kind": 1, "write": true, "start": 5, "end": 14, "to_eof": false}]})
    );

    let files = decode(d, ImageKind::Files, 0);
    assert_eq!(files["entries"][0]["chr"]["path"], "/dev/null");
    assert_eq!(files["entries"][2]["pipe"]["pipe_id"], 555);
    assert_eq!(files["entries"][3]["fifo"]["path"], "/tmp/fifo");

    let pipes = decode(d, ImageKind::Pipes, 0);
    assert_eq!(pipes["entries"][0]["pipe_id"], 555);
    assert_eq!(pipes["entries"][0]["capacity"], 65536);
    assert!(pipes["entries"][0]["data"].is_string(), "bytes are base64");
    assert_eq!(files["entries"][1]["id"], 2);
    assert_eq!(files["entries"][1]["reg"]["pos"], 77);
    assert!(
        files["entries"][1].get("chr").is_none(),
        "only the set oneof member"
    );

    let pages = decode_to_json(&d.join("pages-42.img")).unwrap();
    let len = std::fs::metadata(d.join("pages-42.img")).unwrap().len();
    assert_eq!(pages["kind"], "pages");
    assert_eq!(pages["version"], crate::FORMAT_VERSION);
    assert_eq!(pages["compression"], "zstd");
    assert_eq!(pages["data_bytes"], len - 4096);
}
