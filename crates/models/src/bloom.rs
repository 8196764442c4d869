//! BLOOM (`model_type: bloom`): LayerNorm after the embedding, ALiBi, fused `query_key_value`
//! with q, k, v interleaved per head, tanh-GELU MLP of width 4h, tied LM head, and
//! `apply_residual_connection_post_layernorm`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::spec::{Activation, ArchSpec, Family, FamilyOps, NormKind, OneOrMany, PositionKind, QkvLayout, Residual, WeightNames};

/// `config.json` of a BLOOM checkpoint, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct BloomConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
}

fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

/// BLOOM's ALiBi slopes (transformers' `build_alibi_tensor`): geometric in the closest power of
/// two below the head count, then odd powers of the next base for the remaining heads.
pub fn alibi_slopes(num_heads: usize) -> Vec<f64> {
    let closest = 1usize << (usize::BITS - 1 - num_heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != num_heads {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = closest.min(num_heads - closest);
        slopes.extend((0..remaining).map(|i| extra_base.powi(2 * i as i32 + 1)));
    }
    slopes
}

impl BloomConfig {
    /// The architecture this config describes.
    pub fn spec(self, path: &Path) -> Result<ArchSpec> {
        if self.n_head == 0 || !self.hidden_size.is_multiple_of(self.n_head) {
            return Err(ModelError::config(
                path,
                "n_head",
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.n_head),
            ));
        }
        let head_dim = self.hidden_size / self.n_head;
        Ok(ArchSpec {
            family: Family::Bloom,
            model_type: "bloom".into(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.n_layer,
            num_heads: self.n_head,
            num_kv_heads: self.n_head,
            head_dim,
            intermediate_size: 4 * self.hidden_size,
            norm: NormKind::Layer { bias: true },
            norm_eps: self.layer_norm_epsilon,
            position: PositionKind::Alibi { slopes: alibi_slopes(self.n_head) },
            activation: Activation::GeluTanh,
            gated_mlp: false,
            qkv: QkvLayout::FusedPerHead,
            residual: if self.apply_residual_connection_post_layernorm { Residual::SequentialPostNorm } else { Residual::Sequential },
            attention_bias: true,
            mlp_bias: true,
            embed_norm: true,
            tie_word_embeddings: self.tie_word_embeddings,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            clip_qkv: None,
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_ids: OneOrMany::into_vec(self.eos_token_id),
            max_position_embeddings: None,
            layer_dims: None,
        })
    }
}

/// The family's registration (listed once in [`crate::spec::FAMILIES`]).
pub(crate) const FAMILY: FamilyOps = FamilyOps {
    family: Family::Bloom,
    model_types: &["bloom"],
    parse: |path, value, _model_type| {
        serde_json::from_value::<BloomConfig>(value).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?.spec(path)
    },
    hf_module,
    weight_names,
    layers_key: "n_layer",
    native_config: |spec, obj, layers, e, dims| {
        if dims.num_heads != spec.num_heads || e != spec.hidden_size || dims.intermediate_size != spec.intermediate_size {
            return false;
        }
        obj.insert("n_layer".into(), layers.into());
        true
    },
};

pub(crate) fn hf_module(layer: usize, kind: SiteKind) -> String {
    let leaf = match kind {
        SiteKind::Qkv | SiteKind::Q | SiteKind::K | SiteKind::V => "self_attention.query_key_value",
        SiteKind::O => "self_attention.dense",
        SiteKind::Gate | SiteKind::Up => "mlp.dense_h_to_4h",
        SiteKind::Down => "mlp.dense_4h_to_h",
    };
    format!("transformer.h.{layer}.{leaf}")
}

pub(crate) fn weight_names(spec: &ArchSpec) -> WeightNames {
    WeightNames {
        embed: "transformer.word_embeddings.weight".into(),
        embed_norm: Some("transformer.word_embeddings_layernorm".into()),
        block_norms: (0..spec.num_layers)
            .map(|l| (format!("transformer.h.{l}.input_layernorm"), format!("transformer.h.{l}.post_attention_layernorm")))
            .collect(),
        final_norm: "transformer.ln_f".into(),
        lm_head: (!spec.tie_word_embeddings).then(|| "lm_head.weight".into()),
    }
}
