//! The page image written on a thread of its own while the dumper reads the next
//! pages: compression (zstd), the CRCs and the writes of one pipe-full overlap
//! the parasite's vmsplice and the pipe read of the next. Buffers go round a
//! small pool (allocated once: fresh buffers would fault on every page), mapped
//! anonymous memory so that they are page-aligned (raw page images are written
//! with O_DIRECT, see images_format::PagesWriter).
//!
//! Chunks are stored exactly as a sequential writer would store them (one per
//! part, in order), so images stay byte-identical.

use crate::error::{Error, Result};
use images_format::{ImageError, PagesWriter, StoredChunk};
use memmap2::MmapMut;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Buffers in flight: one being filled, one being written, one spare.
const POOL: usize = 3;

/// A filled buffer and its parts (offset, length): one chunk each.
struct Job {
    buf: MmapMut,
    parts: Vec<(usize, usize)>,
}

pub struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<MmapMut>,
    writer: Option<JoinHandle<std::result::Result<(PagesWriter, Vec<StoredChunk>), ImageError>>>,
}

impl Pipeline {
    /// Starts the writer thread on `out`; buffers of `chunk` bytes, from `pool`
    /// (the buffers of the previous process's dump: handed back by `finish`)
    /// where it has them.
    pub fn start(out: PagesWriter, chunk: usize, pool: &mut Vec<MmapMut>) -> Result<Pipeline> {
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(POOL);
        let (free_tx, free_rx) = sync_channel::<MmapMut>(POOL);
        pool.retain(|b| b.len() >= chunk);
        for _ in 0..POOL {
            let b = match pool.pop() {
                Some(b) => b,
                None => MmapMut::map_anon(chunk.max(1)).map_err(|e| Error::io("mapping a page buffer", e))?,
            };
            let _ = free_tx.send(b);
        }
        let writer = std::thread::Builder::new()
            .name("crtool-pages".into())
            .spawn(move || {
                let mut out = out;
                let mut chunks = Vec::new();
                for job in jobs_rx {
                    for &(off, len) in &job.parts {
                        chunks.push(out.append(&job.buf[off..off + len])?);
                    }
                    // (The dumper may have stopped taking buffers: it is done.)
                    let _ = free_tx.send(job.buf);
                }
                Ok((out, chunks))
            })
            .map_err(|e| Error::io("starting the page writer thread", e))?;
        Ok(Pipeline { jobs: Some(jobs_tx), free: free_rx, writer: Some(writer) })
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
        let sent = self.jobs.as_ref().map(|j| j.send(Job { buf, parts }).is_ok()).unwrap_or(false);
        if sent { Ok(()) } else { Err(self.writer_error()) }
    }

    fn writer_error(&mut self) -> Error {
        self.jobs = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e.into(),
            Some(Err(_)) => Error::io("the page writer thread", std::io::Error::other("it panicked")),
            _ => Error::io("the page writer thread", std::io::Error::other("it stopped")),
        }
    }

    /// Waits for every queued chunk to be stored; the writer and where each chunk
    /// went, in submission order. The buffers go back to `pool`.
    pub fn finish(mut self, pool: &mut Vec<MmapMut>) -> Result<(PagesWriter, Vec<StoredChunk>)> {
        self.jobs = None;
        let joined = self.writer.take().map(|w| w.join());
        pool.extend(self.free.try_iter());
        match joined {
            Some(Ok(r)) => r.map_err(Error::from),
            Some(Err(_)) => Err(Error::io("the page writer thread", std::io::Error::other("it panicked"))),
            None => Err(Error::io("the page writer thread", std::io::Error::other("it stopped"))),
        }
    }
}

impl Drop for Pipeline {
    /// (A dump that failed: the writer ends once its queue is drained.)
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
