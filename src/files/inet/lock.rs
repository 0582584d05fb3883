//! The network lock (CRIU's): while a tree's TCP connections are dumped, and until
//! the restored connections run, packets of those connections are dropped, so the
//! peer only retransmits (no RST from a socket that is gone). An nftables table of
//! its own (`nft`, Debian package nftables) with a rule per connection and
//! direction; removed by restore, or by the dump itself when it fails or lets the
//! tree run on.

use images_format::pb;
use std::io::Write;
use std::process::{Command, Stdio};

/// The table's name for connections `conns`: from their addresses, so that two
/// dumps of the same tree name it alike (and images stay reproducible).
pub fn table_name(conns: &[&pb::InetSocket]) -> String {
    let mut h = crc32fast::Hasher::new();
    for c in conns {
        h.update(&c.local);
        h.update(&c.peer);
    }
    format!("crtool-lock-{:08x}", h.finalize())
}

/// The nft rule text matching the packets of connection `s` in one direction.
fn rules(s: &pb::InetSocket) -> Option<[String; 2]> {
    let (la, lp) = super::parse_addr(&s.local)?;
    let (ra, rp) = super::parse_addr(&s.peer)?;
    let ip = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => ("ip", v.to_string()),
        std::net::IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(m) => ("ip", m.to_string()),
            None => ("ip6", v.to_string()),
        },
    };
    let ((f, l), (_, r)) = (ip(&la), ip(&ra));
    Some([
        format!("add rule inet {{T}} input {f} saddr {r} {f} daddr {l} tcp sport {rp} tcp dport {lp} drop"),
        format!("add rule inet {{T}} output {f} saddr {l} {f} daddr {r} tcp sport {lp} tcp dport {rp} drop"),
    ])
}

fn nft(script: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    // (A process group of its own: a ^C meant for crtool must not kill nft half
    // way; crtool undoes its work itself.)
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (Debian package nftables): {e}"))?;
    // (A write error shows as nft's failure below.)
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

/// Drops the packets of `conns` (table `table`, made anew).
pub fn lock(table: &str, conns: &[&pb::InetSocket]) -> Result<(), String> {
    let mut script = format!(
        "table inet {table}\ndelete table inet {table}\nadd table inet {table}\n\
         add chain inet {table} input {{ type filter hook input priority -400; }}\n\
         add chain inet {table} output {{ type filter hook output priority -400; }}\n"
    );
    for c in conns {
        for r in rules(c).ok_or_else(|| format!("{}: no addresses", super::describe(c)))? {
            script.push_str(&r.replace("{T}", table));
            script.push('\n');
        }
    }
    nft(&script)
}

/// Removes the lock (a table already gone is fine).
pub fn unlock(table: &str) -> Result<(), String> {
    nft(&format!("table inet {table}\ndelete table inet {table}\n"))
}
