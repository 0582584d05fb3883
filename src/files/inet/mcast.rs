//! Multicast memberships of UDP sockets (ip(7) IP_ADD_MEMBERSHIP, ipv6(7),
//! RFC 3678's MCAST_* API). The kernel lists the groups joined on each link
//! (/proc/net/igmp, /proc/net/igmp6) but not by which socket: each candidate
//! group is asked of each socket with getsockopt(MCAST_MSFILTER), which answers
//! only for a member, with its filter mode and sources. Restore joins again
//! (MCAST_JOIN_GROUP) and sets the filter (MCAST_MSFILTER).

use crate::sys::sock;
use images_format::pb;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;

const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
const MCAST_EXCLUDE: u32 = 0;
/// struct group_filter: gf_interface (u32, padded to 8), gf_group
/// (sockaddr_storage), gf_fmode, gf_numsrc, then gf_slist.
const SS: usize = 128;
const GF_HEADER: usize = 8 + SS + 8;
const MAX_SOURCES: usize = 64;

fn storage(ip: &IpAddr) -> [u8; SS] {
    let mut s = [0u8; SS];
    match ip {
        IpAddr::V4(v) => {
            s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            s[4..8].copy_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            s[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            s[8..24].copy_from_slice(&v.octets());
        }
    }
    s
}

fn ip_of_storage(s: &[u8]) -> Option<IpAddr> {
    super::parse_addr(s).map(|(ip, _)| ip)
}

/// (ifindex, group) of every group joined on a link of the calling thread's
/// network namespace, of `family`.
fn candidates(family: i32) -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    if family == libc::AF_INET {
        let text = std::fs::read_to_string("/proc/thread-self/net/igmp").unwrap_or_default();
        let mut index = 0u32;
        for line in text.lines().skip(1) {
            if !line.starts_with(char::is_whitespace) {
                index = line.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            } else if let Some(g) = line.split_whitespace().next().and_then(|v| u32::from_str_radix(v, 16).ok()) {
                // Printed as the in-memory (network order) word, read as a host
                // (little-endian) integer.
                out.push((index, IpAddr::from(g.to_le_bytes())));
            }
        }
    } else {
        let text = std::fs::read_to_string("/proc/thread-self/net/igmp6").unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(index), Some(hex)) = (f.first().and_then(|v| v.parse().ok()), f.get(2)) else { continue };
            let bytes: Vec<u8> = (0..16).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            if let Ok(b) = <[u8; 16]>::try_from(bytes) {
                out.push((index, IpAddr::from(b)));
            }
        }
    }
    out
}

/// The memberships of UDP socket `fd` (of `family`). `Err`: why they cannot be
/// saved.
pub fn memberships(fd: BorrowedFd, family: i32) -> Result<Vec<pb::McastMembership>, String> {
    let level = if family == libc::AF_INET { libc::IPPROTO_IP } else { libc::IPPROTO_IPV6 };
    let mut out = Vec::new();
    for (index, group) in candidates(family) {
        let mut buf = vec![0u8; GF_HEADER + SS * MAX_SOURCES];
        buf[..4].copy_from_slice(&index.to_ne_bytes());
        buf[8..8 + SS].copy_from_slice(&storage(&group));
        buf[8 + SS + 4..8 + SS + 8].copy_from_slice(&(MAX_SOURCES as u32).to_ne_bytes());
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: `buf` holds a struct group_filter with room for MAX_SOURCES
        // sources; the kernel writes at most `len` bytes.
        let r = unsafe { libc::getsockopt(std::os::fd::AsRawFd::as_raw_fd(&fd), level, MCAST_MSFILTER, buf.as_mut_ptr().cast(), &mut len) };
        if r != 0 {
            continue; // not a member (EADDRNOTAVAIL)
        }
        let word = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap_or([0; 4]));
        let (mode, n) = (word(8 + SS), word(8 + SS + 4) as usize);
        if n > MAX_SOURCES {
            return Err(format!("its membership of {group} filters {n} sources"));
        }
        let sources = (0..n).filter_map(|i| ip_of_storage(&buf[GF_HEADER + i * SS..GF_HEADER + (i + 1) * SS])).map(|ip| ip.to_string()).collect();
        out.push(pb::McastMembership { ifindex: index, group: group.to_string(), exclude: mode == MCAST_EXCLUDE, sources });
    }
    Ok(out)
}

/// Joins the groups again, with their filters.
pub fn join(fd: BorrowedFd, family: i32, ms: &[pb::McastMembership]) -> Result<(), String> {
    let level = if family == libc::AF_INET { libc::IPPROTO_IP } else { libc::IPPROTO_IPV6 };
    for m in ms {
        let group: IpAddr = m.group.parse().map_err(|_| format!("bad group {} in inetsk.img", m.group))?;
        let mut req = vec![0u8; 8 + SS];
        req[..4].copy_from_slice(&m.ifindex.to_ne_bytes());
        req[8..].copy_from_slice(&storage(&group));
        sock::set_raw(fd, level, MCAST_JOIN_GROUP, &req).map_err(|e| format!("joining {group} on link {}: {e}", m.ifindex))?;
        if m.exclude && m.sources.is_empty() {
            continue;
        }
        let mut gf = vec![0u8; GF_HEADER + SS * m.sources.len().max(1)];
        gf[..4].copy_from_slice(&m.ifindex.to_ne_bytes());
        gf[8..8 + SS].copy_from_slice(&storage(&group));
        gf[8 + SS..8 + SS + 4].copy_from_slice(&(if m.exclude { MCAST_EXCLUDE } else { 1 }).to_ne_bytes());
        gf[8 + SS + 4..8 + SS + 8].copy_from_slice(&(m.sources.len() as u32).to_ne_bytes());
        for (i, src) in m.sources.iter().enumerate() {
            let ip: IpAddr = src.parse().map_err(|_| format!("bad source {src} in inetsk.img"))?;
            gf[GF_HEADER + i * SS..GF_HEADER + (i + 1) * SS].copy_from_slice(&storage(&ip));
        }
        gf.truncate(GF_HEADER + SS * m.sources.len());
        sock::set_raw(fd, level, MCAST_MSFILTER, &gf).map_err(|e| format!("filtering {group}: {e}"))?;
    }
    Ok(())
}
