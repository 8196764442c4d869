//! Hugging Face causal language models on burn: LLaMA (and Mistral-style), GPT-NeoX / Pythia,
//! BLOOM and MPT, loaded from safetensors checkpoints with logits that match transformers.
//!
//! The model, [`CausalLm`], is generic over the backend `B` and over the projection type `P`
//! used at every linear site of its blocks. It loads with [`Dense`] projections;
//! [`CausalLm::map_projections`] swaps them for any other [`Projection`] (masked, quantized,
//! with an adapter), addressed by stable [`Site`] names such as `layers.3.self_attn.q`.

pub mod bf16;
pub mod bloom;
pub mod chat;
pub mod cost;
pub mod error;
pub mod extract;
pub mod generate;
pub mod gguf;
pub mod gpt_neox;
pub mod host;
pub mod latency;
pub mod llama;
pub mod mpt;
pub mod nn;
pub mod par;
pub mod permute;
pub mod site;
pub mod spec;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use chat::{ChatTemplate, Message};
pub use error::{ModelError, Result};
pub use generate::{GenerateOptions, generate, generate_until};
pub use nn::{Dense, Int8Rows, Norm, Projection, Sliceable};
pub use site::{Site, SiteKind};
pub use spec::{ArchSpec, Family, LayerDims, PositionKind, QkvLayout};
pub use tokenizer::TextTokenizer;
pub use transformer::{AttnContext, Block, CausalLm, DenseLm, KvCache, LayerStructure, SubnetStructure, positions_of};
pub use weights::Checkpoint;

/// The CPU backend secateur uses by default.
pub type Cpu = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
