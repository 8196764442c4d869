//! MPT (`model_type: mpt`): ALiBi with `alibi_bias_max`, fused `Wqkv` (`[q | k | v]` blocks),
//! optional `clip_qkv`, `softmax_scale`, LayerNorm without bias, GELU MLP of width
//! `expansion_ratio * d_model`, tied LM head.
//!
//! transformers' MPT port always builds bias-free projections; MosaicML's original code adds
//! biases when `no_bias` is false. secateur follows the config: with `no_bias: false` it expects
//! the bias tensors in the checkpoint.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::spec::{Activation, ArchSpec, Family, FamilyOps, NormKind, OneOrMany, PositionKind, QkvLayout, Residual, WeightNames};

/// `attn_config` of an MPT config.
#[derive(Debug, Clone, Deserialize)]
pub struct MptAttnConfig {
    #[serde(default = "yes")]
    pub alibi: bool,
    #[serde(default = "default_bias_max")]
    pub alibi_bias_max: f64,
    pub clip_qkv: Option<f64>,
    pub softmax_scale: Option<f64>,
    #[serde(default)]
    pub qk_ln: bool,
}

impl Default for MptAttnConfig {
    fn default() -> Self {
        Self { alibi: true, alibi_bias_max: 8.0, clip_qkv: None, softmax_scale: None, qk_ln: false }
    }
}

/// `config.json` of an MPT checkpoint, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct MptConfig {
    pub vocab_size: usize,
    #[serde(alias = "hidden_size")]
    pub d_model: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_heads: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layers: usize,
    #[serde(default = "default_expansion")]
    pub expansion_ratio: f64,
    #[serde(default)]
    pub attn_config: MptAttnConfig,
    #[serde(default = "yes")]
    pub no_bias: bool,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    pub max_seq_len: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
}

fn yes() -> bool {
    true
}
fn default_bias_max() -> f64 {
    8.0
}
fn default_expansion() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-5
}

/// MPT's ALiBi slopes (transformers' `build_mpt_alibi_tensor`).
pub fn alibi_slopes(num_heads: usize, alibi_bias_max: f64) -> Vec<f64> {
    let n2 = num_heads.next_power_of_two();
    let slopes: Vec<f64> = (1..=n2).map(|i| 1.0 / 2f64.powf(i as f64 * alibi_bias_max / n2 as f64)).collect();
    if n2 == num_heads {
        return slopes;
    }
    let odd = slopes.iter().skip(1).step_by(2);
    let even = slopes.iter().step_by(2);
    odd.chain(even).take(num_heads).copied().collect()
}

impl MptConfig {
    /// The architecture this config describes.
    pub fn spec(self, path: &Path) -> Result<ArchSpec> {
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelError::config(
                path,
                "n_heads",
                format!("d_model {} is not divisible by {} heads", self.d_model, self.n_heads),
            ));
        }
        if !self.attn_config.alibi {
            return Err(ModelError::config(
                path,
                "attn_config.alibi",
                "only ALiBi MPT models are supported (learned position embeddings are not)",
            ));
        }
        if self.attn_config.qk_ln {
            return Err(ModelError::config(path, "attn_config.qk_ln", "qk LayerNorm is not supported"));
        }
        if self.attn_config.alibi_bias_max.is_nan() || self.attn_config.alibi_bias_max <= 0.0 {
            return Err(ModelError::config(path, "attn_config.alibi_bias_max", "must be positive"));
        }
        if let Some(c) = self.attn_config.clip_qkv
            && (c.is_nan() || c <= 0.0)
        {
            return Err(ModelError::config(path, "attn_config.clip_qkv", "must be positive"));
        }
        // Tolerate the rounding of a ratio written as width / d_model.
        let width = {
            let w = self.expansion_ratio * self.d_model as f64;
            if (w - w.round()).abs() < 1e-6 { w.round() } else { w }
        };
        if width.is_nan() || width < 1.0 || width.fract() != 0.0 {
            return Err(ModelError::config(
                path,
                "expansion_ratio",
                format!("{} x d_model {} is not a positive integer", self.expansion_ratio, self.d_model),
            ));
        }
        let head_dim = self.d_model / self.n_heads;
        Ok(ArchSpec {
            family: Family::Mpt,
            model_type: "mpt".into(),
            vocab_size: self.vocab_size,
            hidden_size: self.d_model,
            num_layers: self.n_layers,
            num_heads: self.n_heads,
            num_kv_heads: self.n_heads,
            head_dim,
            intermediate_size: width as usize,
            norm: NormKind::Layer { bias: !self.no_bias },
            norm_eps: self.layer_norm_epsilon,
            position: PositionKind::Alibi { slopes: alibi_slopes(self.n_heads, self.attn_config.alibi_bias_max) },
            activation: Activation::Gelu,
            gated_mlp: false,
            qkv: QkvLayout::FusedBlocks,
            residual: Residual::Sequential,
            attention_bias: !self.no_bias,
            mlp_bias: !self.no_bias,
            embed_norm: false,
            tie_word_embeddings: true,
            attn_scale: self.attn_config.softmax_scale.unwrap_or(1.0 / (head_dim as f64).sqrt()),
            clip_qkv: self.attn_config.clip_qkv,
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_ids: OneOrMany::into_vec(self.eos_token_id),
            max_position_embeddings: self.max_seq_len,
            layer_dims: None,
        })
    }
}

/// The family's registration (listed once in [`crate::spec::FAMILIES`]).
pub(crate) const FAMILY: FamilyOps = FamilyOps {
    family: Family::Mpt,
    model_types: &["mpt"],
    parse: |path, value, _model_type| {
        serde_json::from_value::<MptConfig>(value).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?.spec(path)
    },
    hf_module,
    weight_names,
    layers_key: "n_layers",
    native_config: |spec, obj, layers, e, dims| {
        if dims.num_heads != spec.num_heads || e != spec.hidden_size {
            return false;
        }
        obj.insert("n_layers".into(), layers.into());
        obj.insert("expansion_ratio".into(), (dims.intermediate_size as f64 / spec.hidden_size as f64).into());
        true
    },
};

pub(crate) fn hf_module(layer: usize, kind: SiteKind) -> String {
    let leaf = match kind {
        SiteKind::Qkv | SiteKind::Q | SiteKind::K | SiteKind::V => "attn.Wqkv",
        SiteKind::O => "attn.out_proj",
        SiteKind::Gate | SiteKind::Up => "ffn.up_proj",
        SiteKind::Down => "ffn.down_proj",
    };
    format!("transformer.blocks.{layer}.{leaf}")
}

pub(crate) fn weight_names(spec: &ArchSpec) -> WeightNames {
    WeightNames {
        embed: "transformer.wte.weight".into(),
        embed_norm: None,
        block_norms: (0..spec.num_layers)
            .map(|l| (format!("transformer.blocks.{l}.norm_1"), format!("transformer.blocks.{l}.norm_2")))
            .collect(),
        final_norm: "transformer.norm_f".into(),
        lm_head: None,
    }
}
