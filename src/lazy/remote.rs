//! Memory of a `dump --lazy-pages`, served over TCP to a lazy-pages daemon
//! started with `--page-server` (CRIU's post-copy migration): the dumped tree
//! stays stopped with its private anonymous memory, and the dump answers the
//! daemon's requests by reading that memory (process_vm_readv(2)) until the
//! daemon has it all.
//!
//! The frames are the page server's (src/pageserver.rs). The daemon sends HELLO
//! first (another connection to the port is dropped: a port scan is not a
//! daemon), then GET (PID in the images u32, address u64, length u64),
//! answered by PAGES (the bytes) or ERR (a message); then BYE (every page
//! supplied: the dump kills the tree and ends), ABORT (the lazy restore failed
//! before its tree ran, and its tasks are dead: the dump lets the tree run on,
//! as after any failed dump) or FAILED (the restored tree ran, then could not
//! get its memory and was killed: the dump kills the tree and fails). Only
//! ranges the images mark `lazy` are served.
//!
//! From HELLO on the tree dies with the dump (PTRACE_O_EXITKILL): a restored
//! copy may run. A connection lost (TCP keepalive finds a vanished host within
//! about 25 s), or a dump interrupted, after pages were served ends the dump
//! with an error and the tree killed; before any was asked for, the tree runs
//! on.

use crate::error::{Error, Result};
use crate::pageserver::{ACK, BYE, ERR, MAX_FRAME, recv, send};
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const GET: u8 = 7;
const PAGES: u8 = 8;
const ABORT: u8 = 9;
const FAILED: u8 = 10;
const HELLO: u8 = 11;

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The daemon has every page: the tree may go.
    Done { bytes: u64 },
    /// The restore failed, or no daemon ever asked: the tree may run on.
    Aborted,
}

/// The lazy ranges of each process (PID in the images → sorted (start, end)).
pub type Ranges = BTreeMap<u32, Vec<(u64, u64)>>;

fn lazy_err(msg: String) -> Error {
    Error::Lazy { msg }
}

/// Waits for a daemon's HELLO on `listener` (others are dropped). None: the
/// dump was interrupted meanwhile.
fn daemon(listener: &TcpListener) -> Result<Option<TcpStream>> {
    listener.set_nonblocking(true).map_err(|e| Error::io("the lazy-pages listener", e))?;
    loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                match recv(&mut s) {
                    Ok((HELLO, _)) => {
                        log::info!("lazy pages: daemon connected from {peer}");
                        return Ok(Some(s));
                    }
                    _ => log::warn!("lazy pages: a connection from {peer} that is no lazy-pages daemon was dropped"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                if let Some(sig) = crate::sys::signals::interrupted() {
                    log::warn!("lazy pages: interrupted by signal {sig} before a daemon connected");
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("accepting the lazy-pages daemon", e)),
        }
    }
}

/// Waits until `s` has data; Err once the dump is interrupted.
fn wait_readable(s: &TcpStream) -> std::result::Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        if let Some(sig) = crate::sys::signals::interrupted() {
            return Err(format!("interrupted by signal {sig}"));
        }
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Serves one daemon on `listener`: `read(vpid, address, buf)` fills `buf` from
/// the process's memory; `connected` is called on the daemon's HELLO (the tree
/// must then die with the dump).
pub fn serve(listener: &TcpListener, ranges: &Ranges, connected: impl FnOnce() -> Result<()>, mut read: impl FnMut(u32, u64, &mut [u8]) -> std::io::Result<()>) -> Result<End> {
    let Some(mut s) = daemon(listener)? else { return Ok(End::Aborted) };
    connected()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    {
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&s, sockopt::KeepAlive, &true);
        let _ = setsockopt(&s, sockopt::TcpKeepIdle, &10);
        let _ = setsockopt(&s, sockopt::TcpKeepInterval, &5);
        let _ = setsockopt(&s, sockopt::TcpKeepCount, &3);
    }
    let mut bytes = 0u64;
    let mut buf = Vec::new();
    loop {
        let frame = wait_readable(&s).and_then(|()| recv(&mut s).map_err(|e| e.to_string()));
        let (kind, p) = match frame {
            Ok(f) => f,
            Err(e) if bytes == 0 => {
                log::warn!("lazy pages: the connection to the daemon ended before it asked for any page ({e})");
                return Ok(End::Aborted);
            }
            Err(e) => return Err(lazy_err(format!("the connection to the lazy-pages daemon ended after {} MiB were served ({e})", bytes >> 20))),
        };
        match kind {
            GET if p.len() == 20 => {
                let vpid = u32::from_le_bytes(p[0..4].try_into().unwrap_or_default());
                let addr = u64::from_le_bytes(p[4..12].try_into().unwrap_or_default());
                let len = u64::from_le_bytes(p[12..20].try_into().unwrap_or_default());
                let inside = ranges.get(&vpid).is_some_and(|r| {
                    let i = r.partition_point(|x| x.1 <= addr);
                    r.get(i).is_some_and(|x| x.0 <= addr && addr.saturating_add(len) <= x.1)
                });
                if !inside || len as usize > MAX_FRAME {
                    let _ = send(&mut s, ERR, format!("pid {vpid} has no lazy pages at {addr:#x} (+{len})").as_bytes());
                    continue;
                }
                buf.resize(len as usize, 0);
                match read(vpid, addr, &mut buf) {
                    Ok(()) => {
                        send(&mut s, PAGES, &buf).map_err(|e| lazy_err(format!("sending pages to the daemon: {e}")))?;
                        bytes += len;
                    }
                    Err(e) => {
                        let _ = send(&mut s, ERR, format!("pid {vpid} at {addr:#x}: {e}").as_bytes());
                    }
                }
            }
            BYE => {
                let _ = send(&mut s, ACK, &[]);
                return Ok(End::Done { bytes });
            }
            ABORT => {
                let _ = send(&mut s, ACK, &[]);
                return Ok(End::Aborted);
            }
            FAILED => {
                let _ = send(&mut s, ACK, &[]);
                return Err(lazy_err("the lazy restore failed after its tree ran (the daemon killed it)".into()));
            }
            k => return Err(lazy_err(format!("the lazy-pages daemon sent frame kind {k}"))),
        }
    }
}

/// How a lazy restore ended, for the dump (see `Client::finish`).
pub enum Finish {
    Done,
    Aborted,
    Failed,
}

/// The daemon's connection to the dump.
pub struct Client {
    s: TcpStream,
    pub bytes: u64,
}

impl Client {
    pub fn connect(address: &str, port: u16) -> Result<Client> {
        let mut s = TcpStream::connect((address, port)).map_err(|e| Error::io(format!("connecting to the dump's page server at {address}:{port}"), e))?;
        let _ = s.set_nodelay(true);
        // A dump host that vanishes: a fault must not wait for ever.
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        send(&mut s, HELLO, &[]).map_err(|e| lazy_err(format!("the dump's page server at {address}:{port}: {e}")))?;
        Ok(Client { s, bytes: 0 })
    }

    /// The memory of process `vpid` at `addr`, into `dst`.
    pub fn get(&mut self, vpid: u32, addr: u64, dst: &mut [u8]) -> Result<()> {
        let mut p = Vec::with_capacity(20);
        p.extend_from_slice(&vpid.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&(dst.len() as u64).to_le_bytes());
        send(&mut self.s, GET, &p).map_err(|e| lazy_err(format!("asking the dump's page server for pid {vpid}'s pages at {addr:#x}: {e}")))?;
        match recv(&mut self.s) {
            Ok((PAGES, data)) if data.len() == dst.len() => {
                dst.copy_from_slice(&data);
                self.bytes += data.len() as u64;
                Ok(())
            }
            Ok((ERR, m)) => Err(lazy_err(format!("the dump's page server: {}", String::from_utf8_lossy(&m)))),
            Ok((k, d)) => Err(lazy_err(format!("the dump's page server answered kind {k} with {} bytes for {} asked", d.len(), dst.len()))),
            Err(e) => Err(lazy_err(format!("the dump's page server went away: {e}"))),
        }
    }

    /// Tells the dump how it ended: every page supplied (`Done`: the tree goes),
    /// the restore failed before its tree ran (`Aborted`: the tree runs on), or
    /// after (`Failed`: the tree goes, the dump fails).
    pub fn finish(&mut self, how: Finish) -> Result<()> {
        let kind = match how {
            Finish::Done => BYE,
            Finish::Aborted => ABORT,
            Finish::Failed => FAILED,
        };
        send(&mut self.s, kind, &[]).map_err(|e| lazy_err(format!("the dump's page server: {e}")))?;
        match recv(&mut self.s) {
            Ok((ACK, _)) => Ok(()),
            Ok((_, m)) => Err(lazy_err(format!("the dump's page server: {}", String::from_utf8_lossy(&m)))),
            Err(e) => Err(lazy_err(format!("the dump's page server's answer: {e}"))),
        }
    }
}
