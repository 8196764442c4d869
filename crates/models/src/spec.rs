//! The family-independent description of a decoder-only transformer.
//!
//! Each family file (`llama.rs`, `gpt_neox.rs`, `bloom.rs`, `mpt.rs`) turns its Hugging Face
//! `config.json` into an [`ArchSpec`] and says where each weight lives in the checkpoint; the
//! shared decoder in `transformer.rs` runs any [`ArchSpec`].

use std::path::Path;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::{bloom, gpt_neox, llama, mpt};

/// The model families secateur implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// LLaMA and Mistral-style configs (`model_type: llama | mistral`).
    Llama,
    /// GPT-NeoX and Pythia (`model_type: gpt_neox`).
    GptNeox,
    /// BLOOM (`model_type: bloom`).
    Bloom,
    /// MPT (`model_type: mpt`).
    Mpt,
}

/// What a family's file provides, as one `pub(crate) const FAMILY: FamilyOps`. A new family is
/// its own file, a [`Family`] variant and one entry of [`FAMILIES`].
pub(crate) struct FamilyOps {
    pub family: Family,
    /// The `model_type` values of its configs.
    pub model_types: &'static [&'static str],
    /// The architecture of a `config.json` (path, parsed JSON, `model_type`).
    pub parse: fn(&Path, serde_json::Value, &str) -> Result<ArchSpec>,
    /// The Hugging Face module path of a projection.
    pub hf_module: fn(usize, SiteKind) -> String,
    /// Checkpoint names of the non-projection weights.
    pub weight_names: fn(&ArchSpec) -> WeightNames,
    /// The config field holding the number of blocks.
    pub layers_key: &'static str,
    /// Writes a homogeneous sub-network's sizes (blocks, residual width, block sizes) into the
    /// family's own config fields; false when those fields cannot say it.
    pub native_config: fn(&ArchSpec, &mut serde_json::Map<String, serde_json::Value>, usize, usize, LayerDims) -> bool,
}

/// Every supported family.
pub(crate) const FAMILIES: [&FamilyOps; 4] = [&llama::FAMILY, &gpt_neox::FAMILY, &bloom::FAMILY, &mpt::FAMILY];

impl Family {
    pub(crate) fn ops(self) -> &'static FamilyOps {
        FAMILIES.iter().find(|f| f.family == self).expect("every family is in FAMILIES")
    }
}

/// Normalisation layer kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum NormKind {
    /// `x / rms(x) * w`.
    Rms,
    /// `(x - mean) / std * w (+ b)`.
    Layer { bias: bool },
}

/// Activation of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    /// tanh-approximated GELU.
    GeluTanh,
    Relu,
}

impl Activation {
    pub(crate) fn parse(path: &Path, field: &str, name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(ModelError::config(path, field, format!("unsupported activation {other:?}"))),
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in the config).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// LLaMA 3.x wavelength-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// How positions enter attention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PositionKind {
    /// Rotate-half rotary embedding on the first `rotary_dim` channels of each head.
    Rope { theta: f64, rotary_dim: usize, scaling: Option<RopeScaling> },
    /// ALiBi: an additive bias `slope_h * (key - query)` per head.
    Alibi { slopes: Vec<f64> },
}

/// Layout of the attention input projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QkvLayout {
    /// Separate q, k, v projections.
    Separate,
    /// One fused projection whose output is `[heads, 3, head_dim]` (GPT-NeoX, BLOOM).
    FusedPerHead,
    /// One fused projection whose output is `[3, heads, head_dim]` (MPT).
    FusedBlocks,
}

/// How a block combines attention, MLP and the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Residual {
    /// `h = x + attn(n1(x)); y = h + mlp(n2(h))`.
    Sequential,
    /// `y = x + attn(n1(x)) + mlp(n2(x))` (GPT-NeoX `use_parallel_residual`).
    Parallel,
    /// BLOOM's `apply_residual_connection_post_layernorm`: the residual is the norm's output.
    SequentialPostNorm,
}

/// Everything the shared decoder needs to know about an architecture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchSpec {
    pub family: Family,
    /// The config's `model_type` as written.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub position: PositionKind,
    pub activation: Activation,
    /// Gated (SwiGLU-style `down(act(gate(x)) * up(x))`) or plain (`down(act(up(x)))`) MLP.
    pub gated_mlp: bool,
    pub qkv: QkvLayout,
    pub residual: Residual,
    /// Whether attention projections carry a bias.
    pub attention_bias: bool,
    /// Whether MLP projections carry a bias.
    pub mlp_bias: bool,
    /// A LayerNorm right after the token embedding (BLOOM).
    pub embed_norm: bool,
    pub tie_word_embeddings: bool,
    /// Multiplier of `q·kᵀ`.
    pub attn_scale: f64,
    /// Clamp of the fused qkv output (MPT `clip_qkv`).
    pub clip_qkv: Option<f64>,
    /// Keys further back than this many positions are not attended (Mistral).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub max_position_embeddings: Option<usize>,
    /// Per-block sizes of a heterogeneous (extracted) sub-network, read from the
    /// `secateur_subnet` extension of `config.json`; `None` when every block has the sizes above.
    pub layer_dims: Option<Vec<LayerDims>>,
}

/// The sizes of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LayerDims {
    #[serde(rename = "num_attention_heads")]
    pub num_heads: usize,
    #[serde(rename = "num_key_value_heads")]
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
}

/// The `secateur_subnet` extension of `config.json`, written by extraction when the family's
/// own fields cannot describe a sub-network (per-block sizes, or a narrower residual stream in
/// families whose head size is `hidden / heads`). The family fields then describe the
/// super-network (head size, RoPE, ALiBi slopes and attention scale come from them) except for
/// the number of layers; this object overrides the residual width and gives every block's sizes.
/// Hugging Face transformers ignores it, so such checkpoints load in secateur only.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetExtension {
    /// Width of the residual stream (embedding, norms, LM head columns).
    pub hidden_size: usize,
    /// One entry per block, in order.
    pub layers: Vec<LayerDims>,
}

/// The key of [`SubnetExtension`] in `config.json`.
pub const SUBNET_EXTENSION_KEY: &str = "secateur_subnet";

impl ArchSpec {
    /// Reads `config.json` and dispatches on `model_type`.
    pub fn from_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        Self::from_config_value(path, value)
    }

    /// Builds a spec from an already parsed `config.json` (`path` is used in errors).
    pub fn from_config_value(path: &Path, value: serde_json::Value) -> Result<Self> {
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::config(path, "model_type", "missing or not a string"))?
            .to_string();
        let parse_err = |source| ModelError::Json { path: path.to_path_buf(), source };
        check_sizes(path, &value)?;
        let extension = match value.get(SUBNET_EXTENSION_KEY) {
            None => None,
            Some(v) => Some(serde_json::from_value::<SubnetExtension>(v.clone()).map_err(parse_err)?),
        };
        let family = FAMILIES.iter().find(|f| f.model_types.contains(&model_type.as_str()));
        let mut spec = match family {
            Some(f) => (f.parse)(path, value, &model_type)?,
            None => {
                return Err(ModelError::UnsupportedModelType { path: path.to_path_buf(), model_type });
            }
        };
        if let Some(ext) = extension {
            spec.apply_extension(path, ext)?;
        }
        spec.validate(path)?;
        Ok(spec)
    }

    fn apply_extension(&mut self, path: &Path, ext: SubnetExtension) -> Result<()> {
        let field = |f: &str| format!("{SUBNET_EXTENSION_KEY}.{f}");
        if ext.layers.len() != self.num_layers {
            return Err(ModelError::config(path, &field("layers"), format!("{} entries for {} layers", ext.layers.len(), self.num_layers)));
        }
        if ext.hidden_size == 0 {
            return Err(ModelError::config(path, &field("hidden_size"), "must be positive"));
        }
        let rep = self.num_heads / self.num_kv_heads.max(1);
        for (l, d) in ext.layers.iter().enumerate() {
            let f = field(&format!("layers[{l}]"));
            if d.num_kv_heads == 0 || d.num_kv_heads > self.num_kv_heads || d.num_heads != d.num_kv_heads * rep {
                return Err(ModelError::config(
                    path,
                    &f,
                    format!(
                        "{} heads in {} key/value groups: need 1..={} groups of {rep} heads",
                        d.num_heads, d.num_kv_heads, self.num_kv_heads
                    ),
                ));
            }
            if d.intermediate_size == 0 {
                return Err(ModelError::config(path, &f, "intermediate_size must be positive"));
            }
        }
        self.hidden_size = ext.hidden_size;
        self.layer_dims = Some(ext.layers);
        Ok(())
    }

    /// The context window: `max_position_embeddings` (or its family's name), else 2048 (the
    /// training length of the ALiBi families, whose configs do not state one).
    pub fn context_length(&self) -> usize {
        self.max_position_embeddings.unwrap_or(2048)
    }

    /// The sizes of block `layer`.
    pub fn layer(&self, layer: usize) -> LayerDims {
        match &self.layer_dims {
            Some(dims) => dims[layer],
            None => LayerDims { num_heads: self.num_heads, num_kv_heads: self.num_kv_heads, intermediate_size: self.intermediate_size },
        }
    }

    /// Checks the invariants the decoder relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let mut bounded = vec![
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_layers, MAX_COUNT),
            ("num_attention_heads", self.num_heads, MAX_COUNT),
            ("head_dim", self.head_dim, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("attention width (heads x head_dim)", self.num_heads.saturating_mul(self.head_dim), MAX_WIDTH),
            ("max_position_embeddings", self.context_length(), MAX_CONTEXT),
        ];
        for d in self.layer_dims.iter().flatten() {
            bounded.push(("secateur_subnet.layers[].intermediate_size", d.intermediate_size, MAX_WIDTH));
            bounded.push(("secateur_subnet.layers[].num_attention_heads", d.num_heads, MAX_COUNT));
        }
        for (field, v, max) in bounded {
            if v > max {
                return Err(ModelError::config(path, field, format!("{v} is larger than secateur supports ({max})")));
            }
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ModelError::config(path, field, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!("{} attention heads are not divisible into {} key/value groups", self.num_heads, self.num_kv_heads),
            ));
        }
        if self.qkv != QkvLayout::Separate && self.layer_dims.is_none() && self.num_heads * self.head_dim != self.hidden_size {
            return Err(ModelError::config(
                path,
                "num_attention_heads",
                format!("hidden size {} is not divisible by {} heads", self.hidden_size, self.num_heads),
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(ModelError::config(path, "norm eps", "must be positive"));
        }
        if let PositionKind::Rope { theta, rotary_dim, .. } = &self.position {
            if theta.is_nan() || *theta <= 0.0 {
                return Err(ModelError::config(path, "rope_theta", "must be positive"));
            }
            if *rotary_dim == 0 || rotary_dim % 2 != 0 || *rotary_dim > self.head_dim {
                return Err(ModelError::config(
                    path,
                    "rotary_pct",
                    format!("rotary dimension {rotary_dim} must be even and in 2..={}", self.head_dim),
                ));
            }
        }
        if self.sliding_window == Some(0) {
            return Err(ModelError::config(path, "sliding_window", "must be positive"));
        }
        Ok(())
    }

    /// `[out, in]` of the projection at `kind` in block `layer`.
    pub fn site_shape(&self, layer: usize, kind: SiteKind) -> [usize; 2] {
        let dims = self.layer(layer);
        let q = dims.num_heads * self.head_dim;
        let kv = dims.num_kv_heads * self.head_dim;
        let (h, i) = (self.hidden_size, dims.intermediate_size);
        match kind {
            SiteKind::Q => [q, h],
            SiteKind::K | SiteKind::V => [kv, h],
            SiteKind::Qkv => [q + 2 * kv, h],
            SiteKind::O => [h, q],
            SiteKind::Gate | SiteKind::Up => [i, h],
            SiteKind::Down => [h, i],
        }
    }

    /// Whether every block has the same sizes (no per-block extension).
    pub fn is_homogeneous(&self) -> bool {
        self.layer_dims.as_ref().is_none_or(|d| d.iter().all(|x| *x == d[0]))
    }

    /// The projection sites of one block, in forward order.
    pub fn block_site_kinds(&self) -> Vec<SiteKind> {
        let mut kinds = match self.qkv {
            QkvLayout::Separate => vec![SiteKind::Q, SiteKind::K, SiteKind::V],
            _ => vec![SiteKind::Qkv],
        };
        kinds.push(SiteKind::O);
        if self.gated_mlp {
            kinds.push(SiteKind::Gate);
        }
        kinds.push(SiteKind::Up);
        kinds.push(SiteKind::Down);
        kinds
    }

    /// Whether the projection at `kind` carries a bias.
    pub fn site_has_bias(&self, kind: SiteKind) -> bool {
        match kind {
            SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv | SiteKind::O => self.attention_bias,
            SiteKind::Gate | SiteKind::Up | SiteKind::Down => self.mlp_bias,
        }
    }

    /// The Hugging Face module path of a projection (what PEFT's `target_modules` match).
    pub fn hf_module(&self, layer: usize, kind: SiteKind) -> String {
        (self.family.ops().hf_module)(layer, kind)
    }

    /// Checkpoint names of the non-projection weights.
    pub fn weight_names(&self) -> WeightNames {
        (self.family.ops().weight_names)(self)
    }
}

/// Where the non-projection weights live in a checkpoint (projections use
/// [`ArchSpec::hf_module`] + `.weight` / `.bias`).
#[derive(Debug, Clone)]
pub struct WeightNames {
    pub embed: String,
    pub embed_norm: Option<String>,
    /// Per layer: the norm before attention and the norm before the MLP (module paths).
    pub block_norms: Vec<(String, String)>,
    pub final_norm: String,
    /// `None` when tied to the embedding.
    pub lm_head: Option<String>,
}

/// Hugging Face writes token ids either as one integer or as a list.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub(crate) fn into_vec(v: Option<Self>) -> Vec<u32> {
        match v {
            None => Vec::new(),
            Some(Self::One(x)) => vec![x],
            Some(Self::Many(xs)) => xs,
        }
    }
}

/// Parses an HF `rope_scaling` object (keys `rope_type` or legacy `type`).
pub(crate) fn parse_rope_scaling(path: &Path, value: Option<&serde_json::Value>) -> Result<Option<RopeScaling>> {
    let Some(v) = value else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    let field = "rope_scaling";
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| ModelError::config(path, field, "missing `rope_type`"))?;
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| ModelError::config(path, &format!("rope_scaling.{key}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => {
            let factor = num("factor")?;
            if factor.is_nan() || factor <= 0.0 {
                return Err(ModelError::config(path, "rope_scaling.factor", "must be positive"));
            }
            Ok(Some(RopeScaling::Linear { factor }))
        }
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, .. } = s
                && (factor <= 0.0 || high_freq_factor <= low_freq_factor)
            {
                return Err(ModelError::config(path, field, "llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor"));
            }
            Ok(Some(s))
        }
        other => Err(ModelError::config(
            path,
            "rope_scaling.rope_type",
            format!("unsupported rope scaling {other:?} (supported: linear, llama3)"),
        )),
    }
}

/// Largest width (vocabulary, hidden, MLP, head) a config may declare.
pub const MAX_WIDTH: usize = 1 << 20;
/// Largest number of layers or heads a config may declare.
pub const MAX_COUNT: usize = 1 << 12;
/// Largest context window a config may declare.
pub const MAX_CONTEXT: usize = 1 << 24;

/// Checks the size fields of a raw `config.json` before any arithmetic uses them: each must be
/// a positive integer no larger than secateur supports (so no division by zero, no overflow, no
/// allocation sized by a hostile file).
fn check_sizes(path: &Path, value: &serde_json::Value) -> Result<()> {
    const FIELDS: &[(&str, usize)] = &[
        ("hidden_size", MAX_WIDTH),
        ("d_model", MAX_WIDTH),
        ("n_embed", MAX_WIDTH),
        ("intermediate_size", MAX_WIDTH),
        ("head_dim", MAX_WIDTH),
        ("vocab_size", MAX_WIDTH),
        ("num_attention_heads", MAX_COUNT),
        ("num_key_value_heads", MAX_COUNT),
        ("n_head", MAX_COUNT),
        ("n_heads", MAX_COUNT),
        ("num_hidden_layers", MAX_COUNT),
        ("n_layer", MAX_COUNT),
        ("n_layers", MAX_COUNT),
        ("max_position_embeddings", MAX_CONTEXT),
        ("max_seq_len", MAX_CONTEXT),
        ("sliding_window", MAX_CONTEXT),
    ];
    for (field, max) in FIELDS {
        let Some(v) = value.get(*field) else { continue };
        if v.is_null() {
            continue;
        }
        match v.as_u64() {
            Some(n) if n >= 1 && n <= *max as u64 => {}
            _ => return Err(ModelError::config(path, field, format!("{v} is not an integer in 1..={max}"))),
        }
    }
    if let Some(e) = value.get("attn_config").and_then(|a| a.get("kv_n_heads"))
        && !e.as_u64().is_some_and(|n| n >= 1 && n <= MAX_COUNT as u64)
    {
        return Err(ModelError::config(path, "attn_config.kv_n_heads", format!("{e} is not an integer in 1..={MAX_COUNT}")));
    }
    if let Some(r) = value.get("expansion_ratio")
        && !r.as_f64().is_some_and(|r| r > 0.0 && r <= 1024.0)
    {
        return Err(ModelError::config(path, "expansion_ratio", format!("{r} is not a number in (0, 1024]")));
    }
    Ok(())
}
