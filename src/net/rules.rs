//! Policy routing rules of a tree's network namespace (`ip rule`, fib_rules.h):
//! every rule of both families, the kernel's defaults included (a namespace may
//! have deleted them), kept as the RTM_NEWRULE messages the kernel sent
//! (netlink-packet-route's RuleMessage, emitted again: every selector, action
//! and attribute); at restore the new namespace's rules are replaced by them.

use super::rtnl::Rtnl;
use netlink_packet_route::rule::{RuleMessage, RuleMessageBuffer};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_packet_utils::{Emitable, Parseable};

fn of_family(nl: &Rtnl, family: AddressFamily) -> std::io::Result<Vec<RuleMessage>> {
    let mut q = RuleMessage::default();
    q.header.family = family;
    match nl.dump(RouteNetlinkMessage::GetRule(q)) {
        // (IPv6 disabled.)
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(Vec::new()),
        r => Ok(r?.into_iter().filter_map(|m| if let RouteNetlinkMessage::NewRule(r) = m { Some(r) } else { None }).collect()),
    }
}

/// The rules of this thread's namespace, IPv4 then IPv6, in the kernel's order
/// (by priority), as message bytes.
pub fn dump(nl: &Rtnl) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for r in of_family(nl, family)? {
            let mut b = vec![0u8; r.buffer_len()];
            r.emit(&mut b);
            out.push(b);
        }
    }
    Ok(out)
}

/// Replaces the rules of this thread's (new) namespace by `rules` (from `dump`).
pub fn restore(nl: &Rtnl, rules: &[Vec<u8>]) -> Result<(), String> {
    let parsed = rules
        .iter()
        .map(|b| RuleMessageBuffer::new_checked(b).and_then(|buf| RuleMessage::parse(&buf)).map_err(|e| format!("a malformed policy rule in netns.img: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for r in of_family(nl, family).map_err(|e| format!("listing the new namespace's rules: {e}"))? {
            nl.ack(RouteNetlinkMessage::DelRule(r), false).map_err(|e| format!("removing a default rule of the new namespace: {e}"))?;
        }
    }
    for r in parsed {
        let what = format!("{r:?}");
        nl.ack(RouteNetlinkMessage::NewRule(r), true).map_err(|e| format!("adding the policy rule {what}: {e}"))?;
    }
    Ok(())
}
