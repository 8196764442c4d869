//! Unstructured and N:M sparsity for secateur models: calibration statistics collected block by
//! block, Wanda (`|W| * ||X||`) and magnitude scores, per-output-row and N:M masks, and the
//! pruned checkpoint with its masks.
//!
//! The order follows the Wanda reference: the statistics of block `l` come from the dense block
//! `l`, whose input is the output of the already pruned blocks `0..l`.

pub mod calibration;
pub mod checkpoint;
pub mod mask;
pub mod prune;

pub use calibration::{CalibrationSource, MAX_CALIBRATION_TOKENS, check_calibration_size, load_calibration, sample_calibration};
pub use mask::{Pattern, ScoreMethod, select_mask};
pub use prune::{CalibrationBatches, InputObserver, PruneConfig, PruneOutcome, SiteMask, input_norms, prune};

/// Errors of pruning.
#[derive(Debug, thiserror::Error)]
pub enum SparsityError {
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Calibration { path: std::path::PathBuf, reason: String },
    #[error("invalid sparsity setting: {0}")]
    Config(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: std::path::PathBuf, reason: String },
}
