//! Run directories and output checkpoints that never clobber.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{RunError, StagedDir, write_atomic};

/// The file recording which command and arguments made a directory.
pub const MANIFEST: &str = "secateur-run.json";
/// The lock file inside a run directory (held with an exclusive OS lock while a command runs).
const LOCK: &str = ".secateur.lock";

/// What made a run directory or an output checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The command (`shears`, `sqft`, `nas`, `prune`, `quantize`).
    pub command: String,
    /// The secateur version that made it.
    pub version: String,
    /// The command's arguments (a JSON object keyed by argument name).
    pub args: serde_json::Value,
}

impl Manifest {
    /// A manifest of `command` with `args` (serialised) and this crate's version.
    pub fn new(command: &str, args: &impl Serialize) -> Self {
        Self {
            command: command.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            args: serde_json::to_value(args).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Reads `dir/secateur-run.json`, if present.
    pub fn read(dir: &Path) -> Result<Option<Self>, RunError> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::read(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| RunError::Invalid { path, reason: format!("not a secateur run record: {e}") })
    }

    fn write(&self, dir: &Path) -> Result<(), RunError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| RunError::Invalid { path: dir.join(MANIFEST), reason: e.to_string() })?;
        write_atomic(&dir.join(MANIFEST), &json)
    }

    /// The arguments that differ from `other`'s, as `--name: recorded R, given G`, leaving out
    /// the arguments in `ignored` (those that do not change results).
    pub fn differences(&self, given: &Manifest, ignored: &[&str]) -> Vec<String> {
        let empty = serde_json::Map::new();
        let old = self.args.as_object().unwrap_or(&empty);
        let new = given.args.as_object().unwrap_or(&empty);
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !ignored.contains(&k.as_str()))
            .filter_map(|k| {
                let (a, b) = (old.get(k).unwrap_or(&serde_json::Value::Null), new.get(k).unwrap_or(&serde_json::Value::Null));
                (a != b).then(|| format!("--{}: recorded {a}, given {b}", k.replace('_', "-")))
            })
            .collect()
    }
}

/// How a command may treat an existing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Start a run; refuse a directory that holds anything.
    New,
    /// Continue the run of the same command and arguments (or start one in an empty directory).
    Resume,
    /// Replace whatever the directory holds, whole.
    Force,
}

impl OpenMode {
    /// The mode of `--resume` / `--force` flags.
    pub fn from_flags(resume: bool, force: bool) -> Self {
        if force {
            Self::Force
        } else if resume {
            Self::Resume
        } else {
            Self::New
        }
    }
}

/// `path` made absolute with symlinks resolved, also when it does not exist yet.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolve(parent).join(name),
        (_, Some(name)) => std::env::current_dir().unwrap_or_default().join(name),
        _ => path.to_path_buf(),
    }
}

/// Refuses an output directory that is one of the command's inputs, or that contains one
/// (replacing it would destroy the input).
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<(), RunError> {
    let o = resolve(out);
    for input in inputs {
        let i = resolve(input);
        if i == o {
            return Err(RunError::Refused {
                path: out.to_path_buf(),
                reason: "is the input model: writing there would overwrite the source weights; choose another --out".into(),
            });
        }
        if i.starts_with(&o) {
            return Err(RunError::Refused {
                path: out.to_path_buf(),
                reason: format!("contains the input {}: choose another --out", input.display()),
            });
        }
    }
    Ok(())
}

fn lock(path: &Path) -> Result<File, RunError> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| RunError::write(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Locked { path: path.parent().unwrap_or(path).to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(RunError::write(path, e)),
    }
}

/// Whether `name` is a temporary that a killed secateur process left behind (see
/// [`crate::temp_sibling`]).
fn is_leftover(name: &str) -> bool {
    name.starts_with('.') && [".tmp-", ".partial-", ".old-"].iter().any(|k| name.contains(k))
}

/// Entries of `dir` other than the lock file, sorted (an absent directory is empty). Leftover
/// temporaries of killed processes are removed (the caller holds the lock, so no live process
/// is writing them).
fn contents(dir: &Path) -> Result<Vec<String>, RunError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| RunError::read(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == LOCK {
            continue;
        }
        if is_leftover(&name) {
            let p = entry.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn listing(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    format!("{}{}", shown.join(", "), if names.len() > 4 { ", ..." } else { "" })
}

/// A run directory held by this process: created or checked against its manifest, and locked
/// (an exclusive OS file lock, released when the `RunDir` is dropped or the process dies).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    resumed: bool,
    _lock: File,
}

impl RunDir {
    /// Opens `path` for the run that `manifest` describes.
    ///
    /// - An absent or empty directory is created and gets the manifest.
    /// - A directory holding a run of the same command: with [`OpenMode::Resume`] the recorded
    ///   arguments must equal the given ones, except those in `ignored` (a difference is an error
    ///   naming each argument); with [`OpenMode::New`] it is refused.
    /// - Anything else (another command's run, a user's files) is refused unless
    ///   [`OpenMode::Force`], which empties the directory first.
    ///
    /// A directory that is, or contains, one of `inputs` is always refused.
    pub fn open(path: &Path, manifest: &Manifest, ignored: &[&str], mode: OpenMode, inputs: &[&Path]) -> Result<Self, RunError> {
        check_not_input(path, inputs)?;
        std::fs::create_dir_all(path).map_err(|e| RunError::write(path, e))?;
        let lock = lock(&path.join(LOCK))?;
        let names = contents(path)?;
        let existing = Manifest::read(path)?;
        let refused = |reason: String| RunError::Refused { path: path.to_path_buf(), reason };
        let mut resumed = false;
        match (&existing, mode) {
            _ if names.is_empty() => {}
            (_, OpenMode::Force) => {
                for n in &names {
                    let p = path.join(n);
                    let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    removed.map_err(|e| RunError::write(&p, e))?;
                }
            }
            (Some(m), _) if m.command != manifest.command => {
                return Err(refused(format!("holds a `secateur {}` run; choose another --out, or pass --force to replace it", m.command)));
            }
            (Some(_), OpenMode::New) => {
                return Err(refused(format!(
                    "already holds a `secateur {}` run: pass --resume to continue it (with the same arguments), --force to replace it, or choose another --out",
                    manifest.command
                )));
            }
            (Some(m), OpenMode::Resume) => {
                let diffs = m.differences(manifest, ignored);
                if !diffs.is_empty() {
                    return Err(RunError::ArgsChanged { path: path.to_path_buf(), diffs: diffs.join("; ") });
                }
                resumed = true;
            }
            (None, _) => {
                return Err(refused(format!(
                    "is not empty and is not a secateur run (it holds {}); choose another --out, or pass --force to replace its contents",
                    listing(&names)
                )));
            }
        }
        if !resumed {
            manifest.write(path)?;
        }
        Ok(Self { path: path.to_path_buf(), resumed, _lock: lock })
    }

    /// Opens an existing run of `command` to add results to it (e.g. `secateur search` on a
    /// finished `secateur shears` run), holding its lock. Returns it with its manifest.
    pub fn attach(path: &Path, command: &str) -> Result<(Self, Manifest), RunError> {
        let m = Manifest::read(path)?.ok_or_else(|| RunError::Refused {
            path: path.to_path_buf(),
            reason: format!("is not a `secateur {command}` run directory (no {MANIFEST})"),
        })?;
        if m.command != command {
            return Err(RunError::Refused {
                path: path.to_path_buf(),
                reason: format!("holds a `secateur {}` run, not a `secateur {command}` run", m.command),
            });
        }
        let lock = lock(&path.join(LOCK))?;
        Ok((Self { path: path.to_path_buf(), resumed: true, _lock: lock }, m))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Whether an existing run is being continued.
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

/// An output checkpoint directory (`prune --out`, `quantize --out`): written under a temporary
/// name and published whole, so the destination never mixes old and new files. A destination
/// that is an input, or that holds anything but an earlier output of the same command, is
/// refused unless `force`. A lock file beside it (`.NAME.lock`) keeps two processes from
/// writing it at once.
#[derive(Debug)]
pub struct OutputDir {
    staged: Option<StagedDir>,
    _lock: SiblingLock,
}

/// A lock file beside a destination, removed with the claim (on every path).
#[derive(Debug)]
struct SiblingLock {
    path: PathBuf,
    _file: File,
}

impl Drop for SiblingLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl OutputDir {
    /// Checks `dest` and starts its staging directory (holding `manifest`).
    pub fn create(dest: &Path, manifest: &Manifest, force: bool, inputs: &[&Path]) -> Result<Self, RunError> {
        check_not_input(dest, inputs)?;
        let name = dest.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy());
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| RunError::write(parent, e))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let file = lock(&lock_path).map_err(|e| match e {
            RunError::Locked { .. } => RunError::Locked { path: dest.to_path_buf() },
            e => e,
        })?;
        let lock = SiblingLock { path: lock_path, _file: file };
        if dest.exists() && !dest.is_dir() {
            return Err(RunError::Refused { path: dest.to_path_buf(), reason: "is a file, not a directory".into() });
        }
        // Staging directories of killed processes for this destination (we hold its lock).
        for entry in std::fs::read_dir(parent).map_err(|e| RunError::read(parent, e))?.flatten() {
            let n = entry.file_name().to_string_lossy().to_string();
            if n.starts_with(&format!(".{name}.")) && is_leftover(&n) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let names = contents(dest)?;
        if !names.is_empty() && !force {
            match Manifest::read(dest).ok().flatten() {
                Some(m) if m.command == manifest.command => {}
                Some(m) => {
                    return Err(RunError::Refused {
                        path: dest.to_path_buf(),
                        reason: format!(
                            "holds the output of `secateur {}`; choose another --out, or pass --force to replace it",
                            m.command
                        ),
                    });
                }
                None => {
                    return Err(RunError::Refused {
                        path: dest.to_path_buf(),
                        reason: format!(
                            "is not empty (it holds {}); choose another --out, or pass --force to replace it whole",
                            listing(&names)
                        ),
                    });
                }
            }
        }
        let staged = StagedDir::new(dest)?;
        manifest.write(staged.path())?;
        Ok(Self { staged: Some(staged), _lock: lock })
    }

    /// Where to write the checkpoint's files.
    pub fn path(&self) -> &Path {
        self.staged.as_ref().expect("staged until published").path()
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        self.staged.as_ref().expect("staged until published").dest()
    }

    /// Replaces the destination with what was written.
    pub fn publish(mut self) -> Result<(), RunError> {
        self.staged.take().expect("staged until published").publish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(command: &str, args: serde_json::Value) -> Manifest {
        Manifest::new(command, &args)
    }

    #[test]
    fn run_directories_refuse_what_they_did_not_make() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let shears = m("shears", json!({"sparsity": 0.5, "epochs": 3, "out": "a"}));
        let r = RunDir::open(&dir, &shears, &["out"], OpenMode::New, &[]).unwrap();
        assert!(!r.resumed());
        // Held: a second opener fails while the first lives.
        let e = RunDir::open(&dir, &shears, &["out"], OpenMode::Resume, &[]).unwrap_err();
        assert!(matches!(e, RunError::Locked { .. }), "{e}");
        drop(r);
        assert!(RunDir::open(&dir, &shears, &["out"], OpenMode::New, &[]).unwrap_err().to_string().contains("--resume"));
        let e = RunDir::open(&dir, &m("sqft", json!({})), &[], OpenMode::Resume, &[]).unwrap_err().to_string();
        assert!(e.contains("holds a `secateur shears` run"), "{e}");
        let changed = m("shears", json!({"sparsity": 0.3, "epochs": 3, "out": "b"}));
        let e = RunDir::open(&dir, &changed, &["out"], OpenMode::Resume, &[]).unwrap_err().to_string();
        assert!(e.contains("--sparsity: recorded 0.5, given 0.3") && !e.contains("--out:"), "{e}");
        let same = m("shears", json!({"sparsity": 0.5, "epochs": 3, "out": "c"}));
        assert!(RunDir::open(&dir, &same, &["out"], OpenMode::Resume, &[]).unwrap().resumed());
        // A user's directory is refused; --force empties it.
        let user = tmp.path().join("mine");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), "keep").unwrap();
        let e = RunDir::open(&user, &shears, &[], OpenMode::Resume, &[]).unwrap_err().to_string();
        assert!(e.contains("not a secateur run") && e.contains("notes.txt"), "{e}");
        RunDir::open(&user, &shears, &[], OpenMode::Force, &[]).unwrap();
        assert!(!user.join("notes.txt").exists());
        // The input itself, or a directory holding it, is never an output.
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        assert!(RunDir::open(&model, &shears, &[], OpenMode::Force, &[&model]).is_err());
        assert!(RunDir::open(tmp.path(), &shears, &[], OpenMode::Force, &[&model]).is_err());
        assert!(model.exists());
    }

    #[test]
    fn output_directories_are_replaced_whole_and_only_when_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pruned");
        let prune = m("prune", json!({"sparsity": 0.5}));
        let o = OutputDir::create(&out, &prune, false, &[]).unwrap();
        std::fs::write(o.path().join("model.safetensors"), "a").unwrap();
        std::fs::write(o.path().join("extra"), "a").unwrap();
        o.publish().unwrap();
        // The same command replaces its own output whole: `extra` is gone.
        let o = OutputDir::create(&out, &prune, false, &[]).unwrap();
        std::fs::write(o.path().join("model.safetensors"), "b").unwrap();
        o.publish().unwrap();
        assert!(!out.join("extra").exists());
        assert_eq!(std::fs::read_to_string(out.join("model.safetensors")).unwrap(), "b");
        // Another command's output, a user's directory, the input: refused.
        assert!(OutputDir::create(&out, &m("quantize", json!({})), false, &[]).unwrap_err().to_string().contains("secateur prune"));
        let user = tmp.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("config.json"), "{}").unwrap();
        assert!(OutputDir::create(&user, &prune, false, &[]).is_err());
        assert!(OutputDir::create(&out, &prune, true, &[&out]).unwrap_err().to_string().contains("input model"));
        // Unpublished: the destination is untouched and nothing is left beside it.
        let o = OutputDir::create(&user, &prune, true, &[]).unwrap();
        drop(o);
        assert!(user.join("config.json").exists());
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
