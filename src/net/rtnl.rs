//! A small synchronous rtnetlink client (rtnetlink(7)) over netlink-sys with the
//! messages of netlink-packet-route: dumps and acknowledged requests, in the
//! network namespace of the calling thread.

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub struct Rtnl(Socket);

fn bad(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("rtnetlink: {e}"))
}

impl Rtnl {
    pub fn open() -> std::io::Result<Rtnl> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl(s))
    }

    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        let mut m = NetlinkMessage::new(hdr, msg.into());
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.0.send(&buf, 0)?;
        Ok(())
    }

    /// A dump request: every message the kernel answers with.
    pub fn dump(&self, msg: RouteNetlinkMessage) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.0.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let m = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&data[at..]).map_err(bad)?;
                let len = m.header.length as usize;
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    _ => {}
                }
                if len == 0 {
                    return Err(bad("zero-length message"));
                }
                at += len;
            }
        }
    }

    /// A request that creates (`create`) or changes something, and its
    /// acknowledgement.
    pub fn ack(&self, msg: RouteNetlinkMessage, create: bool) -> std::io::Result<()> {
        self.send(msg, NLM_F_ACK | if create { NLM_F_CREATE | NLM_F_EXCL } else { 0 })?;
        loop {
            let (data, _) = self.0.recv_from_full()?;
            let m = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&data).map_err(bad)?;
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::Done(_) => return Ok(()),
                _ => {}
            }
        }
    }
}
