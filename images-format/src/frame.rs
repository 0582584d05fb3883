//! Framed image files: an 8-byte header (magic, version) followed by entries, each a
//! length-prefixed, CRC-protected protobuf message.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{FORMAT_VERSION, ImageError, ImageKind, pb};

/// Largest accepted entry payload; anything longer is treated as corruption.
pub const MAX_ENTRY_LEN: u32 = 64 << 20;
/// Size of the file header: magic and format version.
pub const HEADER_LEN: u64 = 8;
/// Size of an entry's frame header: payload length and CRC.
pub const FRAME_HEADER_LEN: u64 = 8;

/// Reads a file header into `buf` (whose length is the header size) and checks its
/// magic and version; `expected` is the kind the caller asked for, if any.
pub(crate) fn read_header(
    path: &Path,
    r: &mut impl Read,
    buf: &mut [u8],
    expected: Option<ImageKind>,
) -> Result<ImageKind, ImageError> {
    let n = read_full(r, buf).map_err(|e| ImageError::io(path, 0, None, e))?;
    let truncated = || ImageError::Truncated {
        path: path.to_path_buf(),
        offset: 0,
        entry: None,
    };
    if n < 4 {
        return Err(truncated());
    }
    // A foreign magic is reported even when the header is also short.
    let found = le_u32(buf, 0);
    let kind = ImageKind::from_magic(found)
        .filter(|k| expected.is_none_or(|e| e == *k))
        .ok_or_else(|| ImageError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected,
        })?;
    if n < buf.len().max(8) {
        return Err(truncated());
    }
    let version = le_u32(buf, 4);
    if version != FORMAT_VERSION {
        return Err(ImageError::BadVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(kind)
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes one framed image file entry by entry.
pub struct ImageWriter {
    path: PathBuf,
    kind: ImageKind,
    file: BufWriter<File>,
    offset: u64,
    entries: u64,
    buf: Vec<u8>,
    /// CRC32 of every byte written so far (for the inventory's manifest).
    hasher: crc32fast::Hasher,
}

impl ImageWriter {
    /// Creates (or truncates) `dir/kind.file_name(pid)` and writes its header.
    pub fn create(dir: &Path, kind: ImageKind, pid: u32) -> Result<Self, ImageError> {
        let path = dir.join(kind.file_name(pid));
        if !kind.is_framed() {
            return Err(ImageError::NotFramed { path, kind });
        }
        let file = File::create(&path).map_err(|e| ImageError::io(&path, 0, None, e))?;
        let mut file = BufWriter::new(file);
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&kind.magic().to_le_bytes());
        header[4..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.write_all(&header)
            .map_err(|e| ImageError::io(&path, 0, None, e))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        Ok(Self {
            path,
            kind,
            file,
            offset: HEADER_LEN,
            entries: 0,
            buf: Vec::new(),
            hasher,
        })
    }

    /// Appends one entry.
    pub fn write<M: prost::Message>(&mut self, m: &M) -> Result<(), ImageError> {
        let (offset, entry) = (self.offset, self.entries);
        self.buf.clear();
        m.encode(&mut self.buf).map_err(|e| ImageError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let len = u32::try_from(self.buf.len())
            .ok()
            .filter(|l| *l <= MAX_ENTRY_LEN)
            .ok_or_else(|| ImageError::TooLarge {
                path: self.path.clone(),
                offset,
                entry,
                len: self.buf.len() as u64,
            })?;
        let mut frame = [0u8; FRAME_HEADER_LEN as usize];
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..].copy_from_slice(&crc32fast::hash(&self.buf).to_le_bytes());
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.write_all(&self.buf))
            .map_err(|e| ImageError::io(&self.path, offset, Some(entry), e))?;
        self.hasher.update(&frame);
        self.hasher.update(&self.buf);
        self.offset += FRAME_HEADER_LEN + u64::from(len);
        self.entries += 1;
        Ok(())
    }

    /// The kind of image being written.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn flush(self) -> Result<(File, pb::ImageFile), ImageError> {
        let Self {
            path, file, offset, entries, hasher, ..
        } = self;
        let summary = summary(&path, offset, hasher.finalize(), entries);
        match file.into_inner() {
            Ok(f) => Ok((f, summary)),
            Err(e) => Err(ImageError::io(&path, offset, None, e.into_error())),
        }
    }

    /// Flushes buffered data to the file (no fsync); returns the file's manifest
    /// entry (name, size, CRC32, entries).
    pub fn finish(self) -> Result<pb::ImageFile, ImageError> {
        self.flush().map(|(_, s)| s)
    }

    /// Flushes buffered data and fsyncs the file.
    pub fn finish_sync(self) -> Result<pb::ImageFile, ImageError> {
        let path = self.path.clone();
        let (file, s) = self.flush()?;
        file.sync_all()
            .map_err(|source| ImageError::Io { path, source })?;
        Ok(s)
    }
}

/// A manifest entry for the file at `path`.
pub(crate) fn summary(path: &Path, size: u64, crc32: u32, entries: u64) -> pb::ImageFile {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    pb::ImageFile { name, size, crc32, entries }
}

/// Writes `entries` as a complete image file `dir/kind.file_name(pid)`.
pub fn write_entries<M: prost::Message>(
    dir: &Path,
    kind: ImageKind,
    pid: u32,
    entries: &[M],
) -> Result<pb::ImageFile, ImageError> {
    let mut w = ImageWriter::create(dir, kind, pid)?;
    entries.iter().try_for_each(|m| w.write(m))?;
    w.finish()
}

/// Reads a framed image file entry by entry, checking framing and CRCs.
pub struct ImageReader {
    path: PathBuf,
    kind: ImageKind,
    file: BufReader<File>,
    file_len: u64,
    offset: u64,
    entry: u64,
    buf: Vec<u8>,
}

impl ImageReader {
    /// Opens `dir/kind.file_name(pid)`, checking that its magic is `kind`'s.
    pub fn open(dir: &Path, kind: ImageKind, pid: u32) -> Result<Self, ImageError> {
        let path = dir.join(kind.file_name(pid));
        if !kind.is_framed() {
            return Err(ImageError::NotFramed { path, kind });
        }
        Self::open_inner(path, Some(kind))
    }

    /// Opens any framed image file, taking its kind from the magic.
    pub fn open_path(path: &Path) -> Result<(Self, ImageKind), ImageError> {
        let r = Self::open_inner(path.to_path_buf(), None)?;
        let kind = r.kind;
        Ok((r, kind))
    }

    fn open_inner(path: PathBuf, expected: Option<ImageKind>) -> Result<Self, ImageError> {
        let file = File::open(&path).map_err(|e| ImageError::io(&path, 0, None, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io(&path, 0, None, e))?
            .len();
        let mut file = BufReader::new(file);
        let kind = read_header(&path, &mut file, &mut [0u8; HEADER_LEN as usize], expected)?;
        if !kind.is_framed() {
            return Err(ImageError::NotFramed { path, kind });
        }
        Ok(Self {
            path,
            kind,
            file,
            file_len,
            offset: HEADER_LEN,
            entry: 0,
            buf: Vec::new(),
        })
    }

    /// The kind of image, from its magic.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries read so far.
    pub fn entries_read(&self) -> u64 {
        self.entry
    }

    /// Reads the next frame into `self.buf`; returns its offset and index.
    fn read_frame(&mut self) -> Result<Option<(u64, u64)>, ImageError> {
        let (offset, entry) = (self.offset, self.entry);
        let trunc = |path: &Path| ImageError::Truncated {
            path: path.to_path_buf(),
            offset,
            entry: Some(entry),
        };
        let mut frame = [0u8; FRAME_HEADER_LEN as usize];
        let n = read_full(&mut self.file, &mut frame)
            .map_err(|e| ImageError::io(&self.path, offset, Some(entry), e))?;
        if n == 0 {
            return Ok(None);
        }
        if n < frame.len() {
            return Err(trunc(&self.path));
        }
        let (len, crc) = (le_u32(&frame, 0), le_u32(&frame, 4));
        if len > MAX_ENTRY_LEN {
            return Err(ImageError::TooLarge {
                path: self.path.clone(),
                offset,
                entry,
                len: len.into(),
            });
        }
        let payload_end = offset + FRAME_HEADER_LEN + u64::from(len);
        if payload_end > self.file_len {
            return Err(trunc(&self.path));
        }
        self.buf.clear();
        self.buf.resize(len as usize, 0);
        self.file
            .read_exact(&mut self.buf)
            .map_err(|e| ImageError::io(&self.path, offset, Some(entry), e))?;
        if crc32fast::hash(&self.buf) != crc {
            return Err(ImageError::Crc {
                path: self.path.clone(),
                offset,
                entry,
            });
        }
        self.offset = payload_end;
        self.entry += 1;
        Ok(Some((offset, entry)))
    }

    /// Reads and decodes the next entry; `None` at the end of the file.
    pub fn next<M: prost::Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        let Some((offset, entry)) = self.read_frame()? else {
            return Ok(None);
        };
        M::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|source| ImageError::Decode {
                path: self.path.clone(),
                offset,
                entry,
                message: self.kind.message_name().unwrap_or("entry").to_owned(),
                source,
            })
    }

    /// Reads the next entry's payload (CRC checked, not decoded) with the offset of its
    /// frame; `None` at the end of the file.
    pub fn next_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>, ImageError> {
        Ok(self
            .read_frame()?
            .map(|(offset, _)| (offset, std::mem::take(&mut self.buf))))
    }
}

/// Reads every entry of `dir/kind.file_name(pid)`.
pub fn read_entries<M: prost::Message + Default>(
    dir: &Path,
    kind: ImageKind,
    pid: u32,
) -> Result<Vec<M>, ImageError> {
    let mut r = ImageReader::open(dir, kind, pid)?;
    let mut out = Vec::new();
    while let Some(m) = r.next()? {
        out.push(m);
    }
    Ok(out)
}

/// Reads the single entry of `dir/kind.file_name(pid)`; zero or several entries is an error.
pub fn read_one<M: prost::Message + Default>(
    dir: &Path,
    kind: ImageKind,
    pid: u32,
) -> Result<M, ImageError> {
    let mut r = ImageReader::open(dir, kind, pid)?;
    let first = r.next::<M>()?;
    while r.read_frame()?.is_some() {}
    match first {
        Some(m) if r.entry == 1 => Ok(m),
        _ => Err(ImageError::Count {
            path: r.path,
            expected: 1,
            found: r.entry,
        }),
    }
}
