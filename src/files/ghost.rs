//! Ghost files: files the tree has open or mapped whose name was deleted. Dump saves
//! their data (up to `--ghost-limit` each, CRIU's default 1 MiB; holes stay holes),
//! mode, owner and mtime; restore makes each again under its old path (or, if
//! something else took that name, a temporary one beside it), the tree opens and
//! maps it from there, and crtool deletes it again before the tree runs.

use crate::error::{Error, Result};
use images_format::pb;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

/// The extended attribute that marks a ghost file made by a restore (so that one
/// left by a restore killed with SIGKILL is known as such and replaced).
const MARK: &str = "user.crtool.ghost";

/// CRIU's default `--ghost-limit`.
pub const DEFAULT_LIMIT: u64 = 1 << 20;

/// The ghost files seen so far in the dump, by (path, inode).
pub struct GhostTable {
    pub files: BTreeMap<(String, u64), pb::GhostFile>,
    pub chunks: Vec<pb::GhostChunk>,
    pub limit: u64,
    /// --link-remap: a deleted file with another name goes by a hard link.
    pub link_remap: bool,
    /// The links this dump made (removed if it fails).
    links_made: Vec<PathBuf>,
    /// Part of the links' names that tells dumps into different directories apart
    /// (so that restoring one does not remove another's link).
    pub link_tag: String,
}

impl Default for GhostTable {
    fn default() -> Self {
        GhostTable { files: BTreeMap::new(), chunks: Vec::new(), limit: DEFAULT_LIMIT, link_remap: false, links_made: Vec::new(), link_tag: String::new() }
    }
}

/// The name of the link-remap link of deleted file `path` (inode `ino`) for a dump
/// tagged `tag`: beside it, so on its filesystem.
fn link_remap_path(path: &str, ino: u64, tag: &str) -> PathBuf {
    PathBuf::from(path).with_file_name(format!(".crtool-link-remap.{ino}.{tag}"))
}

/// The tag of a dump into `dir` (see `GhostTable::link_tag`): the same for every
/// dump into that directory, so that its images stay reproducible.
pub fn link_tag(dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!("{:08x}", crc32fast::hash(dir.to_string_lossy().as_bytes()))
}

impl GhostTable {
    /// Records the deleted file `path` open as `f` (once per file). Refused: a file
    /// that still has another name (CRIU's --link-remap), one larger than the
    /// limit, anything but a regular file.
    pub fn record(&mut self, pid: i32, fd: Option<i32>, path: &str, f: &std::fs::File) -> Result<()> {
        let md = f.metadata().map_err(|e| Error::io(path, e))?;
        let key = (path.to_string(), md.ino());
        if self.files.contains_key(&key) {
            return Ok(());
        }
        let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd, what, hint: Some(hint) };
        if !md.file_type().is_file() {
            return Err(refuse(format!("deleted {path} is not a regular file"), "only deleted regular files are supported"));
        }
        if !std::path::Path::new(path).parent().is_some_and(|d| d.is_dir()) {
            return Err(refuse(format!("deleted file {path}: its directory was removed too"), "deleted files are made again in their directory, which must exist"));
        }
        let mut g = pb::GhostFile { path: path.to_string(), ino: md.ino(), mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), size: md.size(), mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(), link_remap: String::new() };
        if md.nlink() > 0 {
            if !self.link_remap {
                return Err(refuse(format!("{path} was deleted but the file has {} other name(s)", md.nlink()), "dump with --link-remap to take it along by a hard link beside its old path"));
            }
            let link = link_remap_path(path, md.ino(), &self.link_tag);
            self.make_link(f, &link, md.ino()).map_err(|e| refuse(format!("deleted file {path} (with another name): cannot link it as {}: {e}", link.display()), "the directory must be writable by crtool"))?;
            g.link_remap = link.to_string_lossy().into_owned();
            g.size = 0;
            g.mtime_ns = 0;
            self.files.insert(key, g);
            return Ok(());
        }
        if md.size() > self.limit {
            return Err(refuse(format!("deleted file {path} holds {} bytes, more than the ghost limit of {}", md.size(), self.limit), "raise --ghost-limit to save it in the images"));
        }
        for (offset, data) in super::memfd::extents(pid, path, f, md.size())? {
            self.chunks.push(pb::GhostChunk { path: path.to_string(), ino: md.ino(), offset, data });
        }
        self.files.insert(key, g);
        Ok(())
    }

    /// Links the open file `f` as `link` (linkat of /proc/self/fd/N, which follows
    /// to the file even though its name is gone). A link already there to the same
    /// inode (an earlier dump's) is used as it is.
    fn make_link(&mut self, f: &std::fs::File, link: &std::path::Path, ino: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.ino() == ino => return Ok(()),
            Ok(_) => return Err(std::io::Error::other("another file has that name")),
            Err(_) => {}
        }
        let src = format!("/proc/self/fd/{}", f.as_raw_fd());
        nix::unistd::linkat(nix::fcntl::AT_FDCWD, src.as_str(), nix::fcntl::AT_FDCWD, link, nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW)?;
        self.links_made.push(link.to_path_buf());
        Ok(())
    }

    /// Removes the links this dump made (after a failed dump).
    pub fn remove_links(&mut self) {
        for l in self.links_made.drain(..) {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// Removes the link-remap links of `files` (once a restore succeeded: the restored
/// tree holds the files).
pub fn remove_link_remaps(files: &[pb::GhostFile]) {
    for f in files.iter().filter(|f| !f.link_remap.is_empty()) {
        let _ = std::fs::remove_file(&f.link_remap);
    }
}

/// The ghost files of the images, made again for the tree to open and map; they are
/// deleted when this is dropped (once the tree holds them, or the restore failed).
#[derive(Default)]
pub struct Ghosts(BTreeMap<(String, u64), PathBuf>, std::cell::Cell<bool>, u32);

impl Ghosts {
    pub fn create(files: &[pb::GhostFile], chunks: &[pb::GhostChunk]) -> Result<Ghosts> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut g = Ghosts(BTreeMap::new(), std::cell::Cell::new(false), std::process::id());
        let mut open = BTreeMap::new();
        for f in files {
            let orig = PathBuf::from(&f.path);
            let fail = |e: std::io::Error| Error::Reported(format!("cannot make the deleted file {} again: {e}", f.path));
            if !f.link_remap.is_empty() {
                // The file itself, by its link: linked under the old name (or beside
                // it) for the tree to open, then unlinked from there like a ghost.
                let fail = |e: std::io::Error| Error::Reported(format!("cannot link the deleted file {} again from {}: {e} (was the link removed, or the images restored already?)", f.path, f.link_remap));
                // Still the file that was dumped?
                match std::fs::symlink_metadata(&f.link_remap) {
                    Ok(m) if m.ino() == f.ino => {}
                    Ok(_) => return Err(Error::Reported(format!("the link {} of the deleted file {} is another file now", f.link_remap, f.path))),
                    Err(e) => return Err(fail(e)),
                }
                let path = match std::fs::hard_link(&f.link_remap, &orig) {
                    Ok(()) => orig.clone(),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let name = orig.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        let tmp = orig.with_file_name(format!(".crtool-ghost-{}-{name}", f.ino));
                        let _ = std::fs::remove_file(&tmp);
                        std::fs::hard_link(&f.link_remap, &tmp).map_err(fail)?;
                        tmp
                    }
                    Err(e) => return Err(fail(e)),
                };
                g.0.insert((f.path.clone(), f.ino), path);
                continue;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true).mode(0o600).custom_flags(libc::O_CLOEXEC);
            // Under its old name if that is free (its fds and mappings show that
            // name), else a temporary one beside it.
            // A file there marked as crtool's is left from a restore that was killed
            // before it could delete it: it goes.
            if crate::sys::fd::has_xattr(&orig, MARK) {
                let _ = std::fs::remove_file(&orig);
            }
            let (path, file) = match opts.open(&orig) {
                Ok(file) => (orig.clone(), file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let name = orig.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let tmp = orig.with_file_name(format!(".crtool-ghost-{}-{name}", f.ino));
                    let _ = std::fs::remove_file(&tmp);
                    (tmp.clone(), opts.open(&tmp).map_err(fail)?)
                }
                Err(e) => return Err(fail(e)),
            };
            let _ = crate::sys::fd::set_xattr(&file, MARK);
            g.0.insert((f.path.clone(), f.ino), path);
            file.set_len(f.size).map_err(fail)?;
            open.insert((f.path.clone(), f.ino), (file, f.clone()));
        }
        for c in chunks {
            let (file, _) = open.get(&(c.path.clone(), c.ino)).ok_or_else(|| Error::BadImage { file: "ghostdata.img".into(), msg: format!("data of unknown ghost file {}", c.path) })?;
            file.write_all_at(&c.data, c.offset).map_err(|e| Error::Reported(format!("writing the deleted file {} again: {e}", c.path)))?;
        }
        for (file, f) in open.into_values() {
            let fail = |e: std::io::Error| Error::Reported(format!("the deleted file {}: {e}", f.path));
            std::os::unix::fs::fchown(&file, Some(f.uid), Some(f.gid)).map_err(fail)?;
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(f.mode)).map_err(fail)?;
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(f.mtime_ns.max(0) as u64);
            file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t)).map_err(fail)?;
        }
        Ok(g)
    }

    /// Deletes the files again (once every task has them open or mapped).
    pub fn remove(&self) {
        if !self.1.replace(true) {
            for p in self.0.values() {
                // The open files keep no trace of crtool's mark.
                crate::sys::fd::remove_xattr(p, MARK);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Where ghost `path` (inode `ino` at dump) is now.
    pub fn path(&self, path: &str, ino: u64) -> Option<String> {
        self.0.get(&(path.to_string(), ino)).map(|p| p.to_string_lossy().into_owned())
    }
}

impl Drop for Ghosts {
    /// In crtool (forked tasks never drop it): the files go again.
    fn drop(&mut self) {
        // Only crtool itself, not a forked task unwinding through its copy.
        if std::process::id() == self.2 {
            self.remove();
        }
    }
}

/// Removed working directories, made again (empty, mode and owner as they were)
/// for the tasks to enter, and removed again before the tree runs (or when the
/// restore fails).
#[derive(Default)]
pub struct GhostDirs(Vec<PathBuf>, u32);

impl GhostDirs {
    /// Makes each removed cwd of `cores` again — under its path, or beside it if
    /// the name was taken since — and points the cores at it.
    pub fn create(cores: &mut [&mut pb::TaskCore]) -> Result<GhostDirs> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mut g = GhostDirs(Vec::new(), std::process::id());
        let mut made: BTreeMap<(String, u64), PathBuf> = BTreeMap::new();
        for core in cores.iter_mut() {
            let Some(d) = core.cwd_deleted.clone() else { continue };
            let key = (core.cwd.clone(), d.ino);
            let path = match made.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let orig = PathBuf::from(&core.cwd);
                    let mut b = std::fs::DirBuilder::new();
                    b.mode(0o700);
                    let path = match b.create(&orig) {
                        Ok(()) => orig,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            let name = orig.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                            let tmp = orig.with_file_name(format!(".crtool-ghost-{}-{name}", d.ino));
                            b.create(&tmp).map_err(|e| Error::Reported(format!("cannot make the removed working directory {} again: {e}", core.cwd)))?;
                            tmp
                        }
                        Err(e) => return Err(Error::Reported(format!("cannot make the removed working directory {} again: {e}", core.cwd))),
                    };
                    g.0.push(path.clone());
                    let fail = |e: std::io::Error| Error::Reported(format!("the removed working directory {}: {e}", core.cwd));
                    std::os::unix::fs::lchown(&path, Some(d.uid), Some(d.gid)).map_err(fail)?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode)).map_err(fail)?;
                    made.insert(key, path.clone());
                    path
                }
            };
            core.cwd = path.to_string_lossy().into_owned();
        }
        Ok(g)
    }

    /// Removes them (every task has entered its own).
    pub fn remove(&mut self) {
        for p in self.0.drain(..) {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

impl Drop for GhostDirs {
    fn drop(&mut self) {
        if std::process::id() == self.1 {
            self.remove();
        }
    }
}
