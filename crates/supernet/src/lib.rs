//! Super-adapter training and evaluation.
//!
//! - [`data`]: LLM-Adapters / Alpaca records, the Alpaca prompt, tokenised and right-padded
//!   batches with loss masks, and disjoint splits.
//! - [`train`]: the one training loop, [`fit`]. A [`StepSource`] decides which sub-network(s)
//!   each optimizer step activates: [`AdapterSteps`] (`nls`: one sub-adapter drawn uniformly and
//!   independently per group; `fixed`: the maximal one; `sandwich`: maximal, k random and
//!   minimal), [`nas::SupernetSteps`] (a NAS sampler's sub-networks, with LoNAS ranks) or
//!   [`FullSteps`] (the whole model: pretraining, full fine-tuning). Per step it runs forward and
//!   backward over the micro-batches, clips the global gradient norm and takes an AdamW step
//!   with PyTorch's defaults set explicitly, under linear warm-up and cosine decay. One
//!   crash-safe checkpoint format (step directories named by an atomic `state.json`); a resumed
//!   run continues exactly where the killed one stopped.
//! - [`eval`]: greedy generation with answer extraction (exact match) and perplexity.

pub mod data;
pub mod eval;
pub mod nas;
pub mod reorder;
pub mod toy;
pub mod train;

pub use data::{Example, PromptFormat, Record, alpaca_prompt};
pub use train::{Activation, AdapterSteps, FullSteps, StepSource, Strategy, TrainConfig, TrainReport, fit, train};

/// Errors of training and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error(transparent)]
    Lora(#[from] secateur_elastic_lora::LoraError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Data { path: std::path::PathBuf, reason: String },
    #[error("invalid training setting: {0}")]
    Config(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: std::path::PathBuf, reason: String },
    #[error(transparent)]
    Run(#[from] secateur_runs::RunError),
    /// The loss stopped being a finite number: training diverged.
    #[error("training diverged at step {step}: the loss is {loss} (lower the learning rate, or check the data)")]
    Diverged { step: usize, loss: f64 },
}
