//! Elastic low-rank adapters for secateur models.
//!
//! - [`ElasticLoraLinear`]: a frozen base projection plus LoRA factors `A [r_max, in]` and
//!   `B [out, r_max]`; the active rank `r` (set at run time) uses the first `r` rows of A and
//!   columns of B: `y = base(x) + s·(x·A[:r]ᵀ)·B[:, :r]ᵀ`.
//! - [`SearchSpace`] (groups of sites sharing one rank choice) and [`SubnetConfig`] (one choice
//!   per group), with presets per family and a JSON file format.
//! - [`peft`]: export of a sub-adapter in Hugging Face PEFT format with its true ranks, import of
//!   PEFT adapters, and merging into the base weights.

pub mod cost;
pub mod lora;
pub mod peft;
pub mod space;
pub mod sparse_peft;

pub use lora::{
    Adapted, AdaptedLm, ElasticLoraLinear, LoraAdapter, LoraConfig, RankControl, Scaling, adapter_params, attach, stable_param,
};
pub use space::{SearchGroup, SearchSpace, SubnetConfig};

/// Errors of adapters, search spaces and PEFT files.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: std::path::PathBuf, reason: String },
    #[error("invalid search space: {0}")]
    Space(String),
    #[error("invalid sub-network config: {0}")]
    Config(String),
}
