//! The page server (CRIU's `page-server`): the page images of a dump go over
//! TCP to another crtool, which writes them into its image directory, instead of
//! to files here. The other images stay in the dump's directory and are copied
//! next to the pages before a restore there (as with CRIU).
//!
//! Protocol: frames of [magic u32 "CRPS"][kind u8][length u32][CRC32 of the
//! payload u32][payload], little-endian. The client sends FILE (a page image's
//! name), DATA (its bytes, in order), END (length u64, CRC32 u32 of the whole
//! file), for which the server answers ACK once the file is complete and on disk
//! (or ERR with a message); then the next file, and BYE when the dump is
//! complete. A server whose client goes away before BYE removes every file it
//! wrote for it and fails; a client whose server goes away fails the dump (which
//! leaves the tree running, as any failed dump).

use crate::error::{Error, Result};
use images_format::RemoteSink;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: u32 = u32::from_le_bytes(*b"CRPS");
const FILE: u8 = 1;
const DATA: u8 = 2;
const END: u8 = 3;
pub(crate) const ACK: u8 = 4;
pub(crate) const ERR: u8 = 5;
pub(crate) const BYE: u8 = 6;
/// Largest payload of one frame.
pub(crate) const MAX_FRAME: usize = 4 << 20;

pub(crate) fn send(s: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut h = Vec::with_capacity(13);
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.push(kind);
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    s.write_all(&h)?;
    s.write_all(payload)
}

pub(crate) fn recv(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut h = [0u8; 13];
    s.read_exact(&mut h)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if word(0) != MAGIC {
        return Err(bad(format!("not a crtool page server frame (magic {:#x})", word(0))));
    }
    let len = word(5) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != word(9) {
        return Err(bad("a frame whose CRC does not match".into()));
    }
    Ok((h[4], payload))
}

/// The client's connection, shared by the page images of one dump (written one
/// after another).
#[derive(Clone)]
pub struct Client(Arc<Mutex<TcpStream>>);

impl Client {
    pub fn connect(address: &str, port: u16) -> Result<Client> {
        let s = TcpStream::connect((address, port)).map_err(|e| Error::io(format!("connecting to the page server at {address}:{port}"), e))?;
        let _ = s.set_nodelay(true);
        Ok(Client(Arc::new(Mutex::new(s))))
    }

    /// A sink for the page image `name`.
    pub fn file(&self, name: &str) -> Result<Box<dyn RemoteSink>> {
        let mut s = self.0.lock().map_err(|_| Error::io("the page server connection", std::io::Error::other("poisoned")))?;
        send(&mut s, FILE, name.as_bytes()).map_err(|e| Error::io(format!("sending {name} to the page server"), e))?;
        Ok(Box::new(Sink(self.0.clone())))
    }

    /// The dump is complete: the server keeps what it has.
    pub fn bye(&self) -> Result<()> {
        let mut s = self.0.lock().map_err(|_| Error::io("the page server connection", std::io::Error::other("poisoned")))?;
        send(&mut s, BYE, &[]).map_err(|e| Error::io("closing the page server connection", e))?;
        match recv(&mut s) {
            Ok((ACK, _)) => Ok(()),
            Ok((_, m)) => Err(Error::io("the page server", std::io::Error::other(String::from_utf8_lossy(&m).into_owned()))),
            Err(e) => Err(Error::io("the page server's answer to BYE", e)),
        }
    }
}

struct Sink(Arc<Mutex<TcpStream>>);

impl RemoteSink for Sink {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        for part in data.chunks(MAX_FRAME) {
            send(&mut s, DATA, part)?;
        }
        Ok(())
    }

    fn finish(&mut self, len: u64, crc: u32) -> std::io::Result<()> {
        let mut s = self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        let mut p = len.to_le_bytes().to_vec();
        p.extend_from_slice(&crc.to_le_bytes());
        send(&mut s, END, &p)?;
        match recv(&mut s)? {
            (ACK, _) => Ok(()),
            (_, m) => Err(std::io::Error::other(format!("the page server: {}", String::from_utf8_lossy(&m)))),
        }
    }
}

/// Whether `name` is a page image's name (pages-PID.img), nothing else.
fn page_image(name: &str) -> bool {
    name.strip_prefix("pages-").and_then(|r| r.strip_suffix(".img")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One file being received: its temporary path, file, length and CRC so far.
struct Receiving {
    name: String,
    tmp: PathBuf,
    file: std::fs::File,
    len: u64,
    crc: crc32fast::Hasher,
}

/// Serves one dump: listens on `address:port`, takes one client, writes its page
/// images into `dir`. Ok once the client said BYE; on any failure every file of
/// this session is removed.
pub fn serve(address: &str, port: u16, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let listener = TcpListener::bind((address, port)).map_err(|e| Error::io(format!("listening on {address}:{port}"), e))?;
    log::info!("page server: listening on {address}:{port}, images into {}", dir.display());
    let (mut s, peer) = listener.accept().map_err(|e| Error::io(format!("accepting on {address}:{port}"), e))?;
    log::info!("page server: dump from {peer}");
    let mut written: Vec<PathBuf> = Vec::new();
    let r = session(&mut s, dir, &mut written);
    if let Err(e) = &r {
        let _ = send(&mut s, ERR, e.to_string().as_bytes());
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

fn session(s: &mut TcpStream, dir: &Path, written: &mut Vec<PathBuf>) -> Result<usize> {
    let io = |what: String, e: std::io::Error| Error::io(format!("page server: {what}"), e);
    let mut cur: Option<Receiving> = None;
    let mut files = 0;
    loop {
        let (kind, payload) = recv(s).map_err(|e| io("the connection (the dump went away?)".into(), e))?;
        match kind {
            FILE => {
                let name = String::from_utf8_lossy(&payload).into_owned();
                if !page_image(&name) || cur.is_some() {
                    return Err(io(format!("{name:?}"), std::io::Error::other("not a page image name, or sent in the middle of another")));
                }
                let tmp = dir.join(format!(".{name}.partial"));
                let file = std::fs::File::create(&tmp).map_err(|e| io(tmp.display().to_string(), e))?;
                written.push(tmp.clone());
                cur = Some(Receiving { name, tmp, file, len: 0, crc: crc32fast::Hasher::new() });
            }
            DATA => {
                let r = cur.as_mut().ok_or_else(|| io("data".into(), std::io::Error::other("data before any file")))?;
                r.file.write_all(&payload).map_err(|e| io(r.tmp.display().to_string(), e))?;
                r.crc.update(&payload);
                r.len += payload.len() as u64;
            }
            END => {
                let r = cur.take().ok_or_else(|| io("end".into(), std::io::Error::other("the end of no file")))?;
                let (len, crc) = match payload[..] {
                    [a, b, c, d, e, f, g, h, i, j, k, l] => (u64::from_le_bytes([a, b, c, d, e, f, g, h]), u32::from_le_bytes([i, j, k, l])),
                    _ => return Err(io("end".into(), std::io::Error::other("a malformed END frame"))),
                };
                if len != r.len || crc != r.crc.clone().finalize() {
                    return Err(io(r.name.clone(), std::io::Error::other(format!("{} bytes received, {len} sent (or their CRC differs)", r.len))));
                }
                r.file.sync_all().map_err(|e| io(r.tmp.display().to_string(), e))?;
                let to = dir.join(&r.name);
                std::fs::rename(&r.tmp, &to).map_err(|e| io(to.display().to_string(), e))?;
                written.retain(|p| *p != r.tmp);
                written.push(to);
                files += 1;
                send(s, ACK, &[]).map_err(|e| io("acknowledging".into(), e))?;
            }
            BYE if cur.is_none() => {
                let _ = send(s, ACK, &[]);
                return Ok(files);
            }
            k => return Err(io(format!("frame kind {k}"), std::io::Error::other("unexpected here"))),
        }
    }
}
