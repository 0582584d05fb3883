//! The page image written on threads of its own while the dumper reads the next
//! pages: compression (zstd), the CRCs and the writes of one pipe-full overlap
//! the parasite's vmsplice and the pipe read of the next. A compressed image is
//! compressed on one thread per CPU, its chunks written in order by the writer.
//! Buffers go round small pools (allocated once: fresh buffers would fault on
//! every page); page buffers are mapped anonymous memory, page-aligned (raw page
//! images are written with O_DIRECT, see images_format::PagesWriter).
//!
//! Chunks are stored exactly as a sequential writer would store them (one per
//! part, in order, each compressed alone), so images stay byte-identical.

use crate::error::{Error, Result};
use images_format::{ImageError, PagesWriter, StoredChunk};
use memmap2::MmapMut;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Page buffers in flight besides the compressors': one being filled, one
/// being written, one spare.
const POOL: usize = 3;

/// Most compressor threads of one pipeline (a tree's processes have theirs
/// side by side).
const MAX_COMPRESSORS: usize = 8;

/// Compressor threads of a pipeline of a compressed image: one per CPU, none
/// with one CPU (the writer compresses as it writes).
fn compressor_threads() -> usize {
    match crate::par::width().min(MAX_COMPRESSORS) {
        1 => 0,
        n => n,
    }
}

/// Page buffers a pipeline uses.
pub fn buffers() -> usize {
    POOL + compressor_threads()
}

/// A filled buffer and its parts (offset, length): one chunk each; `seq`: its
/// place in the image.
struct Job {
    seq: u64,
    buf: MmapMut,
    parts: Vec<(usize, usize)>,
}

/// A job and its parts as stored (compressed), for the writer.
struct Compressed {
    job: Job,
    stored: Vec<Vec<u8>>,
}

type Written = std::result::Result<(PagesWriter, Vec<StoredChunk>), ImageError>;

pub struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<MmapMut>,
    next_seq: u64,
    writer: Option<JoinHandle<Written>>,
    compressors: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the writer thread on `out` (and, for a compressed image, the
    /// compressor threads); buffers of `chunk` bytes, from `pool` (the buffers
    /// of the previous process's dump: handed back by `finish`) where it has them.
    pub fn start(out: PagesWriter, chunk: usize, pool: &mut Vec<MmapMut>) -> Result<Pipeline> {
        let mut compressors = Vec::new();
        for _ in 0..compressor_threads() {
            match out.chunk_compressor()? {
                Some(c) => compressors.push(c),
                None => break,
            }
        }
        let bufs = buffers();
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(bufs);
        let (free_tx, free_rx) = sync_channel::<MmapMut>(bufs);
        pool.retain(|b| b.len() >= chunk);
        for _ in 0..bufs {
            let b = match pool.pop() {
                Some(b) => b,
                None => MmapMut::map_anon(chunk.max(1)).map_err(|e| Error::io("mapping a page buffer", e))?,
            };
            let _ = free_tx.send(b);
        }
        let path = out.path().to_path_buf();
        let writer = |jobs: Box<dyn Iterator<Item = std::result::Result<Compressed, ImageError>> + Send>, spent| {
            std::thread::Builder::new()
                .name("crtool-pages".into())
                .spawn(move || write_in_order(out, jobs, free_tx, spent))
                .map_err(|e| Error::io("starting the page writer thread", e))
        };
        if compressors.is_empty() {
            let writer = writer(Box::new(jobs_rx.into_iter().map(|job| Ok(Compressed { job, stored: Vec::new() }))), None)?;
            return Ok(Pipeline { jobs: Some(jobs_tx), free: free_rx, next_seq: 0, writer: Some(writer), compressors: Vec::new() });
        }
        // Compressors take jobs from one queue; their output buffers come back
        // from the writer through `spent`.
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = channel::<std::result::Result<Compressed, ImageError>>();
        let (spent_tx, spent_rx) = channel::<Vec<u8>>();
        let spent_rx = Arc::new(Mutex::new(spent_rx));
        let mut handles = Vec::new();
        for mut c in compressors {
            let (jobs_rx, done_tx, spent_rx, path) = (jobs_rx.clone(), done_tx.clone(), spent_rx.clone(), path.clone());
            let compressor = std::thread::Builder::new().name("crtool-zstd".into()).spawn(move || {
                loop {
                    let job = match jobs_rx.lock().map(|r| r.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    // (A panic too ends as an error: the writer must not wait
                    // for this job forever.)
                    let compressed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut stored = Vec::with_capacity(job.parts.len());
                        for &(off, len) in &job.parts {
                            let mut out = spent_rx.lock().ok().and_then(|r| r.try_recv().ok()).unwrap_or_default();
                            c.compress_into(&job.buf[off..off + len], &mut out)?;
                            stored.push(out);
                        }
                        Ok(stored)
                    }));
                    let sent = match compressed {
                        Ok(Ok(stored)) => done_tx.send(Ok(Compressed { job, stored })),
                        Ok(Err(e)) => done_tx.send(Err(e)),
                        Err(_) => done_tx.send(Err(ImageError::Io { path: path.clone(), source: std::io::Error::other("a page compressor thread panicked") })),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
            handles.push(compressor.map_err(|e| Error::io("starting a page compressor thread", e))?);
        }
        drop(done_tx);
        let writer = writer(Box::new(done_rx.into_iter()), Some(spent_tx))?;
        Ok(Pipeline { jobs: Some(jobs_tx), free: free_rx, next_seq: 0, writer: Some(writer), compressors: handles })
    }

    /// An empty buffer to fill (waits for the writer to hand one back).
    pub fn buffer(&mut self) -> Result<MmapMut> {
        match self.free.recv() {
            Ok(b) => Ok(b),
            // The writer stopped: its error says why.
            Err(_) => Err(self.writer_error()),
        }
    }

    /// Queues `buf` (from `buffer`) to be stored as one chunk per part.
    pub fn submit(&mut self, buf: MmapMut, parts: Vec<(usize, usize)>) -> Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = self.jobs.as_ref().map(|j| j.send(Job { seq, buf, parts }).is_ok()).unwrap_or(false);
        if sent { Ok(()) } else { Err(self.writer_error()) }
    }

    fn writer_error(&mut self) -> Error {
        self.jobs = None;
        match self.join() {
            Some(Ok(Err(e))) => e.into(),
            Some(Err(_)) => Error::io("the page writer thread", std::io::Error::other("it panicked")),
            _ => Error::io("the page writer thread", std::io::Error::other("it stopped")),
        }
    }

    fn join(&mut self) -> Option<std::thread::Result<Written>> {
        for c in self.compressors.drain(..) {
            let _ = c.join();
        }
        self.writer.take().map(|w| w.join())
    }

    /// Waits for every queued chunk to be stored; the writer and where each chunk
    /// went, in submission order. The buffers go back to `pool`.
    pub fn finish(mut self, pool: &mut Vec<MmapMut>) -> Result<(PagesWriter, Vec<StoredChunk>)> {
        self.jobs = None;
        let joined = self.join();
        pool.extend(self.free.try_iter());
        match joined {
            Some(Ok(r)) => r.map_err(Error::from),
            Some(Err(_)) => Err(Error::io("the page writer thread", std::io::Error::other("it panicked"))),
            None => Err(Error::io("the page writer thread", std::io::Error::other("it stopped"))),
        }
    }
}

/// Stores the jobs in `seq` order (they may come in any): each part as it is
/// (`stored` empty: raw, or compressed by the writer itself) or as compressed.
/// Page buffers go back through `free`, compressed ones through `spent`.
fn write_in_order(mut out: PagesWriter, jobs: Box<dyn Iterator<Item = std::result::Result<Compressed, ImageError>> + Send>, free: SyncSender<MmapMut>, spent: Option<Sender<Vec<u8>>>) -> Written {
    let mut chunks = Vec::new();
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    for c in jobs {
        let c = c?;
        waiting.insert(c.job.seq, c);
        while let Some(c) = waiting.remove(&next) {
            next += 1;
            if c.stored.is_empty() {
                for &(off, len) in &c.job.parts {
                    chunks.push(out.append(&c.job.buf[off..off + len])?);
                }
            } else {
                for s in c.stored {
                    chunks.push(out.append_stored(&s)?);
                    if let Some(spent) = &spent {
                        let _ = spent.send(s);
                    }
                }
            }
            // (The dumper may have stopped taking buffers: it is done.)
            let _ = free.send(c.job.buf);
        }
    }
    Ok((out, chunks))
}

impl Drop for Pipeline {
    /// (A dump that failed: the threads end once their queues are drained.)
    fn drop(&mut self) {
        self.jobs = None;
        let _ = self.join();
    }
}
