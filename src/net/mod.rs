//! The network namespace of a tree that has one of its own (`unshare -n`, a
//! container): its links (see links.rs), their MTU, MAC, queue length and
//! state, addresses, routes of every table but the local one, policy rules
//! (rules.rs), the sysctls under /proc/sys/net that differ from a new
//! namespace's, and its nftables ruleset. Read over
//! rtnetlink (netlink-packet-route) from inside the namespace; made again by
//! crtool in a new namespace before the tree is forked into it. Other link kinds
//! and the local routing table's own routes are refused.

mod links;
mod rtnl;
mod rules;
mod tun;

pub use tun::{FEATURES as TUN_FEATURES, device as tun_device};

use crate::error::{Error, Result};
use images_format::pb;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::AddressFamily;
use rtnl::Rtnl;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Fallback tunnel devices (ip_tunnel.c's fb_tunnel_dev and friends).
const FALLBACK: &[&str] = &["tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0", "ip6gre0"];

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;
/// The local table (the kernel fills it from the addresses).
const RT_TABLE_LOCAL: u32 = 255;

/// Whether `pid` is in a network namespace other than crtool's.
pub fn own_netns(pid: i32) -> bool {
    let link = |p: &str| std::fs::read_link(p).ok();
    link(&format!("/proc/{pid}/ns/net")) != link("/proc/self/ns/net")
}

/// The links of this thread's network namespace in promiscuous or all-multicast
/// mode (counters above 0).
pub fn links_promiscuous() -> std::io::Result<Vec<String>> {
    let nl = Rtnl::open()?;
    let mut out = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(l) = m else { continue };
        let promisc = l.attributes.iter().any(|a| matches!(a, LinkAttribute::Promiscuity(n) if *n > 0)) || l.header.flags.intersects(LinkFlags::Promisc | LinkFlags::Allmulti);
        if promisc {
            out.push(l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }).unwrap_or_default());
        }
    }
    Ok(out)
}

/// A process outside `tree` (and not crtool) in `pid`'s network namespace, if
/// any: the namespace would outlive the dump and not be the restored tree's.
pub fn outside_user(pid: i32, tree: &std::collections::BTreeSet<i32>) -> Option<i32> {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&p| p != me && !tree.contains(&p) && std::fs::read_link(format!("/proc/{p}/ns/net")).ok().as_ref() == Some(&ns))
}

/// A bind mount of `pid`'s network namespace (e.g. /run/netns/NAME of `ip netns
/// add`) in crtool's mount namespace, if any: it keeps the namespace alive.
pub fn bind_mounted(pid: i32) -> Option<std::path::PathBuf> {
    let ino = ns_ino(pid)?;
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).ok()?;
    mounts.into_iter().find(|m| m.fs_type == "nsfs" && m.root == format!("net:[{ino}]")).map(|m| m.mount_point)
}

/// crtool's thread in another network namespace, until dropped (back to the one
/// it came from).
pub struct Entered(OwnedFd);

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.0.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            log::error!("returning to crtool's network namespace: {e}");
        }
    }
}

fn own_ns_fd() -> Result<OwnedFd> {
    std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from).map_err(|e| Error::io("/proc/thread-self/ns/net", e))
}

/// Enters `pid`'s network namespace (this thread: sockets it makes, threads and
/// processes it starts are there too).
pub fn enter(pid: i32) -> Result<Entered> {
    let back = own_ns_fd()?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| Error::proc(pid, "ns/net", e))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::sys(format!("setns into the network namespace of pid {pid}"), e))?;
    Ok(Entered(back))
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// An address of netns.img as text ("?" if malformed).
pub fn addr_text(b: &[u8]) -> String {
    ip_of(b).map_or_else(|| "?".into(), |ip| ip.to_string())
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Reads the network namespace this thread is in (see `enter`). `pid`: the
/// tree's root, for messages.
pub fn dump(pid: i32) -> Result<pb::NetNamespace> {
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: None, what: format!("its network namespace: {what}"), hint: Some(hint) };
    let io = |what: &str, e: std::io::Error| Error::io(format!("rtnetlink ({what}) in the network namespace of pid {pid}"), e);
    let nl = Rtnl::open().map_err(|e| io("socket", e))?;
    let mut ns = pb::NetNamespace::default();
    let mut names = BTreeMap::new();
    // (Position in ns.links, index of its veth peer or lower link inside.)
    let mut peers = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).map_err(|e| io("links", e))? {
        let RouteNetlinkMessage::NewLink(l) = m else { continue };
        let mut link = pb::NetLink { up: l.header.flags.contains(LinkFlags::Up), ..Default::default() };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::TxQueueLen(q) => link.txqlen = *q,
                _ => {}
            }
        }
        // The fallback tunnels a loaded module puts in every namespace (tunl0,
        // sit0, ...), left down: the kernel makes them in the new one too.
        if FALLBACK.contains(&link.name.as_str()) && !link.up {
            continue;
        }
        if let Some(other) = links::describe(&l, &mut link).map_err(|(what, hint)| refuse(what, hint))? {
            peers.push((ns.links.len(), other));
        }
        link.noarp = l.header.flags.contains(LinkFlags::Noarp);
        let odd = l.header.flags & (LinkFlags::Promisc | LinkFlags::Allmulti | LinkFlags::Debug);
        if !odd.is_empty() && link.kind != "loopback" {
            return Err(refuse(format!("link {} has flags {odd:?}", link.name), "link flags other than up are not supported yet"));
        }
        // Settings a new link would not have.
        for a in &l.attributes {
            let odd = match a {
                LinkAttribute::IfAlias(x) if !x.is_empty() => Some(format!("the alias {x:?}")),
                LinkAttribute::Group(g) if *g != 0 => Some(format!("group {g}")),
                _ => None,
            };
            if let Some(what) = odd {
                return Err(refuse(format!("link {} has {what}", link.name), "link settings other than MTU, MAC address and state are not supported yet"));
            }
        }
        link.index = l.header.index;
        names.insert(l.header.index, link.name.clone());
        ns.links.push(link);
    }
    for (at, other) in peers {
        let name = names.get(&other).cloned().ok_or_else(|| refuse(format!("link {} refers to link {other}, which is not in the namespace", ns.links[at].name), "report this"))?;
        ns.links[at].peer = name;
    }
    for m in nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())).map_err(|e| io("addresses", e))? {
        let RouteNetlinkMessage::NewAddress(a) = m else { continue };
        let link = names.get(&a.header.index).cloned().unwrap_or_default();
        let addr = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = addr.or_else(|| a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        }));
        let Some(ip) = addr else { continue };
        // The kernel's own: the loopback's, and IPv6 link-local ones.
        let auto = match ip {
            IpAddr::V4(v) => v == std::net::Ipv4Addr::LOCALHOST && a.header.prefix_len == 8 && link == "lo",
            IpAddr::V6(v) => (v.is_loopback() && link == "lo") || (v.segments()[0] & 0xffc0) == 0xfe80,
        };
        if auto {
            continue;
        }
        let peer = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(p) => Some(*p),
            _ => None,
        });
        if ip.is_ipv4() && peer.is_some_and(|p| p != ip) {
            return Err(refuse(format!("a point-to-point address {ip} on {link}"), "peer addresses are not supported yet"));
        }
        let broadcast = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Broadcast(b) => Some(b.octets().to_vec()),
            _ => None,
        });
        let label = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Label(l) if *l != link => Some(l.clone()),
            _ => None,
        });
        ns.addrs.push(pb::NetAddr { link, addr: ip_bytes(&ip), prefix: a.header.prefix_len as u32, broadcast: broadcast.unwrap_or_default(), label: label.unwrap_or_default() });
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        for m in nl.dump(RouteNetlinkMessage::GetRoute(q)).map_err(|e| io("routes", e))? {
            let RouteNetlinkMessage::NewRoute(r) = m else { continue };
            let table = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            }).unwrap_or(r.header.table as u32);
            // Made by the kernel itself: the local table, routes of addresses and
            // links (proto kernel), IPv6 multicast and link-local ones.
            if r.header.protocol == RouteProtocol::Kernel || r.header.kind == RouteType::Multicast {
                continue;
            }
            if table == RT_TABLE_LOCAL {
                return Err(refuse("a route added to the local routing table".into(), "routes in the local table (AnyIP, TPROXY) are not supported yet"));
            }
            let odd = r.attributes.iter().find(|a| !matches!(a, RouteAttribute::Table(_) | RouteAttribute::Destination(_) | RouteAttribute::Gateway(_) | RouteAttribute::Oif(_) | RouteAttribute::Priority(_) | RouteAttribute::CacheInfo(_) | RouteAttribute::Preference(_)));
            if let Some(a) = odd {
                let name = format!("{a:?}");
                return Err(refuse(format!("a route with {}", name.split('(').next().unwrap_or("an attribute")), "routes with a preferred source, metrics, several next hops or encapsulation are not supported yet"));
            }
            if r.header.source_prefix_length != 0 || r.header.tos != 0 {
                return Err(refuse("a source-specific or TOS route".into(), "not supported yet"));
            }
            // (Linkdown, Dead and the like are the kernel's state, not settings.)
            if r.header.flags.contains(netlink_packet_route::route::RouteFlags::Onlink) {
                return Err(refuse("an onlink route".into(), "onlink routes are not supported yet"));
            }
            if r.header.protocol == RouteProtocol::Ra {
                return Err(refuse("a route learned from a router advertisement".into(), "not supported yet (it would come back permanent)"));
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => route_ip(d),
                _ => None,
            });
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => route_ip(g),
                _ => None,
            });
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => names.get(i).cloned(),
                _ => None,
            });
            let priority = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            ns.routes.push(pb::NetRoute {
                family: u8::from(r.header.address_family) as u32,
                dst: dst.map(|d| ip_bytes(&d)).unwrap_or_default(),
                dst_len: r.header.destination_prefix_length as u32,
                gateway: gateway.map(|g| ip_bytes(&g)).unwrap_or_default(),
                oif: oif.unwrap_or_default(),
                priority: priority.unwrap_or(0),
                protocol: u8::from(r.header.protocol) as u32,
                scope: u8::from(r.header.scope) as u32,
                r#type: u8::from(r.header.kind) as u32,
                table: if table == RT_TABLE_MAIN { 0 } else { table },
            });
        }
    }
    // Routes without a gateway first: a gateway must be reachable when its route
    // is added.
    ns.routes.sort_by_key(|r| !r.gateway.is_empty());
    let tuns: Vec<u32> = ns.links.iter().filter(|l| l.kind == "tun").map(|l| l.index).collect();
    check_unsupported(&nl, &names, &tuns).map_err(|(what, hint)| refuse(what, hint))?;
    if ["ip_tables_names", "ip6_tables_names", "arp_tables_names"].iter().any(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).is_ok_and(|t| !t.trim().is_empty())) {
        return Err(refuse("it has iptables (x_tables) rules".into(), "only nftables rulesets are taken along"));
    }
    ns.rules = rules::dump(&nl).map_err(|e| io("policy rules", e))?;
    ns.rules_saved = true;
    ns.sysctls = sysctls::differing().map_err(|e| Error::io("/proc/sys/net", e))?;
    ns.nft_ruleset = nft_ruleset().map_err(|why| refuse(why, "install nftables (the nft command)"))?;
    Ok(ns)
}

/// Refuses what this version does not make again: permanent neighbour entries,
/// queueing disciplines other than the links' defaults. `names`: link index → name; `tuns`: indexes of tun/tap links.
fn check_unsupported(nl: &Rtnl, names: &BTreeMap<u32, String>, tuns: &[u32]) -> std::result::Result<(), (String, &'static str)> {
    use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
    use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    let io = |what: &str, e: std::io::Error| (format!("reading its {what}: {e}"), "report this");
    for m in nl.dump(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default())).map_err(|e| io("neighbours", e))? {
        let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
        if n.header.state == NeighbourState::Permanent {
            let link = names.get(&n.header.ifindex).cloned().unwrap_or_default();
            return Err((format!("a permanent neighbour entry on {link}"), "static ARP/NDP entries are not supported yet"));
        }
    }
    for m in nl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())).map_err(|e| io("queueing disciplines", e))? {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = m else { continue };
        let kind = q.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        }).unwrap_or_default();
        // (A tun/tap device's own when up: pfifo_fast, made by the kernel, handle 0, fixed settings.)
        // (net.core.default_qdisc where the kernel has it.)
        let default_kind = std::fs::read_to_string("/proc/sys/net/core/default_qdisc").map(|k| k.trim().to_string()).unwrap_or_else(|_| "pfifo_fast".into());
        let default = (kind == "pfifo_fast" || kind == default_kind) && q.header.handle == TcHandle::from(0u32) && q.header.parent == TcHandle::ROOT && tuns.contains(&(q.header.index as u32));
        if kind != "noqueue" && !default {
            let link = names.get(&(q.header.index as u32)).cloned().unwrap_or_default();
            return Err((format!("queueing discipline {kind} on {link}"), "traffic control (tc) settings are not supported yet"));
        }
    }
    Ok(())
}

mod sysctls {
    use images_format::pb;
    use std::path::Path;

    /// Per-link directories of other links than the loopback are left out (the
    /// links are made again with their defaults: those of their kind).
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut ents: Vec<_> = rd.flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                walk(&e.path(), &path, out);
            } else {
                use std::os::unix::fs::PermissionsExt;
                // Only what can be written back (and was readable).
                if md.permissions().mode() & 0o200 == 0 {
                    continue;
                }
                if let Ok(v) = std::fs::read_to_string(e.path()) {
                    out.push((path, v.trim_end().to_string()));
                }
            }
        }
    }

    fn read_all() -> Vec<(String, String)> {
        let mut out = Vec::new();
        walk(Path::new("/proc/sys/net"), "", &mut out);
        out
    }

    /// Where a per-link sysctl's default is (`conf/eth0/x` → `conf/default/x`),
    /// for links other than the loopback and the all/default directories.
    fn link_default(path: &str) -> Option<String> {
        let parts: Vec<&str> = path.split('/').collect();
        let i = parts.iter().position(|p| *p == "conf" || *p == "neigh")?;
        let link = parts.get(i + 1)?;
        if matches!(*link, "all" | "default" | "lo") || parts.len() <= i + 2 {
            return None;
        }
        let mut d: Vec<&str> = parts.clone();
        d[i + 1] = "default";
        Some(d.join("/"))
    }

    /// The order to write them in: ip_forward and `all` first (writing them
    /// changes the others), then `default`, then the rest; per-link values after
    /// their links exist (see `create`).
    pub fn rank(path: &str) -> u8 {
        match () {
            _ if path.ends_with("ip_forward") => 0,
            _ if path.contains("/conf/all/") => 1,
            _ if path.contains("/conf/default/") => 2,
            _ if link_default(path).is_some() => 4,
            _ => 3,
        }
    }

    /// Whether `path` is a sysctl of one link (written once the links exist).
    pub fn per_link(path: &str) -> bool {
        link_default(path).is_some()
    }

    /// The sysctls of this thread's namespace that differ from a new one's; a
    /// link's own ones (other than the loopback's) that differ from the
    /// namespace's `default`, which a new link takes.
    pub fn differing() -> std::io::Result<Vec<pb::Sysctl>> {
        let mine = read_all();
        let here: std::collections::BTreeMap<String, String> = mine.iter().cloned().collect();
        let fresh = std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<Vec<(String, String)>> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(read_all())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reading a new namespace's sysctls panicked")))
        })?;
        let fresh: std::collections::BTreeMap<String, String> = fresh.into_iter().collect();
        let mut out: Vec<pb::Sysctl> = mine
            .into_iter()
            .filter(|(p, v)| match link_default(p) {
                Some(d) => here.get(&d).is_some_and(|dv| dv != v),
                None => fresh.get(p).is_some_and(|f| f != v),
            })
            .map(|(path, value)| pb::Sysctl { path, value })
            .collect();
        out.sort_by(|a, b| (rank(&a.path), &a.path).cmp(&(rank(&b.path), &b.path)));
        Ok(out)
    }

    pub fn write(s: &pb::Sysctl) -> std::io::Result<()> {
        if s.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(std::io::Error::other(format!("bad sysctl path {}", s.path)));
        }
        std::fs::write(Path::new("/proc/sys/net").join(&s.path), format!("{}\n", s.value))
    }
}

/// `nft list ruleset` of this thread's namespace, without crtool's own lock
/// tables; empty when there is none.
fn nft_ruleset() -> std::result::Result<String, String> {
    let out = match std::process::Command::new("nft").args(["list", "ruleset"]).output() {
        Ok(o) => o,
        Err(e) => return Err(format!("its nftables ruleset cannot be read (running nft: {e})")),
    };
    if !out.status.success() {
        return Err(format!("nft list ruleset: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Drop the tables crtool's network lock made (table inet crtool-lock-*).
    let mut keep = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with("table inet crtool-lock-") {
            skipping = true;
        }
        if !skipping {
            keep.push_str(line);
            keep.push('\n');
        }
        if skipping && line == "}" {
            skipping = false;
        }
    }
    Ok(if keep.trim().is_empty() { String::new() } else { keep })
}

/// Joins the network namespace behind `fd` (handed over by the caller for an
/// external one), this thread in it until the result is dropped.
pub fn join(fd: i32) -> Result<Entered> {
    let back = own_ns_fd()?;
    let ns = crate::sys::fd::borrow(fd);
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Reported(format!("--inherit-fd fd[{fd}]: joining it as the tree's network namespace: {e}")))?;
    Ok(Entered(back))
}

/// `--external net[INO]:KEY` → (INO, KEY).
pub fn parse_external(spec: &str) -> Option<(u64, String)> {
    let rest = spec.strip_prefix("net[")?;
    let (ino, key) = rest.split_once("]:")?;
    Some((ino.parse().ok()?, key.to_string()))
}

/// The inode of `pid`'s network namespace.
pub fn ns_ino(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// The new network namespace a restore made, this thread in it (see `Entered`).
pub struct Made {
    _back: Entered,
}

/// Makes the namespace of `ns` and enters it (this thread: the tree forked from
/// it, and the sockets crtool makes, are in it). `veth`: inside name → outside
/// link of veth peers to make (--veth-pair) and lower links of macvlan
/// ones (--external macvlan[IN]:OUT).
pub fn create(ns: &pb::NetNamespace, veth: &BTreeMap<String, String>) -> Result<Made> {
    let fail = |what: String| Error::Reported(format!("cannot make the network namespace again: {what}"));
    let io = |what: &str, e: std::io::Error| fail(format!("{what}: {e}"));
    let outside = own_ns_fd()?;
    // Names the outside ends will take must be free.
    for l in ns.links.iter().filter(|l| l.kind == "veth" && l.peer.is_empty()) {
        let out = veth.get(&l.name).ok_or_else(|| fail(format!("veth {} had its peer outside: name the peer with --veth-pair {}=NAME", l.name, l.name)))?;
        if nix::net::if_::if_nametoindex(out.as_str()).is_ok() {
            return Err(fail(format!("--veth-pair {}={out}: a link named {out} exists already", l.name)));
        }
    }
    // Lower links outside must exist (their index, read here, outside).
    let mut lower_out = BTreeMap::new();
    for l in ns.links.iter().filter(|l| links::made_outside(l)) {
        let out = veth.get(&l.name).ok_or_else(|| fail(format!("{} {} had its lower link outside: name it with --external {}[{}]:NAME", l.kind, l.name, l.kind, l.name)))?;
        let idx = nix::net::if_::if_nametoindex(out.as_str()).map_err(|e| fail(format!("--external {}[{}]:{out}: {e}", l.kind, l.name)))?;
        lower_out.insert(out.clone(), idx);
    }
    let nl_out = Rtnl::open().map_err(|e| io("rtnetlink socket", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| fail(format!("unshare(CLONE_NEWNET): {e}")))?;
    let made = Made { _back: Entered(outside.try_clone().map_err(|e| io("dup", e))?) };
    let nl = Rtnl::open().map_err(|e| io("rtnetlink socket", e))?;
    // Namespace-wide sysctls before the links (a new link takes `default`).
    for s in ns.sysctls.iter().filter(|s| !sysctls::per_link(&s.path)) {
        sysctls::write(s).map_err(|e| io(&format!("writing /proc/sys/net/{}", s.path), e))?;
    }
    // (By ioctl on a socket of this namespace: /sys shows the one it was mounted in.)
    let index_of = |name: &str| -> std::result::Result<u32, Error> { nix::net::if_::if_nametoindex(name).map_err(|e| fail(format!("link {name}: {e}"))) };
    let new_ns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| io("opening the new namespace", e))?;
    tun::make(&ns.links).map_err(fail)?;
    let mut order: Vec<&pb::NetLink> = ns.links.iter().collect();
    order.sort_by_key(|l| links::rank(l));
    for l in order {
        let from_outside = links::made_outside(l);
        let lower_index = |name: &str| -> std::result::Result<u32, String> {
            if from_outside { lower_out.get(name).copied().ok_or_else(|| format!("no link {name} outside")) } else { nix::net::if_::if_nametoindex(name).map_err(|e| format!("link {name}: {e}")) }
        };
        let Some(m) = links::new_link(l, &ns.links, veth, outside.as_raw_fd(), new_ns.as_raw_fd(), lower_index).map_err(fail)? else { continue };
        let via = if from_outside { &nl_out } else { &nl };
        via.ack(RouteNetlinkMessage::NewLink(m), true).map_err(|e| io(&format!("making {} {}", l.kind, l.name), e))?;
    }
    for l in &ns.links {
        let mut m = LinkMessage::default();
        m.header.index = index_of(&l.name)?;
        if l.mtu != 0 {
            m.attributes.push(LinkAttribute::Mtu(l.mtu));
        }
        if l.kind != "loopback" && !l.mac.is_empty() {
            m.attributes.push(LinkAttribute::Address(l.mac.clone()));
        }
        if l.kind != "loopback" && l.txqlen != 0 {
            m.attributes.push(LinkAttribute::TxQueueLen(l.txqlen));
        }
        if l.up {
            m.header.flags = LinkFlags::Up;
        }
        m.header.change_mask = LinkFlags::Up;
        if l.kind != "loopback" {
            m.header.flags.set(LinkFlags::Noarp, l.noarp);
            m.header.change_mask |= LinkFlags::Noarp;
        }
        nl.ack(RouteNetlinkMessage::SetLink(m), false).map_err(|e| io(&format!("setting link {}", l.name), e))?;
    }
    // The links' own sysctls, before their addresses (disable_ipv6, ...).
    for s in ns.sysctls.iter().filter(|s| sysctls::per_link(&s.path)) {
        sysctls::write(s).map_err(|e| io(&format!("writing /proc/sys/net/{}", s.path), e))?;
    }
    for a in &ns.addrs {
        let ip = ip_of(&a.addr).ok_or_else(|| fail(format!("a bad address of {} in netns.img", a.link)))?;
        let mut m = AddressMessage::default();
        m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.prefix_len = a.prefix as u8;
        m.header.index = index_of(&a.link)?;
        // Usable at once, as it was (no duplicate address detection to wait for).
        if ip.is_ipv6() {
            m.header.flags = netlink_packet_route::address::AddressHeaderFlags::Nodad;
        }
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if let Some(IpAddr::V4(b)) = ip_of(&a.broadcast) {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        if !a.label.is_empty() {
            m.attributes.push(AddressAttribute::Label(a.label.clone()));
        }
        nl.ack(RouteNetlinkMessage::NewAddress(m), true).map_err(|e| io(&format!("adding {ip}/{} to {}", a.prefix, a.link), e))?;
    }
    for r in &ns.routes {
        let mut m = RouteMessage::default();
        m.header.address_family = match r.family as i32 {
            libc::AF_INET => AddressFamily::Inet,
            libc::AF_INET6 => AddressFamily::Inet6,
            f => return Err(fail(format!("a route of address family {f} in netns.img"))),
        };
        m.header.destination_prefix_length = r.dst_len as u8;
        let table = if r.table == 0 { RT_TABLE_MAIN } else { r.table };
        // (RT_TABLE_COMPAT in the header for the ids above 255; RTA_TABLE has them all.)
        m.header.table = if table < 256 { table as u8 } else { 252 };
        m.attributes.push(RouteAttribute::Table(table));
        m.header.protocol = RouteProtocol::from(r.protocol as u8);
        m.header.scope = RouteScope::from(r.scope as u8);
        m.header.kind = RouteType::from(r.r#type as u8);
        let addr = |b: &[u8]| ip_of(b).map(|ip| match ip {
            IpAddr::V4(v) => RouteAddress::Inet(v),
            IpAddr::V6(v) => RouteAddress::Inet6(v),
        });
        let bad = |what: &str| fail(format!("a route with a malformed {what} in netns.img"));
        if !r.dst.is_empty() {
            m.attributes.push(RouteAttribute::Destination(addr(&r.dst).ok_or_else(|| bad("destination"))?));
        }
        if !r.gateway.is_empty() {
            m.attributes.push(RouteAttribute::Gateway(addr(&r.gateway).ok_or_else(|| bad("gateway"))?));
        }
        if !r.oif.is_empty() {
            m.attributes.push(RouteAttribute::Oif(index_of(&r.oif)?));
        }
        if r.priority != 0 {
            m.attributes.push(RouteAttribute::Priority(r.priority));
        }
        nl.ack(RouteNetlinkMessage::NewRoute(m), true).map_err(|e| io(&format!("adding a route to {:?}/{}", ip_of(&r.dst), r.dst_len), e))?;
    }
    if ns.rules_saved {
        rules::restore(&nl, &ns.rules).map_err(fail)?;
    }
    if !ns.nft_ruleset.is_empty() {
        use std::io::Write;
        let mut child = std::process::Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().map_err(|e| io("running nft", e))?;
        child.stdin.take().map(|mut i| i.write_all(ns.nft_ruleset.as_bytes()));
        let out = child.wait_with_output().map_err(|e| io("nft", e))?;
        if !out.status.success() {
            return Err(fail(format!("nft -f (the namespace's ruleset): {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    Ok(made)
}
