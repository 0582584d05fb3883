//! End-to-end test of memfds (tests/workloads/memfd.py): open and mapped (shared
//! between a parent and a child, private with a copied page, mapped with its fd
//! closed), sparse, sealed. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// After the restore every memfd has its name, size, data and holes, its seals,
/// the fd its offset, the shared mappings still share (a child's write reaches the
/// parent's mapping and the fd), the private copy keeps its own page; two dumps of
/// a --leave-running dump first changes nothing.
#[test]
fn memfds_open_and_mapped_come_back() {
    let s = py_roundtrip("memfd", Creds::User, "memfd", "", LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
    let data = std::fs::metadata(s.path("ck/memfdpages.img")).map(|m| m.len()).unwrap_or(0);
    s.ensure(data > 0 && data < 64 * 1024, || format!("memfdpages.img is {data} bytes: the 4 MiB memfd's holes must not be stored"));
}
