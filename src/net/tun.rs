//! tun/tap links of a tree's network namespace (drivers/net/tun.c): read from
//! IFLA_INFO_DATA at dump; at restore made by crtool through /dev/net/tun in its
//! own namespace under a temporary name, persistent, then moved into the new
//! namespace with their name and index (IFLA_NET_NS_FD, IFLA_NEW_IFINDEX),
//! where the tree's files attach to them again (files/tun.rs).

use super::rtnl::Rtnl;
use crate::sys::tun;
use images_format::pb;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoTun, LinkAttribute, LinkMessage};
use netlink_packet_utils::nla::Nla;
use std::os::fd::{AsFd, RawFd};

/// IFF_NO_PI, IFF_VNET_HDR (if_tun.h).
const IFF_NO_PI: u32 = 0x1000;
const IFF_VNET_HDR: u32 = 0x4000;

/// The device of a tun link from its IFLA_INFO_DATA attributes (IFLA_TUN_*).
/// Err: (what, hint) of a refusal.
pub fn describe(name: &str, data: &[InfoTun]) -> Result<pb::TunLink, (String, &'static str)> {
    let mut t = pb::TunLink { owner: -1, group: -1, ..Default::default() };
    let (mut tap, mut pi, mut mq) = (false, true, false);
    for a in data {
        let mut v = vec![0u8; a.value_len()];
        a.emit_value(&mut v);
        let u32v = || v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes).unwrap_or(0);
        let on = v.first().copied().unwrap_or(0) != 0;
        match a.kind() {
            1 => t.owner = u32v() as i64,
            2 => t.group = u32v() as i64,
            3 => tap = v.first() == Some(&2),
            4 => pi = on,
            5 if on => t.iff |= IFF_VNET_HDR,
            6 => t.persist = on,
            7 => mq = on,
            _ => {}
        }
    }
    if mq {
        return Err((format!("tun/tap device {name} is multi-queue"), "multi-queue tun/tap devices are not supported yet"));
    }
    t.iff |= if tap { tun::IFF_TAP } else { tun::IFF_TUN };
    if !pi {
        t.iff |= IFF_NO_PI;
    }
    Ok(t)
}

/// Whether link `name` of this thread's namespace has carrier.
pub fn carrier(name: &str) -> std::io::Result<bool> {
    let nl = Rtnl::open()?;
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(l) = m else { continue };
        if l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) {
            return Ok(l.attributes.iter().any(|a| matches!(a, LinkAttribute::Carrier(1))));
        }
    }
    Err(std::io::Error::other(format!("no link {name}")))
}

/// tun devices made in crtool's namespace and not moved yet: deleted when
/// dropped (they persist).
pub struct Pending<'a> {
    nl: &'a Rtnl,
    /// (outside index, the link).
    made: Vec<(u32, &'a pb::NetLink)>,
}

impl<'a> Pending<'a> {
    /// Makes a persistent device for each tun link of `links` in the calling
    /// thread's (crtool's) namespace, under a temporary name.
    pub fn make(nl: &'a Rtnl, links: &'a [pb::NetLink]) -> Result<Pending<'a>, String> {
        let mut p = Pending { nl, made: Vec::new() };
        for (n, l) in links.iter().filter(|l| l.kind == "tun").enumerate() {
            let t = l.tun.as_ref().ok_or_else(|| format!("tun link {} has no device in netns.img", l.name))?;
            let temp = format!("crtun{}.{n}", std::process::id() % 100_000);
            let err = |what: &str, e: nix::errno::Errno| format!("making tun/tap device {} ({what}): {e}", l.name);
            let fd = crate::sys::fd::open_at_pos("/dev/net/tun", libc::O_RDWR, 0).map_err(|e| format!("opening /dev/net/tun for {}: {e}", l.name))?;
            tun::set_iff(fd.as_fd(), &temp, t.iff).map_err(|e| err("TUNSETIFF", e))?;
            let idx = nix::net::if_::if_nametoindex(temp.as_str()).map_err(|e| err("its index", e))?;
            p.made.push((idx, l));
            tun::set_owner(fd.as_fd(), t.owner, t.group).map_err(|e| err("TUNSETOWNER/GROUP", e))?;
            tun::set_persist(fd.as_fd(), true).map_err(|e| err("TUNSETPERSIST", e))?;
        }
        Ok(p)
    }

    /// Moves them into the namespace `new_ns` with their names and indexes.
    pub fn move_into(mut self, new_ns: RawFd) -> Result<(), String> {
        while let Some(&(idx, l)) = self.made.first() {
            let mut m = LinkMessage::default();
            m.header.index = idx;
            m.attributes.push(LinkAttribute::NetNsFd(new_ns));
            m.attributes.push(LinkAttribute::IfName(l.name.clone()));
            m.attributes.push(LinkAttribute::NewIfIndex(l.index as i32));
            self.nl.ack(RouteNetlinkMessage::SetLink(m), false).map_err(|e| format!("moving tun/tap device {} into the new namespace: {e}", l.name))?;
            self.made.remove(0);
        }
        Ok(())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for &(idx, l) in &self.made {
            let mut m = LinkMessage::default();
            m.header.index = idx;
            if let Err(e) = self.nl.ack(RouteNetlinkMessage::DelLink(m), false) {
                log::error!("removing the temporary tun/tap device for {} (index {idx}): {e}", l.name);
            }
        }
    }
}
