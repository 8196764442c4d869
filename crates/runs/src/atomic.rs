//! Atomic files and directories.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RunError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden sibling of `path` whose name is unique to this process and this call:
/// `.NAME.KIND-PID-N`. Two processes (or two threads) never share one.
pub fn temp_sibling(path: &Path, kind: &str) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{kind}-{}-{n}", std::process::id()))
}

/// Removes the temporaries of `path` ([`temp_sibling`]s: `.NAME.partial-PID-N`, `.tmp-`,
/// `.old-`) that a process which no longer runs left behind when it was killed. Those of live
/// processes stay; where liveness cannot be told (no `/proc`), nothing is removed. Returns how
/// many were removed.
pub fn remove_stale_siblings(path: &Path) -> usize {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy());
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&format!(".{name}.")) else { continue };
        let Some(tail) = ["partial-", "tmp-", "old-"].iter().find_map(|k| rest.strip_prefix(k)) else { continue };
        // PID-N, as temp_sibling names them.
        let Some((pid, n)) = tail.split_once('-') else { continue };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else { continue };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let p = entry.path();
        let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed += usize::from(gone.is_ok());
    }
    removed
}

/// Writes `bytes` to `path` through a unique temporary file beside it (synced, then renamed),
/// so `path` holds either its old content or all of the new one. The temporary is removed on
/// every error path (a full disk is not kept full by our leftovers).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let tmp = temp_sibling(path, "tmp");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RunError::write(path, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(RunError::write(path, e));
    }
    sync_parent(path);
    Ok(())
}

/// Makes a rename in `path`'s directory durable (best effort: not every file system allows it).
pub(crate) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// A directory built under a temporary sibling name and published whole by [`StagedDir::publish`]:
/// until then the destination keeps its old content (or stays absent). Dropped unpublished, the
/// temporary directory is removed.
#[derive(Debug)]
pub struct StagedDir {
    tmp: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl StagedDir {
    /// Creates the temporary directory for `dest`.
    pub fn new(dest: &Path) -> Result<Self, RunError> {
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| RunError::write(parent, e))?;
        }
        let tmp = temp_sibling(dest, "partial");
        std::fs::create_dir(&tmp).map_err(|e| RunError::write(&tmp, e))?;
        Ok(Self { tmp, dest: dest.to_path_buf(), published: false })
    }

    /// Where to write the directory's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Replaces the destination with the staged directory: the old destination (if any) is
    /// moved aside, the staged one renamed into place, then the old one removed.
    pub fn publish(mut self) -> Result<(), RunError> {
        let old = temp_sibling(&self.dest, "old");
        let had_old = self.dest.exists();
        if had_old {
            std::fs::rename(&self.dest, &old).map_err(|e| RunError::write(&self.dest, e))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.dest) {
            if had_old {
                let _ = std::fs::rename(&old, &self.dest);
            }
            return Err(RunError::write(&self.dest, e));
        }
        self.published = true;
        sync_parent(&self.dest);
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_siblings_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("model-1f");
        // Process 999999999 cannot exist (above Linux's pid_max); ours does.
        let dead = tmp.path().join(".model-1f.partial-999999999-0");
        let live = temp_sibling(&dest, "partial");
        let other = tmp.path().join(".model-2a.partial-999999999-0");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("model.safetensors"), b"half").unwrap();
        }
        std::fs::write(tmp.path().join(".model-1f.tmp-999999999-3"), b"x").unwrap();
        let expected = if Path::new("/proc/self").exists() { 2 } else { 0 };
        assert_eq!(remove_stale_siblings(&dest), expected);
        assert_eq!(dead.exists(), expected == 0);
        assert!(live.exists() && other.exists(), "a live process's and another destination's stay");
    }

    #[test]
    fn temporaries_are_unique_and_atomic_writes_replace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        assert_ne!(temp_sibling(&p, "tmp"), temp_sibling(&p, "tmp"));
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left behind");
        // A write that fails (the parent is a file) names the target and leaves nothing.
        let bad = p.join("x");
        let e = write_atomic(&bad, b"x").unwrap_err().to_string();
        assert!(e.starts_with("cannot write") && e.contains("a.json/x"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_staged_directory_replaces_the_destination_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("stale.txt"), "old").unwrap();
        let staged = StagedDir::new(&dest).unwrap();
        std::fs::write(staged.path().join("new.txt"), "new").unwrap();
        assert!(dest.join("stale.txt").exists(), "untouched until published");
        staged.publish().unwrap();
        assert!(!dest.join("stale.txt").exists());
        assert_eq!(std::fs::read_to_string(dest.join("new.txt")).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Dropped unpublished: nothing remains.
        let staged = StagedDir::new(&dir.path().join("other")).unwrap();
        std::fs::write(staged.path().join("x"), "x").unwrap();
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
