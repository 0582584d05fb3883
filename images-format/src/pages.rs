//! `pages-PID.img`: a 4096-byte header (magic, version, compression, zeros) followed by
//! page data chunks back to back, each raw or one zstd frame. Chunks are located by the
//! pagemap entries, which also carry each chunk's CRC. Raw files are written with
//! O_DIRECT where the filesystem has it (every raw chunk is whole pages at a
//! page-aligned offset).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::frame::{le_u32, read_header};
use crate::{FORMAT_VERSION, ImageError, ImageKind};

/// Size of a page, the unit of page data.
pub const PAGE_SIZE: u64 = 4096;
/// Size of the pages file header; chunk data starts at this offset.
pub const PAGES_HEADER_LEN: u64 = 4096;
/// zstd level used by [`PagesWriter::create`].
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How page data chunks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Raw,
    Zstd,
}

impl Compression {
    /// The on-disk code (also used by `Inventory.page_compression`): 0 raw, 1 zstd.
    pub fn code(self) -> u32 {
        match self {
            Self::Raw => 0,
            Self::Zstd => 1,
        }
    }

    /// Inverse of [`Compression::code`].
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// "raw" or "zstd".
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Zstd => "zstd",
        }
    }
}

/// Where one appended chunk landed, as recorded in a pagemap entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    pub offset: u64,
    pub stored_len: u64,
    /// CRC32 of the stored (possibly compressed) bytes.
    pub crc32: u32,
}

/// Where the bytes of a pages file go when it is not written here (a page
/// server, which writes the file on its side).
pub trait RemoteSink: Send {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// The file is complete: `len` bytes with CRC32 `crc` (for the other end to
    /// check); returns once it has them safely.
    fn finish(&mut self, len: u64, crc: u32) -> io::Result<()>;
}

/// Where a pages file's bytes go.
enum Sink {
    /// To a page server.
    Remote(Box<dyn RemoteSink>),
    /// Through the page cache (zstd chunks; filesystems without O_DIRECT).
    Buffered(BufWriter<File>),
    /// O_DIRECT: raw chunks of whole pages go straight to the disk, skipping the
    /// page cache (whose allocation of fresh pages dominated dumps). See `Direct`.
    Direct(Direct),
}

/// A file written with O_DIRECT while `on`: large page-aligned writes go as
/// they are, small ones are gathered in a page-aligned staging buffer (an
/// O_DIRECT write is synchronous: thousands of one-page ones would each wait
/// for the disk). Data that is not whole pages turns O_DIRECT off for the rest
/// of the file.
struct Direct {
    file: File,
    on: bool,
    /// Staging: `stage[at..at + STAGE]` is page-aligned; `staged` bytes of it used.
    stage: Vec<u8>,
    at: usize,
    staged: usize,
}

/// The staging buffer's size, and the size from which writes skip it.
const STAGE: usize = 1 << 20;

impl Direct {
    fn new(file: File) -> Direct {
        Direct { file, on: true, stage: Vec::new(), at: 0, staged: 0 }
    }

    fn raw_write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            if self.on && ((rest.as_ptr() as usize) % PAGE_SIZE as usize != 0 || rest.len() % PAGE_SIZE as usize != 0) {
                direct_off(&self.file)?;
                self.on = false;
            }
            match self.file.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.on && e.raw_os_error() == Some(libc::EINVAL) => {
                    direct_off(&self.file)?;
                    self.on = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn flush_stage(&mut self) -> io::Result<()> {
        if self.staged > 0 {
            let (at, n) = (self.at, self.staged);
            self.staged = 0;
            let stage = std::mem::take(&mut self.stage);
            let r = self.raw_write(&stage[at..at + n]);
            self.stage = stage;
            r?;
        }
        Ok(())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let whole_pages = data.len() % PAGE_SIZE as usize == 0;
        if !self.on || !whole_pages || data.len() >= STAGE {
            self.flush_stage()?;
            return self.raw_write(data);
        }
        if self.stage.is_empty() {
            self.stage = vec![0u8; STAGE + PAGE_SIZE as usize];
            self.at = self.stage.as_ptr().align_offset(PAGE_SIZE as usize);
        }
        if self.staged + data.len() > STAGE {
            self.flush_stage()?;
        }
        let (at, n) = (self.at + self.staged, data.len());
        self.stage[at..at + n].copy_from_slice(data);
        self.staged += n;
        Ok(())
    }
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Buffered(w) => w.write_all(data),
            Sink::Remote(r) => r.write_all(data),
            Sink::Direct(d) => d.write_all(data),
        }
    }

    /// The file written here (none for a page server's, which `finish` closes).
    fn into_file(self, len: u64, crc: u32) -> io::Result<Option<File>> {
        match self {
            Sink::Buffered(w) => w.into_inner().map(Some).map_err(|e| e.into_error()),
            Sink::Direct(mut d) => d.flush_stage().map(|()| Some(d.file)),
            Sink::Remote(mut r) => r.finish(len, crc).map(|()| None),
        }
    }
}

/// Clears O_DIRECT on `f`.
fn direct_off(f: &File) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
    Ok(())
}

/// Compresses page data chunks as a zstd [`PagesWriter`] does (one frame per
/// chunk, at the writer's level: the same bytes on any thread).
pub struct ChunkCompressor {
    c: zstd::bulk::Compressor<'static>,
    /// The pages file (for errors).
    path: PathBuf,
}

impl ChunkCompressor {
    /// `raw` compressed into `out` (cleared first; its capacity is reused).
    pub fn compress_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), ImageError> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        self.c.compress_to_buffer(raw, out).map(drop).map_err(|e| ImageError::io(&self.path, 0, None, e))
    }
}

/// Appends page data chunks to a new pages file.
pub struct PagesWriter {
    path: PathBuf,
    file: Sink,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// The zstd level (for compression on other threads, see [`ChunkCompressor`]).
    level: i32,
    offset: u64,
    buf: Vec<u8>,
    /// CRC32 of the whole file so far (chunk CRCs combined into it).
    hasher: crc32fast::Hasher,
    chunks: u64,
}

impl PagesWriter {
    /// Creates (or truncates) `dir/pages-PID.img`; zstd uses [`DEFAULT_ZSTD_LEVEL`].
    pub fn create(dir: &Path, pid: u32, compression: Compression) -> Result<Self, ImageError> {
        Self::with_level(dir, pid, compression, DEFAULT_ZSTD_LEVEL)
    }

    /// Like [`PagesWriter::create`] with an explicit zstd level (ignored for raw).
    pub fn with_level(
        dir: &Path,
        pid: u32,
        compression: Compression,
        level: i32,
    ) -> Result<Self, ImageError> {
        Self::open(dir, pid, compression, level, None)
    }

    /// Like [`PagesWriter::create`], its bytes sent to `sink` (a page server)
    /// instead of a file here; `dir/pages-PID.img` is the name it is known by.
    pub fn remote(dir: &Path, pid: u32, compression: Compression, sink: Box<dyn RemoteSink>) -> Result<Self, ImageError> {
        Self::open(dir, pid, compression, DEFAULT_ZSTD_LEVEL, Some(sink))
    }

    fn open(
        dir: &Path,
        pid: u32,
        compression: Compression,
        level: i32,
        remote: Option<Box<dyn RemoteSink>>,
    ) -> Result<Self, ImageError> {
        let path = dir.join(ImageKind::Pages.file_name(pid));
        let io_err = |path: &Path, e| ImageError::io(path, 0, None, e);
        let compressor = match compression {
            Compression::Raw => None,
            Compression::Zstd => {
                Some(zstd::bulk::Compressor::new(level).map_err(|e| io_err(&path, e))?)
            }
        };
        let mut file = match (remote, compression) {
            (Some(r), _) => Sink::Remote(r),
            (None, compression) => match compression {
            Compression::Raw => {
                use std::os::unix::fs::OpenOptionsExt;
                let direct = std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&path);
                match direct {
                    Ok(f) => Sink::Direct(Direct::new(f)),
                    // (tmpfs and others: no O_DIRECT.)
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Sink::Buffered(BufWriter::new(File::create(&path).map_err(|e| io_err(&path, e))?)),
                    Err(e) => return Err(io_err(&path, e)),
                }
            }
            Compression::Zstd => Sink::Buffered(BufWriter::new(File::create(&path).map_err(|e| io_err(&path, e))?)),
            },
        };
        // (Page-aligned, for O_DIRECT.)
        let mut aligned = [0u8; 2 * PAGES_HEADER_LEN as usize];
        let at = aligned.as_ptr().align_offset(PAGE_SIZE as usize);
        let header = &mut aligned[at..at + PAGES_HEADER_LEN as usize];
        header[..4].copy_from_slice(&ImageKind::Pages.magic().to_le_bytes());
        header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&compression.code().to_le_bytes());
        file.write_all(header).map_err(|e| io_err(&path, e))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(header);
        Ok(Self {
            path,
            file,
            compressor,
            level,
            offset: PAGES_HEADER_LEN,
            buf: Vec::new(),
            hasher,
            chunks: 0,
        })
    }

    /// Stores `raw` as one chunk (compressed if the file is zstd) and says where.
    pub fn append(&mut self, raw: &[u8]) -> Result<StoredChunk, ImageError> {
        let offset = self.offset;
        let io_err = |path: &Path, e| ImageError::io(path, offset, None, e);
        let mut buf = std::mem::take(&mut self.buf);
        let r = match &mut self.compressor {
            None => self.append_stored(raw),
            Some(c) => {
                buf.clear();
                buf.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                match c.compress_to_buffer(raw, &mut buf) {
                    Ok(_) => self.append_stored(&buf),
                    Err(e) => Err(io_err(&self.path, e)),
                }
            }
        };
        self.buf = buf;
        r
    }

    /// A compressor that makes, on another thread, exactly the chunks `append`
    /// would store (None for a raw file); what it makes goes to `append_stored`.
    pub fn chunk_compressor(&self) -> Result<Option<ChunkCompressor>, ImageError> {
        if self.compressor.is_none() {
            return Ok(None);
        }
        let c = zstd::bulk::Compressor::new(self.level).map_err(|e| ImageError::io(&self.path, self.offset, None, e))?;
        Ok(Some(ChunkCompressor { c, path: self.path.clone() }))
    }

    /// Stores a chunk as it is to be stored: `raw` data for a raw file, what a
    /// [`ChunkCompressor`] made of it for a zstd one.
    pub fn append_stored(&mut self, stored: &[u8]) -> Result<StoredChunk, ImageError> {
        let offset = self.offset;
        let io_err = |path: &Path, e| ImageError::io(path, offset, None, e);
        self.file
            .write_all(stored)
            .map_err(|e| io_err(&self.path, e))?;
        let mut h = crc32fast::Hasher::new();
        h.update(stored);
        let chunk = StoredChunk {
            offset,
            stored_len: stored.len() as u64,
            crc32: h.clone().finalize(),
        };
        self.hasher.combine(&h);
        self.chunks += 1;
        self.offset += chunk.stored_len;
        Ok(chunk)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current file size, i.e. the offset the next chunk will get.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn flush(self) -> Result<(Option<File>, crate::pb::ImageFile), ImageError> {
        let Self {
            path, file, offset, hasher, chunks, ..
        } = self;
        let crc = hasher.finalize();
        let summary = crate::frame::summary(&path, offset, crc, chunks);
        match file.into_file(offset, crc) {
            Ok(f) => Ok((f, summary)),
            Err(e) => Err(ImageError::io(&path, offset, None, e)),
        }
    }

    /// Flushes buffered data to the file (no fsync); returns its manifest entry.
    pub fn finish(self) -> Result<crate::pb::ImageFile, ImageError> {
        self.flush().map(|(_, s)| s)
    }

    /// Flushes buffered data and fsyncs the file.
    pub fn finish_sync(self) -> Result<crate::pb::ImageFile, ImageError> {
        let path = self.path.clone();
        let (file, s) = self.flush()?;
        if let Some(file) = file {
            file.sync_all()
                .map_err(|source| ImageError::Io { path, source })?;
        }
        Ok(s)
    }
}

/// Random access to the chunks of a pages file.
pub struct PagesReader {
    path: PathBuf,
    file: File,
    file_len: u64,
    compression: Compression,
    decompressor: zstd::bulk::Decompressor<'static>,
    buf: Vec<u8>,
}

/// Reads `[pos, end)` of a file through `read_at`, feeding a CRC as it goes.
struct RegionReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    crc: crc32fast::Hasher,
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.crc.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl PagesReader {
    /// Opens `dir/pages-PID.img` and checks its header.
    pub fn open(dir: &Path, pid: u32) -> Result<Self, ImageError> {
        Self::open_path(&dir.join(ImageKind::Pages.file_name(pid)))
    }

    /// Opens a pages file by path and checks its header.
    pub fn open_path(path: &Path) -> Result<Self, ImageError> {
        let path = path.to_path_buf();
        let mut file = File::open(&path).map_err(|e| ImageError::io(&path, 0, None, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(&path, 0, None, e))?
            .len();
        let mut header = [0u8; PAGES_HEADER_LEN as usize];
        read_header(&path, &mut file, &mut header, Some(ImageKind::Pages))?;
        let code = le_u32(&header, 8);
        let compression = Compression::from_code(code).ok_or_else(|| ImageError::Compression {
            path: path.clone(),
            found: code,
        })?;
        if let Some(i) = header[12..].iter().position(|b| *b != 0) {
            return Err(ImageError::Reserved {
                path,
                offset: 12 + i as u64,
            });
        }
        let decompressor = zstd::bulk::Decompressor::new().map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            file,
            file_len,
            compression,
            decompressor,
            buf: Vec::new(),
        })
    }

    /// How the chunks of this file are stored.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of bytes of chunk data (file size minus header).
    pub fn data_len(&self) -> u64 {
        self.file_len.saturating_sub(PAGES_HEADER_LEN)
    }

    /// Checks that `[offset, offset + len)` lies in the chunk area; returns its length.
    fn check_range(&self, offset: u64, len: u64) -> Result<usize, ImageError> {
        let end = offset.checked_add(len);
        match (end, usize::try_from(len)) {
            (Some(end), Ok(l)) if offset >= PAGES_HEADER_LEN && end <= self.file_len => Ok(l),
            _ => Err(self.range_error(offset, len)),
        }
    }

    fn range_error(&self, offset: u64, len: u64) -> ImageError {
        ImageError::ChunkRange {
            path: self.path.clone(),
            offset,
            len,
            file_len: self.file_len,
        }
    }

    fn read_error(&self, offset: u64, len: u64, e: io::Error) -> ImageError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => self.range_error(offset, len),
            _ => ImageError::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }

    fn size_error(&self, offset: u64, expected: u64, found: u64) -> ImageError {
        ImageError::PageSize {
            path: self.path.clone(),
            offset,
            expected,
            found,
        }
    }

    /// Reads the chunk at `offset` (`stored_len` bytes, CRC `crc32` as recorded in the
    /// pagemap) into `dst`, which must be exactly the chunk's page data size.
    ///
    /// Raw chunks are read straight into `dst`; zstd chunks go through a buffer that is
    /// reused across calls.
    pub fn read_into(
        &mut self,
        offset: u64,
        stored_len: u64,
        crc32: u32,
        dst: &mut [u8],
    ) -> Result<(), ImageError> {
        let len = self.check_range(offset, stored_len)?;
        let expected = dst.len() as u64;
        if self.compression == Compression::Raw {
            if len != dst.len() {
                return Err(self.size_error(offset, expected, stored_len));
            }
            self.file
                .read_exact_at(dst, offset)
                .map_err(|e| self.read_error(offset, stored_len, e))?;
            if crc32fast::hash(dst) != crc32 {
                return Err(ImageError::ChunkCrc {
                    path: self.path.clone(),
                    offset,
                });
            }
            return Ok(());
        }
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let read = self.file.read_exact_at(&mut self.buf[..len], offset);
        read.map_err(|e| self.read_error(offset, stored_len, e))?;
        let src = &self.buf[..len];
        if crc32fast::hash(src) != crc32 {
            return Err(ImageError::ChunkCrc {
                path: self.path.clone(),
                offset,
            });
        }
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(src) {
            if n != expected {
                return Err(self.size_error(offset, expected, n));
            }
        }
        let n = self
            .decompressor
            .decompress_to_buffer(src, dst)
            .map_err(|source| ImageError::Decompress {
                path: self.path.clone(),
                offset,
                source,
            })?;
        if n as u64 != expected {
            return Err(self.size_error(offset, expected, n as u64));
        }
        Ok(())
    }

    /// Checks a chunk without a destination buffer: its range, its CRC, and that it
    /// holds exactly `data_len` bytes of page data (decompressing zstd chunks in a
    /// stream). Memory use is bounded whatever the recorded sizes.
    pub fn verify_chunk(
        &mut self,
        offset: u64,
        stored_len: u64,
        crc32: u32,
        data_len: u64,
    ) -> Result<(), ImageError> {
        self.check_range(offset, stored_len)?;
        let region = |pos| RegionReader {
            file: &self.file,
            pos,
            end: offset + stored_len,
            crc: crc32fast::Hasher::new(),
        };
        // First pass: range and CRC of the stored bytes.
        let mut stored = region(offset);
        io::copy(&mut stored, &mut io::sink())
            .map_err(|e| self.read_error(offset, stored_len, e))?;
        if stored.crc.finalize() != crc32 {
            return Err(ImageError::ChunkCrc {
                path: self.path.clone(),
                offset,
            });
        }
        // Second pass (zstd): count the decompressed bytes, stopping past `data_len`.
        let found = match self.compression {
            Compression::Raw => stored_len,
            Compression::Zstd => zstd::stream::read::Decoder::new(region(offset))
                .and_then(|d| io::copy(&mut d.take(data_len.saturating_add(1)), &mut io::sink()))
                .map_err(|source| ImageError::Decompress {
                    path: self.path.clone(),
                    offset,
                    source,
                })?,
        };
        if found != data_len {
            return Err(ImageError::PageSize {
                path: self.path.clone(),
                offset,
                expected: data_len,
                found,
            });
        }
        Ok(())
    }
}
