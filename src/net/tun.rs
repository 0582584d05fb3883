//! tun/tap links of a tree's network namespace (drivers/net/tun.c): read from
//! IFLA_INFO_DATA at dump; at restore made by crtool through /dev/net/tun in the
//! new namespace, persistent until the tree's files attach to them again
//! (files/tun.rs), which set the persistence they had.

use super::rtnl::Rtnl;
use crate::sys::tun;
use images_format::pb;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoTun, LinkAttribute, LinkMessage};
use netlink_packet_utils::nla::Nla;
use std::os::fd::AsFd;

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

/// Link `name` of this thread's namespace: whether it has carrier, and its
/// device (see `describe`).
pub fn device(name: &str) -> std::io::Result<(bool, pb::TunLink)> {
    use netlink_packet_route::link::{InfoData, LinkInfo};
    let nl = Rtnl::open()?;
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(l) = m else { continue };
        if !l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == name)) {
            continue;
        }
        let carrier = l.attributes.iter().any(|a| matches!(a, LinkAttribute::Carrier(1)));
        let data = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|x| match x {
                LinkInfo::Data(InfoData::Tun(d)) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        });
        let t = describe(name, &data.unwrap_or_default()).map_err(|(what, _)| std::io::Error::other(what))?;
        return Ok((carrier, t));
    }
    Err(std::io::Error::other(format!("no link {name}")))
}

/// The device flags TUNSETIFF sets from the file's (TUN_FEATURES, tun.c) that
/// crtool keeps: IFF_NO_PI, IFF_VNET_HDR.
pub const FEATURES: u32 = IFF_NO_PI | IFF_VNET_HDR;

/// Makes a persistent device for each tun link of `links` in the calling
/// thread's namespace (the new one), at its index (TUNSETIFINDEX before
/// TUNSETIFF, as CRIU does) and with its name, type, owner and group. Nothing is
/// left behind on failure: the devices go with the namespace.
pub fn make(links: &[pb::NetLink]) -> Result<(), String> {
    for l in links.iter().filter(|l| l.kind == "tun") {
        let t = l.tun.as_ref().ok_or_else(|| format!("tun link {} has no device in netns.img", l.name))?;
        let err = |what: &str, e: nix::errno::Errno| format!("making tun/tap device {} ({what}): {e}", l.name);
        let fd = crate::sys::fd::open_at_pos("/dev/net/tun", libc::O_RDWR, 0).map_err(|e| format!("opening /dev/net/tun for {}: {e}", l.name))?;
        tun::set_ifindex(fd.as_fd(), l.index).map_err(|e| err("TUNSETIFINDEX", e))?;
        tun::set_iff(fd.as_fd(), &l.name, t.iff | tun::IFF_TUN_EXCL).map_err(|e| err("TUNSETIFF", e))?;
        tun::set_owner(fd.as_fd(), t.owner, t.group).map_err(|e| err("TUNSETOWNER/GROUP", e))?;
        tun::set_persist(fd.as_fd(), true).map_err(|e| err("TUNSETPERSIST", e))?;
    }
    Ok(())
}
