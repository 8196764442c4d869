//! GPT-NeoX / Pythia (`model_type: gpt_neox`): LayerNorm, fused `query_key_value` whose output
//! interleaves q, k and v per head, partial rotary (`rotary_pct`), parallel or sequential
//! residual (`use_parallel_residual`), GELU MLP.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::spec::{
    Activation, ArchSpec, Family, FamilyOps, NormKind, OneOrMany, PositionKind, QkvLayout, Residual, WeightNames, parse_rope_scaling,
};

/// `config.json` of a GPT-NeoX checkpoint, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pct")]
    pub rotary_pct: f64,
    pub rope_theta: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub max_position_embeddings: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_pct() -> f64 {
    0.25
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl GptNeoxConfig {
    /// The architecture this config describes.
    pub fn spec(self, path: &Path) -> Result<ArchSpec> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(
                path,
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads),
            ));
        }
        if !(self.rotary_pct > 0.0 && self.rotary_pct <= 1.0) {
            return Err(ModelError::config(path, "rotary_pct", "must be in (0, 1]"));
        }
        let head_dim = self.hidden_size / self.num_attention_heads;
        Ok(ArchSpec {
            family: Family::GptNeox,
            model_type: "gpt_neox".into(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_attention_heads,
            head_dim,
            intermediate_size: self.intermediate_size,
            norm: NormKind::Layer { bias: true },
            norm_eps: self.layer_norm_eps,
            position: PositionKind::Rope {
                theta: self.rope_theta.or(self.rotary_emb_base).unwrap_or(10000.0),
                rotary_dim: (head_dim as f64 * self.rotary_pct) as usize,
                scaling: parse_rope_scaling(path, self.rope_scaling.as_ref())?,
            },
            activation: Activation::parse(path, "hidden_act", &self.hidden_act)?,
            gated_mlp: false,
            qkv: QkvLayout::FusedPerHead,
            residual: if self.use_parallel_residual { Residual::Parallel } else { Residual::Sequential },
            attention_bias: self.attention_bias,
            mlp_bias: true,
            embed_norm: false,
            tie_word_embeddings: self.tie_word_embeddings,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            clip_qkv: None,
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_ids: OneOrMany::into_vec(self.eos_token_id),
            max_position_embeddings: self.max_position_embeddings,
            layer_dims: None,
        })
    }
}

/// The family's registration (listed once in [`crate::spec::FAMILIES`]).
pub(crate) const FAMILY: FamilyOps = FamilyOps {
    family: Family::GptNeox,
    model_types: &["gpt_neox"],
    parse: |path, value, _model_type| {
        serde_json::from_value::<GptNeoxConfig>(value).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?.spec(path)
    },
    hf_module,
    weight_names,
    layers_key: "num_hidden_layers",
    native_config: |spec, obj, layers, e, dims| {
        if dims.num_heads != spec.num_heads || e != spec.hidden_size {
            return false;
        }
        obj.insert("num_hidden_layers".into(), layers.into());
        obj.insert("intermediate_size".into(), dims.intermediate_size.into());
        true
    },
};

pub(crate) fn hf_module(layer: usize, kind: SiteKind) -> String {
    let leaf = match kind {
        SiteKind::Qkv | SiteKind::Q | SiteKind::K | SiteKind::V => "attention.query_key_value",
        SiteKind::O => "attention.dense",
        SiteKind::Gate | SiteKind::Up => "mlp.dense_h_to_4h",
        SiteKind::Down => "mlp.dense_4h_to_h",
    };
    format!("gpt_neox.layers.{layer}.{leaf}")
}

pub(crate) fn weight_names(spec: &ArchSpec) -> WeightNames {
    WeightNames {
        embed: "gpt_neox.embed_in.weight".into(),
        embed_norm: None,
        block_norms: (0..spec.num_layers)
            .map(|l| (format!("gpt_neox.layers.{l}.input_layernorm"), format!("gpt_neox.layers.{l}.post_attention_layernorm")))
            .collect(),
        final_norm: "gpt_neox.final_layer_norm".into(),
        lm_head: (!spec.tie_word_embeddings).then(|| "embed_out.weight".into()),
    }
}
