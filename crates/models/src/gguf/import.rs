//! A GGUF model as a Hugging Face checkpoint: `config.json` from the architecture metadata,
//! `model.safetensors` (f32, every tensor dequantized, llama.cpp's Q/K row permutation undone),
//! `tokenizer.json` rebuilt from `tokenizer.ggml.*`, `tokenizer_config.json` with the chat
//! template, and `generation_config.json`. What transformers' `from_pretrained(dir,
//! gguf_file=...)` does, as files every secateur command reads.
//!
//! [`resolve_model`] is the entry point the commands use: a `.gguf` file (or a directory holding
//! one and no `config.json`) is imported once into a cache directory and that directory is used.
//!
//! Architectures: `llama` (LLaMA and Mistral-style models), `gptneox`, `bloom` and `mpt`, as
//! llama.cpp's `convert_hf_to_gguf.py` writes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::{GgufFile, Value};
use crate::error::{ModelError, Result};
use crate::site::SiteKind;
use crate::spec::{ArchSpec, Family, NormKind, QkvLayout, SUBNET_EXTENSION_KEY};
use crate::weights::{Dtype, RawTensor, WEIGHTS_FILE, encode_f32, write_atomic, write_safetensors};

/// Bumped when the import's output changes, so cached imports are redone.
const IMPORT_VERSION: u32 = 1;

/// How a tensor's rows are reordered between the two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// Same order.
    Same,
    /// llama.cpp's RoPE layout of LLaMA's Q or K rows for this many heads.
    Rope(usize),
    /// A fused QKV projection whose Hugging Face rows interleave q, k and v per head
    /// (`[heads, 3, head_dim]`, GPT-NeoX and BLOOM) and whose GGUF rows are `[q; k; v]`
    /// (`convert_hf_to_gguf.py` re-lays them out), for this many heads.
    QkvPerHead(usize),
}

impl RowOrder {
    /// `values` (`rows` rows) reordered from GGUF's layout to Hugging Face's (`to_hf`) or back;
    /// `None` when `rows` cannot be split into the heads.
    pub fn apply(self, values: Vec<f32>, rows: usize, to_hf: bool) -> Option<Vec<f32>> {
        match self {
            RowOrder::Same => Some(values),
            RowOrder::Rope(heads) => (heads > 0 && rows.is_multiple_of(2 * heads)).then(|| permute_rows(&values, rows, heads, to_hf)),
            RowOrder::QkvPerHead(heads) => {
                (heads > 0 && rows.is_multiple_of(3 * heads)).then(|| permute_qkv_rows(&values, rows, heads, to_hf))
            }
        }
    }
}

/// One tensor of a model in both namings.
#[derive(Debug, Clone)]
pub struct TensorPair {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// The Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub hf: String,
    /// The PyTorch shape.
    pub shape: Vec<usize>,
    /// Row reordering between the layouts.
    pub rows: RowOrder,
}

/// llama.cpp's architecture name (`general.architecture`) of a family.
pub fn gguf_arch(family: Family) -> &'static str {
    match family {
        Family::Llama => "llama",
        Family::GptNeox => "gptneox",
        Family::Bloom => "bloom",
        Family::Mpt => "mpt",
    }
}

/// The GGUF name of a projection.
fn site_name(kind: SiteKind) -> &'static str {
    match kind {
        SiteKind::Q => "attn_q",
        SiteKind::K => "attn_k",
        SiteKind::V => "attn_v",
        SiteKind::Qkv => "attn_qkv",
        SiteKind::O => "attn_output",
        SiteKind::Gate => "ffn_gate",
        SiteKind::Up => "ffn_up",
        SiteKind::Down => "ffn_down",
    }
}

/// Every tensor of a model of `spec`, in both namings, as llama.cpp's `convert_hf_to_gguf.py`
/// names and lays them out: LLaMA's Q/K rows permuted for its RoPE, GPT-NeoX's and BLOOM's fused
/// QKV rows as `[q; k; v]`, LayerNorm biases beside their weights, BLOOM's embedding norm as
/// `token_embd_norm`, no `output.weight` when the head is tied.
pub fn gguf_tensors(spec: &ArchSpec) -> Vec<TensorPair> {
    let names = spec.weight_names();
    let h = spec.hidden_size;
    let norm_bias = matches!(spec.norm, NormKind::Layer { bias: true });
    let mut v = Vec::new();
    let mut pair = |gguf: String, hf: String, shape: Vec<usize>, rows| v.push(TensorPair { gguf, hf, shape, rows });
    let norm = |pair: &mut dyn FnMut(String, String, Vec<usize>, RowOrder), gguf: &str, hf: &str| {
        pair(format!("{gguf}.weight"), format!("{hf}.weight"), vec![h], RowOrder::Same);
        if norm_bias {
            pair(format!("{gguf}.bias"), format!("{hf}.bias"), vec![h], RowOrder::Same);
        }
    };
    pair("token_embd.weight".into(), names.embed.clone(), vec![spec.vocab_size, h], RowOrder::Same);
    if let Some(n) = &names.embed_norm {
        norm(&mut pair, "token_embd_norm", n);
    }
    for l in 0..spec.num_layers {
        let (n1, n2) = &names.block_norms[l];
        norm(&mut pair, &format!("blk.{l}.attn_norm"), n1);
        norm(&mut pair, &format!("blk.{l}.ffn_norm"), n2);
        for kind in spec.block_site_kinds() {
            let shape = spec.site_shape(l, kind);
            let rows = match (spec.family, kind) {
                (Family::Llama, SiteKind::Q) => RowOrder::Rope(spec.layer(l).num_heads),
                (Family::Llama, SiteKind::K) => RowOrder::Rope(spec.layer(l).num_kv_heads),
                (_, SiteKind::Qkv) if spec.qkv == QkvLayout::FusedPerHead => RowOrder::QkvPerHead(spec.layer(l).num_heads),
                _ => RowOrder::Same,
            };
            let (g, module) = (site_name(kind), spec.hf_module(l, kind));
            pair(format!("blk.{l}.{g}.weight"), format!("{module}.weight"), shape.to_vec(), rows);
            if spec.site_has_bias(kind) {
                pair(format!("blk.{l}.{g}.bias"), format!("{module}.bias"), vec![shape[0]], rows);
            }
        }
    }
    norm(&mut pair, "output_norm", &names.final_norm);
    if let Some(head) = &names.lm_head {
        pair("output.weight".into(), head.clone(), vec![spec.vocab_size, h], RowOrder::Same);
    }
    v
}

/// Reorders rows from llama.cpp's RoPE layout to Hugging Face's (`to_hf`) or back. Rows of
/// head `h` are `[h, 2, d]` in Hugging Face order and `[h, d, 2]` in llama.cpp's.
pub fn permute_rows(values: &[f32], rows: usize, heads: usize, to_hf: bool) -> Vec<f32> {
    let d = rows / heads / 2;
    reorder(values, rows, to_hf, |hf| {
        let (h, a, i) = (hf / (2 * d), hf / d % 2, hf % d);
        h * 2 * d + i * 2 + a
    })
}

/// Reorders fused QKV rows from GGUF's `[q; k; v]` to Hugging Face's per-head interleave
/// `[heads, 3, d]` (`to_hf`) or back.
pub fn permute_qkv_rows(values: &[f32], rows: usize, heads: usize, to_hf: bool) -> Vec<f32> {
    let d = rows / heads / 3;
    reorder(values, rows, to_hf, |hf| {
        let (h, part, i) = (hf / (3 * d), hf / d % 3, hf % d);
        part * heads * d + h * d + i
    })
}

/// Moves whole rows: Hugging Face row `hf` is GGUF row `gguf_of(hf)`.
fn reorder(values: &[f32], rows: usize, to_hf: bool, gguf_of: impl Fn(usize) -> usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let mut out = vec![0f32; values.len()];
    for hf in 0..rows {
        let gg = gguf_of(hf);
        let (src, dst) = if to_hf { (gg, hf) } else { (hf, gg) };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
    }
    out
}

impl GgufFile {
    fn bad(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf { path: self.path.clone(), reason: reason.into() }
    }

    /// The `config.json` transformers would write for this file's model: `llama` (LLaMA and
    /// Mistral-style), `gptneox`, `bloom` or `mpt`, from llama.cpp's metadata keys.
    pub fn hf_config(&self) -> Result<Json> {
        let arch = self.require_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> { Ok(self.require_u64(&key(k))? as usize) };
        let opt_u = |k: &str| -> Result<Option<usize>> {
            match self.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| self.bad(format!("`{}` is {v:?}, not an integer", key(k)))),
            }
        };
        let f = |k: &str| -> Result<f64> {
            let v = self.require(&key(k))?;
            v.as_f64().ok_or_else(|| self.bad(format!("`{}` is {v:?}, not a number", key(k))))
        };
        let opt_f = |k: &str| -> Result<Option<f64>> {
            match self.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| self.bad(format!("`{}` is {v:?}, not a number", key(k)))),
            }
        };
        let hidden = u("embedding_length")?;
        let layers = u("block_count")?;
        // A size given once for every block, or (llama.cpp's `deci`) as an array of one per block.
        let per_block = |k: &str| -> Result<Option<Vec<usize>>> {
            match self.get(&key(k)) {
                None => Ok(None),
                Some(Value::Array(v)) if arch == "deci" => {
                    let sizes: Option<Vec<usize>> = v.iter().map(|x| x.as_u64().map(|x| x as usize)).collect();
                    match sizes {
                        Some(s) if s.len() == layers => Ok(Some(s)),
                        _ => Err(self.bad(format!("`{}` is not an array of {layers} integers (one per block)", key(k)))),
                    }
                }
                Some(v) => v
                    .as_u64()
                    .map(|x| Some(vec![x as usize; layers]))
                    .ok_or_else(|| self.bad(format!("`{}` is {v:?}, not an integer", key(k)))),
            }
        };
        let heads_per_block =
            per_block("attention.head_count")?.ok_or_else(|| self.bad(format!("key `{}` is missing", key("attention.head_count"))))?;
        if let Some(l) = heads_per_block.iter().position(|&h| h == 0) {
            return Err(self.bad(format!("`{}` is 0 for block {l}: attention-free blocks are not supported", key("attention.head_count"))));
        }
        let kv_per_block = per_block("attention.head_count_kv")?.unwrap_or_else(|| heads_per_block.clone());
        let ffn_per_block =
            per_block("feed_forward_length")?.ok_or_else(|| self.bad(format!("key `{}` is missing", key("feed_forward_length"))))?;
        let (heads, kv_heads, ffn) = (
            heads_per_block.iter().copied().max().unwrap_or(0),
            kv_per_block.iter().copied().max().unwrap_or(0),
            ffn_per_block.iter().copied().max().unwrap_or(0),
        );
        if heads == 0 {
            return Err(self.bad(format!("`{}` is 0", key("block_count"))));
        }
        // Blocks of differing sizes: the `secateur_subnet` extension of a LLaMA config, whose
        // blocks keep the super-network's query heads per key/value head.
        let mut subnet = Json::Null;
        let uniform = |v: &[usize]| v.iter().all(|x| *x == v[0]);
        if !(uniform(&heads_per_block) && uniform(&kv_per_block) && uniform(&ffn_per_block)) {
            let rep = heads / kv_heads.max(1);
            let mut blocks = Vec::with_capacity(layers);
            for l in 0..layers {
                let (h, kv, f) = (heads_per_block[l], kv_per_block[l], ffn_per_block[l]);
                if kv == 0 || h != kv * rep || f == 0 {
                    return Err(self.bad(format!(
                        "block {l}: {h} heads, {kv} key/value heads and a {f}-wide MLP; secateur's sub-networks keep {rep} heads \
                         per key/value head and a non-empty MLP in every block"
                    )));
                }
                blocks.push(json!({"num_attention_heads": h, "num_key_value_heads": kv, "intermediate_size": f}));
            }
            subnet = json!({"hidden_size": hidden, "layers": blocks});
        }
        let embed = self.tensor("token_embd.weight").ok_or_else(|| self.bad("tensor `token_embd.weight` is missing"))?;
        let vocab = match opt_u("vocab_size")? {
            Some(v) => v,
            None => embed.shape()[0],
        };
        let tied = self.tensor("output.weight").is_none();
        let context = opt_u("context_length")?;
        let mut config = match arch.as_str() {
            "llama" | "deci" => {
                let head_dim = opt_u("attention.key_length")?.unwrap_or(hidden / heads);
                if let Some(rot) = opt_u("rope.dimension_count")?
                    && rot != head_dim
                {
                    return Err(self.bad(format!(
                        "`{}` = {rot} but heads have {head_dim} dimensions: partial rotary embeddings are not a LLaMA model",
                        key("rope.dimension_count")
                    )));
                }
                if self.tensor("rope_freqs.weight").is_some() {
                    return Err(self.bad("tensor `rope_freqs.weight` (Llama 3.1-style RoPE frequency factors) is not supported"));
                }
                let rope_scaling = match self.get(&key("rope.scaling.type")).and_then(Value::as_str) {
                    None | Some("none") => Json::Null,
                    Some("linear") => json!({"type": "linear", "factor": f("rope.scaling.factor")?}),
                    Some(other) => {
                        return Err(self.bad(format!("`{}` = {other:?} is not supported (none, linear)", key("rope.scaling.type"))));
                    }
                };
                json!({
                    "architectures": ["LlamaForCausalLM"],
                    "model_type": "llama",
                    "intermediate_size": ffn,
                    "num_hidden_layers": layers,
                    "num_attention_heads": heads,
                    "num_key_value_heads": kv_heads,
                    "head_dim": head_dim,
                    "hidden_act": "silu",
                    "rms_norm_eps": f("attention.layer_norm_rms_epsilon")?,
                    "rope_theta": opt_f("rope.freq_base")?.unwrap_or(10000.0),
                    "rope_scaling": rope_scaling,
                    "max_position_embeddings": context.unwrap_or(2048),
                    "attention_bias": self.tensor("blk.0.attn_q.bias").is_some(),
                    "mlp_bias": false,
                })
            }
            "gptneox" => {
                let head_dim = hidden / heads;
                let rot = opt_u("rope.dimension_count")?.unwrap_or(head_dim);
                if rot == 0 || rot > head_dim || rot % 2 != 0 {
                    return Err(self.bad(format!(
                        "`{}` = {rot} is not an even number of the heads' {head_dim} dimensions",
                        key("rope.dimension_count")
                    )));
                }
                json!({
                    "architectures": ["GPTNeoXForCausalLM"],
                    "model_type": "gpt_neox",
                    "intermediate_size": ffn,
                    "num_hidden_layers": layers,
                    "num_attention_heads": heads,
                    "hidden_act": "gelu",
                    "rotary_pct": rot as f64 / head_dim as f64,
                    // llama.cpp's converter does not write the base; llama.cpp then uses 10000.
                    "rotary_emb_base": opt_f("rope.freq_base")?.unwrap_or(10000.0),
                    "layer_norm_eps": f("attention.layer_norm_epsilon")?,
                    "use_parallel_residual": self.get(&key("use_parallel_residual")).and_then(Value::as_bool).unwrap_or(true),
                    "attention_bias": self.tensor("blk.0.attn_qkv.bias").is_some(),
                    "max_position_embeddings": context.unwrap_or(2048),
                })
            }
            "bloom" => {
                if ffn != 4 * hidden {
                    return Err(self.bad(format!("`{}` = {ffn}, but BLOOM's MLP is 4 x {hidden} wide", key("feed_forward_length"))));
                }
                json!({
                    "architectures": ["BloomForCausalLM"],
                    "model_type": "bloom",
                    "n_layer": layers,
                    "n_head": heads,
                    "layer_norm_epsilon": f("attention.layer_norm_epsilon")?,
                    "apply_residual_connection_post_layernorm": false,
                })
            }
            "mpt" => {
                let bias_max = opt_f("attention.max_alibi_bias")?.unwrap_or(8.0);
                if bias_max <= 0.0 {
                    return Err(self.bad(format!(
                        "`{}` = {bias_max}: MPT without ALiBi (learned positions) is not supported",
                        key("attention.max_alibi_bias")
                    )));
                }
                if !tied {
                    return Err(self.bad("tensor `output.weight`: MPT's head is tied to the embedding"));
                }
                json!({
                    "architectures": ["MptForCausalLM"],
                    "model_type": "mpt",
                    "d_model": hidden,
                    "n_heads": heads,
                    "n_layers": layers,
                    "expansion_ratio": ffn as f64 / hidden as f64,
                    "attn_config": {"alibi": true, "alibi_bias_max": bias_max, "clip_qkv": opt_f("attention.clamp_kqv")?},
                    "no_bias": self.tensor("blk.0.attn_qkv.bias").is_none(),
                    "layer_norm_epsilon": f("attention.layer_norm_epsilon")?,
                    "max_seq_len": context.unwrap_or(2048),
                })
            }
            other => {
                return Err(self.bad(format!(
                    "architecture `{other}` cannot be imported (secateur imports GGUF `llama`, `deci`, `gptneox`, `bloom` and `mpt` models)"
                )));
            }
        };
        let llama = matches!(arch.as_str(), "llama" | "deci");
        if !llama && kv_heads != heads {
            return Err(self.bad(format!(
                "`{}` = {kv_heads} of {heads} heads: grouped key/value heads are not part of secateur's `{arch}` models",
                key("attention.head_count_kv")
            )));
        }
        if !llama && hidden % heads != 0 {
            return Err(self.bad(format!("{hidden} embedding dimensions do not split into {heads} heads")));
        }
        config["vocab_size"] = json!(vocab);
        if arch != "mpt" {
            config["hidden_size"] = json!(hidden); // MPT's is `d_model` (`hidden_size` an alias)
        }
        config["tie_word_embeddings"] = json!(tied);
        if !subnet.is_null() {
            config[SUBNET_EXTENSION_KEY] = subnet; // only `deci` gives per-block arrays
        }
        config["torch_dtype"] = json!("float32");
        for (field, k) in [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")] {
            if let Some(id) = self.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64) {
                config[field] = json!(id);
            }
        }
        Ok(config)
    }

    /// Every tensor in Hugging Face naming and layout, as f32, with the spec that names them.
    /// Every tensor of the file must be one the model uses (else an error names it).
    pub fn hf_tensors(&self, spec: &ArchSpec) -> Result<Vec<(TensorPair, Vec<f32>)>> {
        let pairs = gguf_tensors(spec);
        let wanted: HashSet<&str> = pairs.iter().map(|p| p.gguf.as_str()).collect();
        if let Some(extra) = self.tensors.iter().find(|t| !wanted.contains(t.name.as_str())) {
            return Err(self.bad(format!("tensor `{}` has no place in a `{}` model of this config", extra.name, gguf_arch(spec.family))));
        }
        let mut out = Vec::with_capacity(pairs.len());
        for p in pairs {
            let t = self.tensor(&p.gguf).ok_or_else(|| self.bad(format!("tensor `{}` is missing", p.gguf)))?;
            if t.shape() != p.shape {
                return Err(ModelError::ShapeMismatch {
                    path: self.path.clone(),
                    name: p.gguf.clone(),
                    expected: p.shape.clone(),
                    found: t.shape(),
                });
            }
            let rows = p.shape[0];
            let values = p
                .rows
                .apply(self.read_f32(&p.gguf)?, rows, true)
                .ok_or_else(|| self.bad(format!("tensor `{}`: {rows} rows cannot be split into the heads of {:?}", p.gguf, p.rows)))?;
            out.push((p, values));
        }
        Ok(out)
    }

    /// The token strings, or an error naming the key.
    pub fn tokens(&self) -> Result<Vec<&str>> {
        let v = self.require("tokenizer.ggml.tokens")?;
        let arr = v.as_array().ok_or_else(|| self.bad("`tokenizer.ggml.tokens` is not an array"))?;
        arr.iter().map(|t| t.as_str().ok_or_else(|| self.bad("`tokenizer.ggml.tokens` holds a non-string"))).collect()
    }

    /// `tokenizer.json` (the `tokenizers` crate's format) rebuilt from `tokenizer.ggml.*`: a
    /// byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer regexes llama.cpp
    /// uses for `tokenizer.ggml.pre`, or a SentencePiece vocabulary (`llama`, see
    /// [`Self::spm_tokenizer`]); control tokens (type 3) as special added tokens, and BOS
    /// added when `tokenizer.ggml.add_bos_token` says so.
    pub fn hf_tokenizer(&self) -> Result<Json> {
        let model = self.require_str("tokenizer.ggml.model")?;
        if model == "llama" {
            return self.spm_tokenizer();
        }
        if model != "gpt2" {
            return Err(self.bad(format!(
                "`tokenizer.ggml.model` = {model:?}: secateur imports byte-level BPE (`gpt2`) and SentencePiece (`llama`) tokenizers"
            )));
        }
        let tokens = self.tokens()?;
        let merges = self.merges()?.ok_or_else(|| self.bad("metadata key `tokenizer.ggml.merges` is missing"))?;
        let types = self.token_types(tokens.len())?;
        let pre = self.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let (regexes, ignore_merges) = pre_tokenizer_regexes(pre).ok_or_else(|| {
            self.bad(format!("`tokenizer.ggml.pre` = {pre:?} is not a pre-tokenizer secateur knows ({})", KNOWN_PRE.join(", ")))
        })?;
        let mut pre_tokenizers: Vec<Json> =
            regexes.iter().map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})).collect();
        pre_tokenizers.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
        let mut vocab = serde_json::Map::new();
        let mut seen = HashSet::new();
        for (i, t) in tokens.iter().enumerate() {
            if !seen.insert(*t) {
                // A duplicate string keeps its first id (as llama.cpp's token-to-id map does).
                continue;
            }
            vocab.insert(t.to_string(), json!(i));
        }
        let added: Vec<Json> = types
            .iter()
            .enumerate()
            .filter(|&(_, &ty)| ty == 3 || ty == 4)
            .map(|(i, &ty)| {
                json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": ty == 3})
            })
            .collect();
        let post = self.post_processor(&tokens, false)?;
        // A byte-level vocabulary covers every byte; a smaller one maps what it lacks to
        // `tokenizer.ggml.unknown_token_id` when the file names one.
        let unk = match self.get("tokenizer.ggml.unknown_token_id").and_then(Value::as_u64) {
            Some(id) => json!(*tokens.get(id as usize).ok_or_else(|| self.bad(format!("unknown_token_id {id} is not a token")))?),
            None => Json::Null,
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                      "vocab": vocab, "merges": merges},
        }))
    }

    /// `tokenizer.ggml.merges` as `tokenizer.json` pairs, when the file has them.
    fn merges(&self) -> Result<Option<Vec<Json>>> {
        let Some(merges) = self.get("tokenizer.ggml.merges") else { return Ok(None) };
        let merges = merges.as_array().ok_or_else(|| self.bad("`tokenizer.ggml.merges` is not an array"))?;
        merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = m.as_str().ok_or_else(|| self.bad(format!("`tokenizer.ggml.merges`[{i}] is not a string")))?;
                let (a, b) = s.split_once(' ').ok_or_else(|| self.bad(format!("`tokenizer.ggml.merges`[{i}] = {s:?} is not `A B`")))?;
                Ok(json!([a, b]))
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// `tokenizer.ggml.token_type` (1, normal, for every token when absent).
    fn token_types(&self, n: usize) -> Result<Vec<i64>> {
        let Some(v) = self.get("tokenizer.ggml.token_type") else { return Ok(vec![1; n]) };
        let a = v.as_array().ok_or_else(|| self.bad("`tokenizer.ggml.token_type` is not an array"))?;
        if a.len() != n {
            return Err(self.bad(format!("`tokenizer.ggml.token_type` has {} entries for {n} tokens", a.len())));
        }
        a.iter()
            .map(|t| match *t {
                Value::I32(x) => Ok(x as i64),
                _ => t.as_u64().map(|x| x as i64).ok_or_else(|| self.bad("`tokenizer.ggml.token_type` holds a non-integer")),
            })
            .collect()
    }

    /// BOS (and EOS) around every encoding as `tokenizer.ggml.add_bos_token` /
    /// `add_eos_token` ask (`add_bos` when the file does not say).
    fn post_processor(&self, tokens: &[&str], add_bos: bool) -> Result<Json> {
        let flag = |k: &str, default: bool| self.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_bool).unwrap_or(default);
        let mut ends = Vec::new();
        for (key, wanted) in [("bos", flag("add_bos_token", add_bos)), ("eos", flag("add_eos_token", false))] {
            if !wanted {
                continue;
            }
            let id = self.get(&format!("tokenizer.ggml.{key}_token_id")).and_then(Value::as_u64).ok_or_else(|| {
                self.bad(format!("`tokenizer.ggml.add_{key}_token` is true but there is no `tokenizer.ggml.{key}_token_id`"))
            })?;
            let t = *tokens.get(id as usize).ok_or_else(|| self.bad(format!("{key}_token_id {id} is not a token")))?;
            ends.push((key, t, id));
        }
        if ends.is_empty() {
            return Ok(Json::Null);
        }
        let special = |key: &str, type_id: u32| -> Vec<Json> {
            ends.iter().filter(|e| e.0 == key).map(|e| json!({"SpecialToken": {"id": e.1, "type_id": type_id}})).collect()
        };
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let single: Vec<Json> = [special("bos", 0), vec![seq("A", 0)], special("eos", 0)].concat();
        let pair: Vec<Json> =
            [special("bos", 0), vec![seq("A", 0)], special("eos", 0), special("bos", 1), vec![seq("B", 1)], special("eos", 1)].concat();
        let specials: serde_json::Map<String, Json> =
            ends.iter().map(|e| (e.1.to_string(), json!({"id": e.1, "ids": [e.2], "tokens": [e.1]}))).collect();
        Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`: tokens and scores, byte
    /// tokens `<0xNN>`) as transformers' GGUF conversion builds it (`GGUFLlamaConverter`, legacy
    /// LLaMA): `▁` prepended (unless `tokenizer.ggml.add_space_prefix` is false) and spaces
    /// replaced by `▁`, then BPE with byte fallback whose merges come from the scores (for each
    /// token, every split into two tokens, those ranked by the halves' scores, all ranked by the
    /// token's score, ties in vocabulary order), or from `tokenizer.ggml.merges` when the file
    /// has them; BOS added unless `tokenizer.ggml.add_bos_token` is false. llama.cpp's own
    /// tokenizer gives the same ids on the fixture's strings (`scripts/make_gguf_spm_fixture.py`).
    pub fn spm_tokenizer(&self) -> Result<Json> {
        let tokens = self.tokens()?;
        let types = self.token_types(tokens.len())?;
        let scores: Vec<f64> = match self.get("tokenizer.ggml.scores") {
            None => vec![0.0; tokens.len()],
            Some(v) => {
                let a = v.as_array().ok_or_else(|| self.bad("`tokenizer.ggml.scores` is not an array"))?;
                if a.len() != tokens.len() {
                    return Err(self.bad(format!("`tokenizer.ggml.scores` has {} entries for {} tokens", a.len(), tokens.len())));
                }
                a.iter().map(|x| x.as_f64().ok_or_else(|| self.bad("`tokenizer.ggml.scores` holds a non-number"))).collect::<Result<_>>()?
            }
        };
        // Python's `{t: i}` / `{t: score}`: a repeated string keeps its first position and its
        // last value.
        let mut order: Vec<&str> = Vec::new();
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if last.insert(t, i).is_none() {
                order.push(t);
            }
        }
        let merges: Vec<Json> = match self.merges()? {
            Some(m) => m,
            None => {
                let score = |t: &str| scores[last[t]];
                let mut all: Vec<(&str, &str, f64)> = Vec::new();
                for t in &order {
                    let mut local: Vec<(&str, &str, f64)> = t
                        .char_indices()
                        .skip(1)
                        .map(|(at, _)| t.split_at(at))
                        .filter(|(l, r)| last.contains_key(l) && last.contains_key(r))
                        .map(|(l, r)| (l, r, score(t)))
                        .collect();
                    local.sort_by(|a, b| {
                        (score(b.0), score(b.1)).partial_cmp(&(score(a.0), score(a.1))).unwrap_or(std::cmp::Ordering::Equal)
                    });
                    all.extend(local);
                }
                all.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
                all.into_iter().map(|(l, r, _)| json!([l, r])).collect()
            }
        };
        let vocab: serde_json::Map<String, Json> = order.iter().map(|t| (t.to_string(), json!(last[t]))).collect();
        let unk_id = self.get("tokenizer.ggml.unknown_token_id").and_then(Value::as_u64).map(|u| u as usize);
        let unk = match unk_id {
            Some(id) => json!(*tokens.get(id).ok_or_else(|| self.bad(format!("unknown_token_id {id} is not a token")))?),
            None => Json::Null,
        };
        let added: Vec<Json> = types
            .iter()
            .enumerate()
            .filter(|&(i, &ty)| ty == 3 || ty == 4 || Some(i) == unk_id)
            .map(|(i, &ty)| {
                json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": ty != 4})
            })
            .collect();
        let prefix = self.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
        let mut normalizers = Vec::new();
        if prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decoders = vec![
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        ];
        if prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": self.post_processor(&tokens, true)?,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        }))
    }

    /// `tokenizer_config.json`: special tokens, `add_bos_token`, and the chat template.
    pub fn hf_tokenizer_config(&self) -> Result<Json> {
        let tokens = self.tokens()?;
        // SentencePiece vocabularies add BOS unless the file says otherwise (llama.cpp).
        let spm = self.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
        let mut cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(spm),
            "add_eos_token": self.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool).unwrap_or(false),
            "clean_up_tokenization_spaces": false,
        });
        for (field, k) in [
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("pad_token", "padding_token_id"),
            ("unk_token", "unknown_token_id"),
        ] {
            if let Some(id) = self.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64) {
                let t = tokens.get(id as usize).ok_or_else(|| self.bad(format!("`tokenizer.ggml.{k}` = {id} is not a token")))?;
                cfg[field] = json!(t);
            }
        }
        if let Some(t) = self.get("tokenizer.chat_template") {
            cfg["chat_template"] = json!(t.as_str().ok_or_else(|| self.bad("`tokenizer.chat_template` is not a string"))?);
        }
        let arch = self.get("general.architecture").and_then(Value::as_str).unwrap_or("llama");
        if let Some(n) = self.get(&format!("{arch}.context_length")).and_then(Value::as_u64) {
            cfg["model_max_length"] = json!(n);
        }
        Ok(cfg)
    }
}

/// `tokenizer.ggml.pre` values [`pre_tokenizer_regexes`] knows.
pub const KNOWN_PRE: &[&str] = &["default", "gpt2", "gpt-2", "smollm", "starcoder", "refact", "llama3", "llama-v3", "llama-bpe", "qwen2"];

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp splits text with before BPE (applied in turn, matches and the text
/// between them kept as pieces; `llama-vocab.cpp`), and whether merges are skipped for whole
/// tokens (`ignore_merges`, LLaMA 3).
pub fn pre_tokenizer_regexes(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "gpt2" | "gpt-2" | "default" => (vec![GPT2_REGEX], false),
        "smollm" | "starcoder" | "refact" => (vec![r"\p{N}", GPT2_REGEX], false),
        "llama3" | "llama-v3" | "llama-bpe" => (vec![LLAMA3_REGEX], true),
        "qwen2" => (vec![QWEN2_REGEX], false),
        _ => return None,
    })
}

/// What [`import`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The GGUF file read.
    pub source: PathBuf,
    /// The checkpoint directory written.
    pub dir: PathBuf,
    /// Tensors per stored ggml type.
    pub tensor_types: BTreeMap<String, usize>,
    /// Parameters.
    pub parameters: usize,
}

/// Imports `gguf` into a new Hugging Face checkpoint directory `out` (written whole: staged,
/// then renamed into place).
pub fn import(gguf: &Path, out: &Path) -> Result<ImportReport> {
    let file = GgufFile::open(gguf)?;
    let config = file.hf_config()?;
    let spec = ArchSpec::from_config_value(gguf, config.clone())?;
    let tensors = file.hf_tensors(&spec)?;
    let tokenizer = file.hf_tokenizer()?;
    let tok_cfg = file.hf_tokenizer_config()?;
    let mut gen_cfg = json!({});
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(k) {
            gen_cfg[k] = v.clone();
        }
    }
    let mut types = BTreeMap::new();
    for t in &file.tensors {
        *types.entry(format!("{:?}", t.ggml_type)).or_insert(0) += 1;
    }
    let parameters = tensors.iter().map(|(_, v)| v.len()).sum();
    let staged = secateur_runs::StagedDir::new(out)?;
    let raw: Vec<RawTensor> =
        tensors.into_iter().map(|(p, v)| (p.hf, Dtype::F32, p.shape, encode_f32(&v, Dtype::F32).expect("f32 encodes"))).collect();
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    write_safetensors(&staged.path().join(WEIGHTS_FILE), &raw, meta)?;
    drop(raw);
    let put = |name: &str, v: &Json| write_atomic(&staged.path().join(name), serde_json::to_string_pretty(v).expect("JSON").as_bytes());
    put("config.json", &config)?;
    put("tokenizer.json", &tokenizer)?;
    put("tokenizer_config.json", &tok_cfg)?;
    put("generation_config.json", &gen_cfg)?;
    put(IMPORT_MARKER, &json!({"source": gguf, "import_version": IMPORT_VERSION}))?;
    staged.publish()?;
    Ok(ImportReport { source: gguf.to_path_buf(), dir: out.to_path_buf(), tensor_types: types, parameters })
}

/// The file [`import`] leaves in its output, naming the GGUF it came from.
pub const IMPORT_MARKER: &str = "gguf-import.json";

/// The GGUF file `path` names: `path` itself when it is one, or the single `.gguf` file in a
/// directory without `config.json`. `None` for a Hugging Face checkpoint directory.
pub fn gguf_source(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        if super::is_gguf(path) {
            return Ok(Some(path.to_path_buf()));
        }
        return Err(ModelError::Gguf { path: path.to_path_buf(), reason: "a model file must be a GGUF file (no `GGUF` magic)".into() });
    }
    if !path.exists() && path.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) {
        // A missing `.gguf` file, not a directory without its config.json.
        return Err(ModelError::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
    }
    if !path.is_dir() || path.join("config.json").is_file() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ModelError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(ModelError::Gguf {
            path: path.to_path_buf(),
            reason: format!("{n} .gguf files and no config.json: name the file to use ({})", found[0].display()),
        }),
    }
}

/// Where imports are cached: `$SECATEUR_CACHE`, else `$XDG_CACHE_HOME/secateur`, else
/// `~/.cache/secateur`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SECATEUR_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("secateur");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("secateur"))
        .unwrap_or_else(|| std::env::temp_dir().join("secateur"))
}

/// The checkpoint directory for `--model PATH`: `PATH` itself for a Hugging Face checkpoint;
/// for a GGUF model (see [`gguf_source`]) its import in [`cache_dir`], made on first use and
/// reused while the file is unchanged (same canonical path, size and modification time).
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    let Some(gguf) = gguf_source(path)? else { return Ok(path.to_path_buf()) };
    let canonical = gguf.canonicalize().map_err(|e| ModelError::io(&gguf, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| ModelError::io(&canonical, e))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    let key = fnv1a(format!("{}|{}|{mtime}|{IMPORT_VERSION}", canonical.display(), meta.len()).as_bytes());
    let stem = canonical.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let dir = cache_dir().join("gguf").join(format!("{stem}-{key:016x}"));
    if !dir.join(IMPORT_MARKER).is_file() {
        // An import killed midway left a partial directory beside this one: remove it first.
        secateur_runs::remove_stale_siblings(&dir);
        import(&canonical, &dir)?;
    }
    Ok(dir)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_round_trips() {
        let (rows, cols, heads) = (8, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let g = permute_rows(&w, rows, heads, false);
        // Head 0, rows [0 1 2 3] in HF order are [0 2 1 3] in llama.cpp's.
        assert_eq!(&g[..cols * 4], &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
        assert_eq!(permute_rows(&g, rows, heads, true), w);
    }
}
