//! LLaMA family (`model_type: llama`, and Mistral-style configs with `model_type: mistral`):
//! RMSNorm, SwiGLU MLP, rotate-half RoPE with optional `rope_scaling` (linear, llama3),
//! grouped-query attention, optional `head_dim`, `attention_bias`, `mlp_bias`, tied or untied
//! embeddings, and Mistral's `sliding_window`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::spec::{
    Activation, ArchSpec, Family, FamilyOps, NormKind, OneOrMany, PositionKind, QkvLayout, Residual, WeightNames, parse_rope_scaling,
};

/// `config.json` of a LLaMA or Mistral checkpoint, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub max_position_embeddings: Option<usize>,
    pub sliding_window: Option<usize>,
}

fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    /// The architecture this config describes (`model_type` is `llama` or `mistral`).
    pub fn spec(self, path: &Path, model_type: &str) -> Result<ArchSpec> {
        if self.num_attention_heads == 0 {
            return Err(ModelError::config(path, "num_attention_heads", "must be positive"));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads);
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(
                path,
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads and no head_dim is given", self.hidden_size, self.num_attention_heads),
            ));
        }
        Ok(ArchSpec {
            family: Family::Llama,
            model_type: model_type.to_string(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            intermediate_size: self.intermediate_size,
            norm: NormKind::Rms,
            norm_eps: self.rms_norm_eps,
            position: PositionKind::Rope {
                theta: self.rope_theta,
                rotary_dim: head_dim,
                scaling: parse_rope_scaling(path, self.rope_scaling.as_ref())?,
            },
            activation: Activation::parse(path, "hidden_act", &self.hidden_act)?,
            gated_mlp: true,
            qkv: QkvLayout::Separate,
            residual: Residual::Sequential,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            embed_norm: false,
            tie_word_embeddings: self.tie_word_embeddings,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            clip_qkv: None,
            sliding_window: if model_type == "mistral" { self.sliding_window } else { None },
            bos_token_id: self.bos_token_id,
            eos_token_ids: OneOrMany::into_vec(self.eos_token_id),
            max_position_embeddings: self.max_position_embeddings,
            layer_dims: None,
        })
    }
}

/// The family's registration (listed once in [`crate::spec::FAMILIES`]).
pub(crate) const FAMILY: FamilyOps = FamilyOps {
    family: Family::Llama,
    model_types: &["llama", "mistral"],
    parse: |path, value, model_type| {
        serde_json::from_value::<LlamaConfig>(value)
            .map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?
            .spec(path, model_type)
    },
    hf_module,
    weight_names,
    layers_key: "num_hidden_layers",
    native_config: |spec, obj, layers, e, dims| {
        let mut set = |key: &str, v: serde_json::Value| obj.insert(key.to_string(), v);
        set("num_hidden_layers", layers.into());
        set("hidden_size", e.into());
        set("intermediate_size", dims.intermediate_size.into());
        set("num_attention_heads", dims.num_heads.into());
        set("num_key_value_heads", dims.num_kv_heads.into());
        set("head_dim", spec.head_dim.into());
        true
    },
};

pub(crate) fn hf_module(layer: usize, kind: SiteKind) -> String {
    let leaf = match kind {
        SiteKind::Q => "self_attn.q_proj",
        SiteKind::K => "self_attn.k_proj",
        SiteKind::V => "self_attn.v_proj",
        SiteKind::Qkv => "self_attn.qkv_proj",
        SiteKind::O => "self_attn.o_proj",
        SiteKind::Gate => "mlp.gate_proj",
        SiteKind::Up => "mlp.up_proj",
        SiteKind::Down => "mlp.down_proj",
    };
    format!("model.layers.{layer}.{leaf}")
}

pub(crate) fn weight_names(spec: &ArchSpec) -> WeightNames {
    WeightNames {
        embed: "model.embed_tokens.weight".into(),
        embed_norm: None,
        block_norms: (0..spec.num_layers)
            .map(|l| (format!("model.layers.{l}.input_layernorm"), format!("model.layers.{l}.post_attention_layernorm")))
            .collect(),
        final_norm: "model.norm".into(),
        lm_head: (!spec.tie_word_embeddings).then(|| "lm_head.weight".into()),
    }
}
