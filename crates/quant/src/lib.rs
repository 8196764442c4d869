//! Low-bit quantization for secateur models.
//!
//! - [`rtn`]: asymmetric round-to-nearest quantization of a weight matrix to 2-8 bits with
//!   per-group scales and zero points along the input dimension.
//! - [`gptq`]: GPTQ's Hessian-based quantization of one matrix, and [`gptq_model`] block by
//!   block through a model on calibration data (sparse bases keep their zeros).
//! - [`pack`]: AutoGPTQ's storage (`qweight`, `qzeros`, `scales`, `g_idx`), so that the
//!   checkpoints secateur writes are read by existing GPTQ tools.
//! - [`linear`]: [`QuantLinear`], a projection that keeps the packed weight in memory and runs a
//!   dequantizing matmul (prefill) or an INT4 matrix-vector kernel (decoding).
//! - [`checkpoint`]: writing and loading quantized Hugging Face checkpoints.

pub mod checkpoint;
pub mod gptq;
pub mod gptq_model;
pub mod linear;
pub mod pack;
pub mod rtn;

pub use gptq::{Factored, GptqConfig, GptqQuantized, Hessian, gptq, gptq_factored};
pub use gptq_model::{GptqOutcome, GptqSiteReport, gptq_model};
pub use linear::{QuantLinear, QuantLm};
pub use rtn::{QuantConfig, Quantized, quantize};

/// Errors of quantization.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error("invalid quantization setting: {0}")]
    Config(String),
    #[error(transparent)]
    Sparsity(#[from] secateur_sparsity::SparsityError),
    #[error("GPTQ of {site}: {reason}")]
    Gptq { site: String, reason: String },
    #[error("{path}: {reason}")]
    Checkpoint { path: std::path::PathBuf, reason: String },
}
