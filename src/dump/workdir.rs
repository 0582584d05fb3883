//! Images are written into a working directory next to the target and only take
//! the target's place once the dump has fully succeeded: a failed or interrupted
//! dump never touches an earlier checkpoint in the target directory, and the target
//! never holds a mix of two dumps (the inventory, with the manifest of every other
//! file, is moved in last).
//!
//! Only crtool's own image files (`core-42.img`, `inventory.img`, ... as
//! `ImageKind::parse_file_name` knows them) are ever moved or removed: other files
//! in the directory are the user's. A dump holds an exclusive `flock` on its lock
//! file (`.crtool-dump-TAG.lock`, made before its directories and removed after
//! them) for as long as it runs; leftovers whose lock can be taken, or that have
//! none, belong to a crtool that died, whatever PID namespace it ran in, and are
//! cleaned up or put back by the next dump, restore, verify or show.

use crate::error::{Error, Result};
use images_format::ImageKind;
use std::path::{Path, PathBuf};

/// Working directories start with this, then the dump's tag (pid and start time).
const WORK_PREFIX: &str = ".crtool-dump-";
/// Ends the name of a dump's lock file (`WORK_PREFIX` TAG `LOCK_SUFFIX`).
const LOCK_SUFFIX: &str = ".lock";
/// Where an earlier checkpoint is set aside while a new one moves in.
const OLD_PREFIX: &str = ".crtool-old-";
/// Created in an `OLD_PREFIX` directory once every old file is in it.
const SET_ASIDE: &str = "set-aside-complete";

/// A dump's working directory inside `dir`; removed when dropped unless committed.
pub struct WorkDir {
    pub path: PathBuf,
    dir: PathBuf,
    /// Which dump this is: names its working and set-aside directories.
    tag: String,
    committed: bool,
    /// `prepare`'s thread, while it runs.
    preparing: Option<std::thread::JoinHandle<()>>,
    /// The exclusive lock on `lock_path`, held until the WorkDir is dropped.
    _lock: nix::fcntl::Flock<std::fs::File>,
    lock_path: PathBuf,
}

fn image_files(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // (And the `parent` link of an incremental dump: it belongs to the images.)
        .filter(|n| ImageKind::parse_file_name(n).is_some() || n == "parent")
        .collect();
    names.sort();
    // The inventory last: a directory without one holds no complete dump.
    let inv = ImageKind::Inventory.file_name(0);
    if let Some(i) = names.iter().position(|n| *n == inv) {
        let n = names.remove(i);
        names.push(n);
    }
    Ok(names)
}

fn lock_path(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("{WORK_PREFIX}{tag}{LOCK_SUFFIX}"))
}

/// Takes the lock of the dump tagged `tag` in `dir` if its crtool is gone (`None`
/// while it runs). A tag without a working directory has no owner left.
fn take_over(dir: &Path, tag: &str) -> Option<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(f) = std::fs::File::open(lock_path(dir, tag)) else { return Some(None) };
    Flock::lock(f, FlockArg::LockExclusiveNonblock).ok().map(Some)
}

/// Removes the working directories of dumps whose crtool died, and finishes the
/// commit of a dump whose crtool died while moving its images in (`OLD_PREFIX`
/// directories of dead crtools): if the new inventory had arrived,
/// the new checkpoint is complete and the old one goes; otherwise the old files
/// are put back in place of the partial new ones. Called by dump and restore.
pub fn recover(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    let inv = ImageKind::Inventory.file_name(0);
    let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // A set-aside checkpoint before the working directory whose lock guards it.
    names.sort_by_key(|n| !n.starts_with(OLD_PREFIX));
    for name in names {
        let path = dir.join(&name);
        if let Some(tag) = name.strip_prefix(WORK_PREFIX).and_then(|t| t.strip_suffix(LOCK_SUFFIX)) {
            // The lock of a dump that died after removing its directories.
            if !dir.join(format!("{WORK_PREFIX}{tag}")).exists() && !dir.join(format!("{OLD_PREFIX}{tag}")).exists()
                && let Some(Some(_lock)) = take_over(dir, tag) {
                    let _ = std::fs::remove_file(&path);
                }
            continue;
        }
        if let Some(tag) = name.strip_prefix(WORK_PREFIX) {
            // The images of a dump that never finished.
            if let Some(_lock) = take_over(dir, tag) {
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_file(lock_path(dir, tag));
            }
            continue;
        }
        let Some(tag) = name.strip_prefix(OLD_PREFIX) else { continue };
        let Some(_lock) = take_over(dir, tag) else { continue };
        let old_dir = path;
        let old = image_files(&old_dir)?;
        if !old_dir.join(SET_ASIDE).exists() {
            // Setting aside was cut short: no new file had moved in yet.
            for name in &old {
                let (from, to) = (old_dir.join(name), dir.join(name));
                std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
        } else if !dir.join(&inv).exists() {
            // Moving in was cut short: drop the incomplete new files, put the old
            // ones back.
            for name in image_files(dir)? {
                let p = dir.join(&name);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            for name in &old {
                let (from, to) = (old_dir.join(name), dir.join(name));
                std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
            log::warn!("{}: put back the checkpoint an interrupted dump had set aside", dir.display());
        }
        // Otherwise the new inventory had arrived: the new checkpoint is complete.
        std::fs::remove_dir_all(&old_dir).map_err(|e| Error::io(&old_dir, e))?;
    }
    Ok(())
}

impl WorkDir {
    /// Creates `dir` if needed and a fresh working directory in it (removing those
    /// of earlier dumps whose crtool is gone).
    pub fn create(dir: &Path) -> Result<WorkDir> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        recover(dir)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tag = format!("{}-{nanos}", std::process::id());
        // The lock first: a directory of ours never exists unlocked while we run.
        let lock_path = lock_path(dir, &tag);
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| Error::sys(format!("flock {}", lock_path.display()), e)))?;
        let path = dir.join(format!("{WORK_PREFIX}{tag}"));
        let work = WorkDir { path, dir: dir.to_path_buf(), tag, committed: false, preparing: None, _lock: lock, lock_path };
        std::fs::create_dir(&work.path).map_err(|e| Error::io(&work.path, e))?;
        Ok(work)
    }

    /// Creates, on a thread of its own, the (empty) image files `names()` and
    /// what `commit` will need, so that the dump finds them made: on ext4 with
    /// many recently deleted inodes (a directory of dumps replaced again and
    /// again) each creation costs 0.2-0.3 ms, which would otherwise add to the
    /// time the tree is frozen (or, made before the freeze, delay it). A file
    /// the dump has written is never touched (O_EXCL); those it does not write
    /// are removed by `sweep`.
    pub fn prepare(&mut self, names: impl FnOnce() -> Vec<String> + Send + 'static) {
        let (path, old_dir, dir) = (self.path.clone(), self.old_dir(), self.dir.clone());
        let made = std::thread::Builder::new().name("crtool-files".into()).spawn(move || {
            if !image_files(&dir).unwrap_or_default().is_empty() {
                let _ = std::fs::create_dir(old_dir);
            }
            let _ = std::fs::File::create_new(path.join(SET_ASIDE));
            for n in names() {
                let _ = std::fs::File::create_new(path.join(n));
            }
        });
        self.preparing = made.ok();
    }

    /// Waits for `prepare`'s thread.
    fn settle(&mut self) {
        if let Some(t) = self.preparing.take() {
            let _ = t.join();
        }
    }

    /// Removes the image files the dump did not write (see `prepare`): all but
    /// `keep`.
    pub fn sweep(&mut self, keep: &std::collections::BTreeSet<&str>) -> Result<()> {
        self.settle();
        for name in image_files(&self.path)? {
            if name != "parent" && !keep.contains(name.as_str()) {
                let p = self.path.join(&name);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        Ok(())
    }

    fn old_dir(&self) -> PathBuf {
        self.dir.join(format!("{OLD_PREFIX}{}", self.tag))
    }

    /// Moves the new images into the target directory, replacing the image files of
    /// an earlier dump there (set aside first and put back if anything fails).
    /// Only renames: the set-aside files are removed when the WorkDir is dropped
    /// (by `recover` should crtool die first).
    pub fn commit(&mut self) -> Result<()> {
        if self.committed {
            return Err(Error::io(&self.path, std::io::Error::other("committed twice")));
        }
        self.settle();
        let old_dir = self.old_dir();
        let old = image_files(&self.dir)?;
        let new = image_files(&self.path)?;
        let mut set_aside = Vec::new();
        let mut moved_in = Vec::new();
        let result = (|| -> Result<()> {
            if !old.is_empty() {
                if !old_dir.is_dir() {
                    std::fs::create_dir(&old_dir).map_err(|e| Error::io(&old_dir, e))?;
                }
                // The inventory first: from here on the target holds no complete dump
                // until the new inventory arrives.
                for name in old.iter().rev() {
                    let (from, to) = (self.dir.join(name), old_dir.join(name));
                    std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
                    set_aside.push(name.clone());
                    if set_aside.len() == 2 {
                        crate::fault::point(10)?;
                    }
                }
                let done = old_dir.join(SET_ASIDE);
                if std::fs::rename(self.path.join(SET_ASIDE), &done).is_err() {
                    std::fs::File::create(&done).map_err(|e| Error::io(&done, e))?;
                }
            }
            for name in &new {
                let (from, to) = (self.path.join(name), self.dir.join(name));
                std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
                moved_in.push(name.clone());
                if moved_in.len() == 2 {
                    crate::fault::point(11)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for name in moved_in.iter().rev() {
                let _ = std::fs::rename(self.dir.join(name), self.path.join(name));
            }
            let mut back = true;
            for name in set_aside.iter().rev() {
                back &= std::fs::rename(old_dir.join(name), self.dir.join(name)).is_ok();
            }
            if back {
                let _ = std::fs::remove_file(old_dir.join(SET_ASIDE));
                let _ = std::fs::remove_dir(&old_dir);
            }
            return Err(e);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.settle();
        if self.committed {
            // The set-aside marker last: `recover` must not take a part of the
            // old checkpoint for one whose setting aside was cut short.
            if let Ok(rd) = std::fs::read_dir(self.old_dir()) {
                for e in rd.flatten().filter(|e| e.file_name() != SET_ASIDE) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir_all(self.old_dir());
        } else if std::fs::read_dir(self.old_dir()).is_ok_and(|mut d| d.next().is_none()) {
            // (Made by `prepare`, never used.)
            let _ = std::fs::remove_dir(self.old_dir());
        }
        let _ = std::fs::remove_dir_all(&self.path);
        // After the directories (a set-aside one stays only if putting it back
        // failed, and then recovery needs no lock to see it is orphaned).
        let _ = std::fs::remove_file(&self.lock_path);
    }
}
