//! Half-open TCP connections (SYN_RECV requests in listeners' queues) through
//! sock_diag's INET_DIAG (sock_diag(7), net/ipv4/inet_diag.c): they have no fd, so
//! only the kernel can show them.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use std::net::IpAddr;

/// The local (address, port) of every SYN_RECV request of the calling thread's
/// network namespace.
pub fn syn_recv() -> std::io::Result<Vec<(IpAddr, u16)>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if family == libc::AF_INET as u8 { SocketId::new_v4() } else { SocketId::new_v6() };
        let req = InetRequest { family, protocol: libc::IPPROTO_TCP as u8, extensions: ExtensionFlags::empty(), states: StateFlags::SYN_RECV, socket_id };
        let mut msg = NetlinkMessage::new(hdr, SockDiagMessage::InetRequest(req).into());
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        sock.send(&buf, 0)?;
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("sock_diag: {e}"));
        'recv: loop {
            let (data, _) = sock.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let m = <NetlinkMessage<SockDiagMessage>>::deserialize(&data[at..]).map_err(|e| bad(e.to_string()))?;
                let len = m.header.length as usize;
                match m.payload {
                    NetlinkPayload::Done(_) => break 'recv,
                    NetlinkPayload::Error(e) => return Err(bad(format!("{e:?}"))),
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        out.push((r.header.socket_id.source_address, r.header.socket_id.source_port));
                    }
                    _ => {}
                }
                if len == 0 {
                    return Err(bad("a zero-length message".into()));
                }
                at += len;
            }
        }
    }
    Ok(out)
}
