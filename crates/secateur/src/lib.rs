//! secateur: compress and fine-tune large language models in Rust, on burn.
//!
//! This crate is the one to depend on. Its features pick the parts (all on by default):
//!
//! | feature | module | what it holds |
//! |---|---|---|
//! | (always) | [`models`] | LLaMA, GPT-NeoX, BLOOM, MPT: loading, logits, generation, extraction |
//! | (always) | [`lora`] | `ElasticLoraLinear`, `SearchSpace`, PEFT export / import / merge, SparsePEFT |
//! | (always) | [`runs`] | run directories, atomic files, step checkpoints, progress |
//! | `sparsity` | [`sparsity`] | Wanda and magnitude pruning, N:M masks, calibration |
//! | `quant` | [`quant`] | RTN quantization, GPTQ-format checkpoints, `QuantLinear` |
//! | `nas` | [`supernet`] | the trainer, super-network samplers, reordering, datasets, evaluation |
//! | `search` | [`search_algorithms`] | NSGA-II, R-NSGA-II, hill climbing, Pareto fronts, hypervolume |
//! | `eval` | [`eval`] | perplexity and multiple-choice log-likelihood, scored like lm-evaluation-harness |
//! | `pipelines` | [`pipelines`] | Shears, SQFT, NAS / LoNAS and sub-adapter search, end to end |
//! | `cuda` | [`Cuda`] | the CUDA backend (needs an NVIDIA driver at run time) |
//!
//! Every pipeline is generic over the burn backend: pass [`CpuAutodiff`] (or, with `cuda`,
//! [`CudaAutodiff`]) and its device.
//!
//! ```no_run
//! use secateur::{CpuAutodiff, Quiet, ShearsConfig, shears};
//!
//! // Shears on the embedded tiny LLaMA and its arithmetic word problems.
//! let config = ShearsConfig { epochs: 1, test_size: 50, out: Some("runs/shears-example".into()), ..Default::default() };
//! let result = shears::<CpuAutodiff>(&config, &Default::default(), &Quiet)?;
//! println!("{}", result.table);
//! # Ok::<(), secateur::PipelineError>(())
//! ```
//!
//! The building blocks work on their own too; this one counts a model's projections:
//!
//! ```
//! use secateur::models::ArchSpec;
//!
//! let config = serde_json::json!({
//!     "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
//!     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2
//! });
//! let spec = ArchSpec::from_config_value("config.json".as_ref(), config)?;
//! // q, k, v, o, gate, up, down in each of the 2 blocks.
//! assert_eq!(spec.block_site_kinds().len() * spec.num_layers, 14);
//! # Ok::<(), secateur::models::ModelError>(())
//! ```

pub use burn;
pub use secateur_elastic_lora as lora;
pub use secateur_models as models;
pub use secateur_runs as runs;

#[cfg(feature = "eval")]
pub use secateur_eval as eval;
#[cfg(feature = "pipelines")]
pub use secateur_pipelines as pipelines;
#[cfg(feature = "pipelines")]
pub use secateur_pipelines::{
    NasConfig, PipelineError, Quiet, Reporter, SearchConfig, ShearsConfig, SqftConfig, Stderr, nas, search, shears, sqft,
};
#[cfg(feature = "quant")]
pub use secateur_quant as quant;
#[cfg(feature = "search")]
pub use secateur_search as search_algorithms;
#[cfg(feature = "sparsity")]
pub use secateur_sparsity as sparsity;
#[cfg(feature = "nas")]
pub use secateur_supernet as supernet;

/// The CPU backend.
pub type Cpu = secateur_models::Cpu;
/// The CPU backend with autodiff: what the pipelines train on by default.
pub type CpuAutodiff = secateur_models::CpuAutodiff;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;
