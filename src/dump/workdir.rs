//! Images are written into a working directory next to the target and only take
//! the target's place once the dump has fully succeeded: a failed or interrupted
//! dump never touches an earlier checkpoint in the target directory, and the target
//! never holds a mix of two dumps (the inventory, with the manifest of every other
//! file, is moved in last).

use crate::error::{Error, Result};
use images_format::ImageKind;
use std::path::{Path, PathBuf};

/// Working directories start with this; a leftover one belongs to a dump that
/// was killed (its pid is in the name).
const WORK_PREFIX: &str = ".crtool-dump-";
/// Where an earlier checkpoint is set aside while a new one moves in.
const OLD_PREFIX: &str = ".crtool-old-";
/// Created in an `OLD_PREFIX` directory once every old file is in it.
const SET_ASIDE: &str = "set-aside-complete";

/// A dump's working directory inside `dir`; removed when dropped unless committed.
pub struct WorkDir {
    pub path: PathBuf,
    dir: PathBuf,
    committed: bool,
}

fn image_files(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img") && !n.starts_with('.'))
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

fn pid_alive(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok()).is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

/// Removes the working directories of dumps whose crtool died, and finishes the
/// commit of a dump whose crtool died while moving its images in (`OLD_PREFIX`
/// directories of dead crtools): if the new inventory had arrived,
/// the new checkpoint is complete and the old one goes; otherwise the old files
/// are put back in place of the partial new ones. Called by dump and restore.
pub fn recover(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    let inv = ImageKind::Inventory.file_name(0);
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(WORK_PREFIX) && !pid_alive(&name, WORK_PREFIX) {
            // The images of a dump that never finished.
            let _ = std::fs::remove_dir_all(e.path());
            continue;
        }
        if !name.starts_with(OLD_PREFIX) || pid_alive(&name, OLD_PREFIX) {
            continue;
        }
        let old_dir = e.path();
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
        let path = dir.join(format!("{WORK_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(WorkDir { path, dir: dir.to_path_buf(), committed: false })
    }

    /// Moves the new images into the target directory, replacing the image files of
    /// an earlier dump there (set aside first and put back if anything fails).
    pub fn commit(mut self) -> Result<()> {
        let old_dir = self.dir.join(format!("{OLD_PREFIX}{}", std::process::id()));
        let old = image_files(&self.dir)?;
        let new = image_files(&self.path)?;
        let mut set_aside = Vec::new();
        let mut moved_in = Vec::new();
        let result = (|| -> Result<()> {
            if !old.is_empty() {
                std::fs::create_dir(&old_dir).map_err(|e| Error::io(&old_dir, e))?;
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
                std::fs::File::create(&done).map_err(|e| Error::io(&done, e))?;
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
        let _ = std::fs::remove_dir_all(&old_dir);
        let _ = std::fs::remove_dir_all(&self.path);
        Ok(())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
