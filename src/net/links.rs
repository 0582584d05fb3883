//! The kinds of link crtool saves and makes again in a tree's network namespace
//! (rtnetlink, netlink-packet-route; `ip-link(8)`): the loopback, veth pairs (one
//! end outside, named at restore by `--veth-pair IN=OUT`, or both ends inside)
//! and macvlan links (their lower link inside, or outside and named at restore
//! by `--external macvlan[IN]:OUT`), tun/tap devices (tun.rs). (dummy, ipvlan, vlan: the kernel crtool is
//! tested on has no such drivers, so they are refused rather than untested.)

use images_format::pb;
use netlink_packet_route::link::{InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode};
use std::collections::BTreeMap;
use std::os::fd::RawFd;

/// macvlan's "source" mode: its list of source MACs is not saved.
const MACVLAN_MODE_SOURCE: u32 = 16;

/// What a dumped link is: fills `link.kind`, `mode`, `flags`; returns the index of
/// its veth peer or lower link when that is in the namespace (resolved to a name
/// by the caller, once every link is known). Err: (what, hint) of a refusal.
pub fn describe(l: &LinkMessage, link: &mut pb::NetLink) -> Result<Option<u32>, (String, &'static str)> {
    let mut kind = None;
    let mut data = None;
    let mut other_ns = false;
    let mut lower = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::LinkNetNsId(_) => other_ns = true,
            LinkAttribute::Link(i) => lower = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d.clone()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let loopback = l.header.flags.contains(netlink_packet_route::link::LinkFlags::Loopback);
    let inside = if other_ns { None } else { lower.filter(|&i| i != 0 && i != l.header.index) };
    link.kind = match (&kind, loopback) {
        (None, true) => "loopback",
        (Some(InfoKind::Veth), _) => "veth",
        (Some(InfoKind::Tun), _) => {
            let empty = Vec::new();
            let d = match &data {
                Some(InfoData::Tun(d)) => d,
                _ => &empty,
            };
            let t = super::tun::describe(&link.name, d)?;
            // TUNSETLINK: a link type other than the device type's own.
            let own = if t.iff & crate::sys::tun::IFF_TAP != 0 { 1 } else { 0xfffe }; // ARPHRD_ETHER, ARPHRD_NONE
            if u16::from(l.header.link_layer_type) != own {
                return Err((format!("tun/tap device {} has link type {:?} (TUNSETLINK)", link.name, l.header.link_layer_type), "tun/tap devices with another link type are not supported yet"));
            }
            link.tun = Some(t);
            "tun"
        }
        (Some(InfoKind::MacVlan), _) => {
            for d in data.iter() {
                if let InfoData::MacVlan(v) = d {
                    for x in v {
                        match x {
                            InfoMacVlan::Mode(m) => link.mode = u32::from(*m),
                            InfoMacVlan::Flags(f) => link.flags = *f as u32,
                            InfoMacVlan::BcQueueLen(q) => link.bc_queue_len = Some(*q),
                            InfoMacVlan::BcCutoff(c) => link.bc_cutoff = Some(*c),
                            _ => {}
                        }
                    }
                }
            }
            if link.mode == MACVLAN_MODE_SOURCE {
                return Err((format!("macvlan {} is in source mode", link.name), "macvlan links in source mode (a list of source MACs) are not supported yet"));
            }
            "macvlan"
        }
        (k, _) => {
            let k = k.as_ref().map_or("unknown".to_string(), |k| format!("{k:?}").to_lowercase());
            return Err((format!("link {} of kind {k}", link.name), "only the loopback, veth, macvlan and tun/tap links are supported yet"));
        }
    }
    .into();
    if link.kind == "macvlan" && lower.is_none() {
        return Err((format!("{} {} has no lower link", link.kind, link.name), "report this"));
    }
    Ok(if link.kind == "loopback" || link.kind == "tun" { None } else { inside })
}

/// The order links are made in: a macvlan after its lower link.
pub fn rank(l: &pb::NetLink) -> u8 {
    match l.kind.as_str() {
        "loopback" => 0,
        "macvlan" => 2,
        _ => 1,
    }
}

/// The RTM_NEWLINK request making `l` in the calling thread's namespace, or
/// None when nothing is to be made (the loopback; the second end of a veth pair
/// made with the first). `all`: every link of the namespace; `outside`: inside
/// name → outside link (veth peers to make, lower links that exist);
/// `outside_ns`, `new_ns`: the namespace outside and the one being made;
/// `lower_index`: a lower link's index (outside for a link made from there, see
/// [`made_outside`]). Err: what is missing.
pub fn new_link(l: &pb::NetLink, all: &[pb::NetLink], outside: &BTreeMap<String, String>, outside_ns: RawFd, new_ns: RawFd, lower_index: impl Fn(&str) -> Result<u32, String>) -> Result<Option<LinkMessage>, String> {
    let mut m = LinkMessage::default();
    m.header.index = l.index;
    m.attributes.push(LinkAttribute::IfName(l.name.clone()));
    let data = match l.kind.as_str() {
        // (tun devices are made before, see tun.rs.)
        "loopback" | "tun" => return Ok(None),
        "veth" if l.peer.is_empty() => {
            let out = outside.get(&l.name).ok_or_else(|| format!("veth {} had its peer outside: name the peer with --veth-pair {}=NAME", l.name, l.name))?;
            let mut peer = LinkMessage::default();
            peer.attributes.push(LinkAttribute::IfName(out.clone()));
            peer.attributes.push(LinkAttribute::NetNsFd(outside_ns));
            Some(InfoData::Veth(InfoVeth::Peer(peer)))
        }
        "veth" => {
            let other = all.iter().find(|o| o.name == l.peer).ok_or_else(|| format!("veth {}: its peer {} is not in netns.img", l.name, l.peer))?;
            if other.index < l.index {
                return Ok(None);
            }
            let mut peer = LinkMessage::default();
            peer.header.index = other.index;
            peer.attributes.push(LinkAttribute::IfName(other.name.clone()));
            Some(InfoData::Veth(InfoVeth::Peer(peer)))
        }
        "macvlan" => {
            let idx = if l.peer.is_empty() {
                let out = outside.get(&l.name).ok_or_else(|| format!("{} {} had its lower link outside: name it with --external {}[{}]:NAME", l.kind, l.name, l.kind, l.name))?;
                m.attributes.push(LinkAttribute::NetNsFd(new_ns));
                lower_index(out)?
            } else {
                lower_index(&l.peer)?
            };
            m.attributes.push(LinkAttribute::Link(idx));
            let mut v = vec![InfoMacVlan::Mode(MacVlanMode::from(l.mode)), InfoMacVlan::Flags(l.flags as u16)];
            v.extend(l.bc_queue_len.map(InfoMacVlan::BcQueueLen));
            v.extend(l.bc_cutoff.map(InfoMacVlan::BcCutoff));
            Some(InfoData::MacVlan(v))
        }
        k => return Err(format!("link {} of kind {k:?} in netns.img", l.name)),
    };
    let kind = if l.kind == "veth" { InfoKind::Veth } else { InfoKind::MacVlan };
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    m.attributes.push(LinkAttribute::LinkInfo(info));
    Ok(Some(m))
}

/// Whether `l` is made from the namespace outside (its lower link is there).
pub fn made_outside(l: &pb::NetLink) -> bool {
    l.kind == "macvlan" && l.peer.is_empty()
}
