//! Crash-safe outputs for secateur: every file, checkpoint and run directory that a command
//! writes goes through this crate (no burn here; every other crate may depend on it).
//!
//! - [`write_atomic`]: a file written to a temporary name unique to the process and the call,
//!   synced, then renamed over the target; the temporary is removed on every error path.
//! - [`StagedDir`]: a directory built under a temporary sibling name and published whole by a
//!   rename (a pruned or quantized checkpoint is never seen half-written).
//! - [`StepCheckpoints`]: training checkpoints in `step-N/` directories, each made complete
//!   before `state.json` (written atomically) points at it; older steps are removed only after.
//!   A kill at any instant leaves the old or the new checkpoint, never a mix.
//! - [`RunDir`]: a run directory that records which command and arguments made it
//!   (`secateur-run.json`), is held under an exclusive OS lock while a command writes it, and is
//!   never clobbered: a directory made by another command, by other arguments, or by the user is
//!   refused unless the caller asks to replace it whole.
//! - [`Progress`]: an indicatif bar on a terminal, plain periodic lines otherwise.
//! - [`read_jsonl`]: JSON lines that tolerate a truncated last line (a kill mid-append).

mod atomic;
mod checkpoint;
mod dir;
mod jsonl;
mod progress;

pub use atomic::{StagedDir, remove_stale_siblings, temp_sibling, write_atomic};
pub use checkpoint::StepCheckpoints;
pub use dir::{MANIFEST, Manifest, OpenMode, OutputDir, RunDir, check_not_input};
pub use jsonl::{append_jsonl, read_jsonl, truncate_jsonl};
pub use progress::Progress;

use std::path::PathBuf;

/// Errors of run directories and crash-safe writes; each names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or directory could not be written (disk full, permissions, ...).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record (manifest, checkpoint pointer, JSON line) is malformed.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// Another process holds the run directory's lock.
    #[error("{path} is in use by another secateur process (one process at a time may write a run directory)")]
    Locked { path: PathBuf },
    /// Writing here would destroy or mix up data the command did not make.
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    /// `--resume` was given arguments that change results.
    #[error("{path}: cannot resume with different arguments ({diffs}); rerun with the recorded values, or use another --out")]
    ArgsChanged { path: PathBuf, diffs: String },
}

impl RunError {
    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Write { path: path.into(), source }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Read { path: path.into(), source }
    }
}
