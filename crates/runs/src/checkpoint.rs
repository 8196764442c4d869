//! All-or-nothing training checkpoints.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{RunError, StagedDir, write_atomic};

/// A directory of training checkpoints: each one a complete `step-N/` directory, published by
/// `state.json` (written atomically, last) naming it; older step directories are removed only
/// after the pointer moved. A process killed at any instant (or a disk that fills) leaves the
/// previous checkpoint or the new one, never a mix of the two.
#[derive(Debug, Clone)]
pub struct StepCheckpoints {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Pointer<S> {
    step: usize,
    /// The step directory, relative to the checkpoint directory.
    dir: String,
    state: S,
}

/// The file that names the current checkpoint.
pub const POINTER: &str = "state.json";

impl StepCheckpoints {
    /// Checkpoints kept in `dir` (created on the first save).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest complete checkpoint: its step, its step directory and the state saved with it.
    pub fn latest<S: DeserializeOwned>(&self) -> Result<Option<(usize, PathBuf, S)>, RunError> {
        let path = self.dir.join(POINTER);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::read(&path, e))?;
        let p: Pointer<S> = serde_json::from_str(&text)
            .map_err(|e| RunError::Invalid { path: path.clone(), reason: format!("not a checkpoint pointer: {e}") })?;
        let valid = p.dir.starts_with("step-") && !p.dir.contains(['/', '\\']) && p.dir != "step-";
        let sub = self.dir.join(&p.dir);
        if !valid || !sub.is_dir() {
            return Err(RunError::Invalid { path, reason: format!("names the step directory {:?}, which does not exist", p.dir) });
        }
        Ok(Some((p.step, sub, p.state)))
    }

    /// Saves the checkpoint of `step`: `write` fills a fresh directory with the checkpoint's
    /// files; it is then renamed to `step-N`, `state.json` is pointed at it with `state`, and
    /// other step directories (and leftovers of killed saves) are removed. On any error the
    /// previous checkpoint stays current and the partial directory is removed.
    pub fn save<S: Serialize, E: From<RunError>>(
        &self,
        step: usize,
        state: &S,
        write: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        std::fs::create_dir_all(&self.dir).map_err(|e| RunError::write(&self.dir, e))?;
        let name = format!("step-{step}");
        let staged = StagedDir::new(&self.dir.join(&name))?;
        write(staged.path())?;
        staged.publish()?;
        let pointer = Pointer { step, dir: name.clone(), state };
        let json = serde_json::to_vec(&pointer).map_err(|e| RunError::Invalid { path: self.dir.join(POINTER), reason: e.to_string() })?;
        write_atomic(&self.dir.join(POINTER), &json)?;
        self.remove_stale(Some(&name));
        Ok(())
    }

    /// Removes step directories other than `keep`, and leftovers of interrupted saves.
    fn remove_stale(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let stale_step = name.starts_with("step-") && Some(name.as_str()) != keep;
            let leftover = name.starts_with(".step-");
            if stale_step || leftover {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes leftovers of interrupted saves (called before resuming).
    pub fn clean(&self) -> Result<(), RunError> {
        let keep = match self.latest::<serde_json::Value>()? {
            Some((_, sub, _)) => sub.file_name().map(|n| n.to_string_lossy().to_string()),
            None => None,
        };
        self.remove_stale(keep.as_deref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_save_keeps_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let c = StepCheckpoints::new(dir.path());
        assert!(c.latest::<u32>().unwrap().is_none());
        c.save::<_, RunError>(1, &10u32, |d| {
            std::fs::write(d.join("w"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        // Step 2 fails half-way (as a full disk would): step 1 stays current and whole.
        let e = c.save::<_, RunError>(2, &20u32, |d| {
            std::fs::write(d.join("w"), "2").unwrap();
            Err(RunError::Invalid { path: d.to_path_buf(), reason: "disk full".into() })
        });
        assert!(e.is_err());
        let (step, sub, state) = c.latest::<u32>().unwrap().unwrap();
        assert_eq!((step, state), (1, 10));
        assert_eq!(std::fs::read_to_string(sub.join("w")).unwrap(), "1");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert_eq!(names.len(), 2, "only step-1 and the pointer: {names:?}");
        c.save::<_, RunError>(3, &30u32, |d| {
            std::fs::write(d.join("w"), "3").unwrap();
            Ok(())
        })
        .unwrap();
        let (step, sub, _) = c.latest::<u32>().unwrap().unwrap();
        assert_eq!(step, 3);
        assert_eq!(std::fs::read_to_string(sub.join("w")).unwrap(), "3");
        assert!(!dir.path().join("step-1").exists(), "older step removed after the pointer moved");
    }
}
