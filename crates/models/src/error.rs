//! Typed errors of model loading and running; each names the file, field or tensor at fault.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, index, inputs) is not valid JSON or lacks a required field.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The config's `model_type` is not one secateur implements.
    #[error("{path}: unsupported model_type {model_type:?} (supported: llama, mistral, gpt_neox, bloom, mpt)")]
    UnsupportedModelType { path: PathBuf, model_type: String },
    /// A config field holds a value secateur cannot use.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig { path: PathBuf, field: String, reason: String },
    /// No weights file: neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    /// A safetensors file could not be parsed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { path: PathBuf, name: String },
    /// A quantized (GPTQ) checkpoint where a dense one is needed.
    #[error("{path}: the checkpoint is quantized (GPTQ `qweight` tensors); this needs a dense checkpoint: use its unquantized source")]
    Quantized { path: PathBuf },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A tensor is stored in a dtype secateur does not read (f32, f16, bf16 and f64 are read).
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },
    /// A tensor holds NaN or an infinity.
    #[error("{path}: tensor `{name}` holds a non-finite value ({value} at element {index})")]
    NonFinite { path: PathBuf, name: String, index: usize, value: f32 },
    /// A GGUF file is malformed, or holds something secateur cannot import or write.
    #[error("{path}: GGUF: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// A chat template does not parse, or refuses the conversation (its `raise_exception`).
    #[error("{path}: chat template: {reason}")]
    ChatTemplate { path: PathBuf, reason: String },
    /// The tokenizer file could not be loaded or used.
    #[error("{path}: tokenizer error: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// An output could not be written (see [`secateur_runs::RunError`]).
    #[error(transparent)]
    Run(#[from] secateur_runs::RunError),
    /// Input (token ids, masks, generation options) that the model cannot run.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig { path: path.into(), field: field.to_string(), reason: reason.into() }
    }
}
