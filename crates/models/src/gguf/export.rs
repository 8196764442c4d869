//! Writing a Hugging Face checkpoint (LLaMA, GPT-NeoX, BLOOM or MPT) as a GGUF v3 file, laid
//! out like the `gguf` package's `GGUFWriter` and named like llama.cpp's `convert_hf_to_gguf.py`:
//! architecture metadata, the byte-level BPE tokenizer, the chat template, LLaMA's Q/K rows in
//! llama.cpp's RoPE order, fused QKV rows as `[q; k; v]`, norms in F32 and every matrix in the requested type (F16 where its rows do not fill
//! whole blocks of that type, as llama.cpp's converter does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::import::{KNOWN_PRE, RowOrder, TensorPair, gguf_arch, gguf_tensors, pre_tokenizer_regexes};
use super::quants::{GgmlType, quantize};
use crate::error::{ModelError, Result};
use crate::spec::{Activation, ArchSpec, Family, LayerDims, PositionKind, Residual};
use crate::weights::{Checkpoint, write_atomic};

/// Tensor data alignment (`general.alignment` default).
const ALIGN: usize = 32;

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The GGUF file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Tensors per ggml type.
    pub tensor_types: BTreeMap<String, usize>,
    /// Matrices written as F16 because their rows do not fill whole blocks of the type asked for.
    pub fallbacks: Vec<String>,
}

/// The types [`export`] writes matrices in.
pub const EXPORT_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

/// A metadata value as GGUF stores it.
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    F32Array(Vec<f32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// An array of 4-byte elements of GGUF type `ty`.
fn put_array(out: &mut Vec<u8>, ty: u32, items: impl ExactSizeIterator<Item = [u8; 4]>) {
    out.extend(9u32.to_le_bytes());
    out.extend(ty.to_le_bytes());
    out.extend((items.len() as u64).to_le_bytes());
    items.for_each(|x| out.extend(x));
}

impl Meta {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(*x as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(out, s);
            }
            Meta::StrArray(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(out, s);
                }
            }
            Meta::I32Array(v) => put_array(out, 5, v.iter().map(|x| x.to_le_bytes())),
            Meta::F32Array(v) => put_array(out, 6, v.iter().map(|x| x.to_le_bytes())),
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), reason: reason.into() }
}

/// The `general.architecture` a model of `spec` is written as: its family's (see [`gguf_arch`]),
/// except a heterogeneous LLaMA sub-network (per-block heads or MLP widths), which is written as
/// llama.cpp's `deci` (the architecture of DeciLM and Llama-Nemotron's NAS models: LLaMA blocks
/// whose head counts and feed-forward widths are arrays with one entry per block).
pub fn export_arch(spec: &ArchSpec) -> &'static str {
    if spec.family == Family::Llama && !spec.is_homogeneous() { "deci" } else { gguf_arch(spec.family) }
}

/// The architecture metadata of `spec` under llama.cpp's keys for its family (`llama`,
/// `gptneox`, `bloom`, `mpt`), or why GGUF cannot express the model.
fn arch_metadata(spec: &ArchSpec, config: &Path) -> Result<Vec<(String, Meta)>> {
    let arch = export_arch(spec);
    let hetero = !spec.is_homogeneous();
    if spec.layer_dims.is_some() && spec.family != Family::Llama {
        return Err(bad(
            config,
            format!(
                "a heterogeneous sub-network (per-layer heads or widths) cannot be written as GGUF: llama.cpp's `{arch}` \
                 architecture takes one head count and one feed-forward width for every block (extract a homogeneous one)"
            ),
        ));
    }
    if spec.sliding_window.is_some() {
        return Err(bad(config, format!("sliding-window attention cannot be written as a GGUF `{arch}` model")));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let u = |s: &str, v: usize| (k(s), Meta::U32(v as u32));
    // Per-block sizes: one value when every block has them, else one entry per block (`deci`).
    let per_layer = |s: &str, f: fn(&LayerDims) -> usize| {
        let dims: Vec<usize> = (0..spec.num_layers).map(|l| f(&spec.layer(l))).collect();
        if hetero { (k(s), Meta::I32Array(dims.iter().map(|&d| d as i32).collect())) } else { u(s, dims[0]) }
    };
    let context = spec.max_position_embeddings.unwrap_or(2048);
    let mut meta = vec![
        u("context_length", context),
        u("embedding_length", spec.hidden_size),
        u("block_count", spec.num_layers),
        per_layer("feed_forward_length", |d| d.intermediate_size),
        per_layer("attention.head_count", |d| d.num_heads),
    ];
    let rope = |spec: &ArchSpec| match &spec.position {
        PositionKind::Rope { theta, rotary_dim, scaling: None } => Ok((*theta, *rotary_dim)),
        PositionKind::Rope { .. } => Err(bad(config, "RoPE scaling (`rope_scaling`) is not written to GGUF yet")),
        PositionKind::Alibi { .. } => Err(bad(config, format!("a `{arch}` model with ALiBi cannot be written as GGUF"))),
    };
    match spec.family {
        Family::Llama => {
            let (theta, rotary_dim) = rope(spec)?;
            if rotary_dim != spec.head_dim {
                return Err(bad(config, "partial rotary embeddings are not written to GGUF (llama.cpp's `llama` rotates whole heads)"));
            }
            if hetero || spec.hidden_size != spec.layer(0).num_heads * spec.head_dim {
                // A narrower residual stream than heads x head_dim (an extracted sub-network): llama.cpp
                // reads the head size from these keys, transformers from `rope.dimension_count`.
                meta.insert(0, u("attention.key_length", spec.head_dim));
                meta.insert(1, u("attention.value_length", spec.head_dim));
            }
            meta.extend([
                u("rope.dimension_count", rotary_dim),
                per_layer("attention.head_count_kv", |d| d.num_kv_heads),
                (k("attention.layer_norm_rms_epsilon"), Meta::F32(spec.norm_eps as f32)),
                (k("rope.freq_base"), Meta::F32(theta as f32)),
                u("vocab_size", spec.vocab_size),
            ]);
        }
        Family::GptNeox => {
            let (theta, rotary_dim) = rope(spec)?;
            if !matches!(spec.activation, Activation::Gelu | Activation::GeluTanh) {
                return Err(bad(config, format!("llama.cpp's `gptneox` uses GELU, not {:?}", spec.activation)));
            }
            meta.extend([
                u("rope.dimension_count", rotary_dim),
                (k("use_parallel_residual"), Meta::Bool(spec.residual == Residual::Parallel)),
                (k("attention.layer_norm_epsilon"), Meta::F32(spec.norm_eps as f32)),
                (k("rope.freq_base"), Meta::F32(theta as f32)),
            ]);
        }
        Family::Bloom => {
            if spec.residual == Residual::SequentialPostNorm {
                return Err(bad(
                    config,
                    "`apply_residual_connection_post_layernorm` cannot be written as GGUF (llama.cpp's `bloom` has no key for it)",
                ));
            }
            meta.extend([
                per_layer("attention.head_count_kv", |d| d.num_kv_heads),
                (k("attention.layer_norm_epsilon"), Meta::F32(spec.norm_eps as f32)),
            ]);
        }
        Family::Mpt => {
            let PositionKind::Alibi { slopes } = &spec.position else {
                return Err(bad(config, "an MPT model without ALiBi cannot be written as GGUF"));
            };
            if (spec.attn_scale - 1.0 / (spec.head_dim as f64).sqrt()).abs() > 1e-12 {
                return Err(bad(
                    config,
                    "`attn_config.softmax_scale` cannot be written as GGUF (llama.cpp's `mpt` scales by 1/sqrt(head_dim))",
                ));
            }
            // MPT's slopes are 2^(-bias_max * i / n) for i in 1..=n (n: the next power of two of the
            // heads; some i dropped when the heads are fewer), the largest always i = 1.
            let n = spec.num_heads.next_power_of_two() as f64;
            let bias_max = -slopes.iter().cloned().fold(f64::MIN, f64::max).log2() * n;
            meta.push((k("attention.layer_norm_epsilon"), Meta::F32(spec.norm_eps as f32)));
            if let Some(c) = spec.clip_qkv {
                meta.push((k("attention.clamp_kqv"), Meta::F32(c as f32)));
            }
            meta.push((k("attention.max_alibi_bias"), Meta::F32(bias_max as f32)));
        }
    }
    Ok(meta)
}

/// The tensors written for `spec`: [`gguf_tensors`], plus what llama.cpp's `gptneox` requires
/// and the checkpoint lacks: `output.weight` for a tied head (a copy of the embedding) and
/// zero attention biases for a model without them. Both leave the model's function unchanged.
fn export_tensors(spec: &ArchSpec) -> Vec<(TensorPair, Synth)> {
    let mut out: Vec<(TensorPair, Synth)> = gguf_tensors(spec).into_iter().map(|p| (p, Synth::Read)).collect();
    if spec.family != Family::GptNeox {
        return out;
    }
    let names = spec.weight_names();
    if spec.tie_word_embeddings {
        let shape = vec![spec.vocab_size, spec.hidden_size];
        out.push((TensorPair { gguf: "output.weight".into(), hf: names.embed.clone(), shape, rows: RowOrder::Same }, Synth::Read));
    }
    if !spec.attention_bias {
        for l in 0..spec.num_layers {
            for kind in [crate::site::SiteKind::Qkv, crate::site::SiteKind::O] {
                let [rows, _] = spec.site_shape(l, kind);
                let g = if kind == crate::site::SiteKind::O { "attn_output" } else { "attn_qkv" };
                let hf = format!("{}.bias", spec.hf_module(l, kind));
                out.push((TensorPair { gguf: format!("blk.{l}.{g}.bias"), hf, shape: vec![rows], rows: RowOrder::Same }, Synth::Zeros));
            }
        }
    }
    out
}

/// Where an exported tensor's values come from.
#[derive(Clone, Copy, PartialEq)]
enum Synth {
    /// The checkpoint (or the caller's `weight`).
    Read,
    /// Zeros (a bias llama.cpp requires and the model does not have).
    Zeros,
}

fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(path, format!("not JSON: {e}")))
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer: plain GPT-2 byte level,
/// or a sequence of splits equal to the regexes of one of llama.cpp's names.
fn pre_name(pre: &Json, path: &Path) -> Result<String> {
    if pre["type"] == "ByteLevel" && pre["use_regex"] != false {
        return Ok("gpt-2".into()); // llama.cpp knows `gpt-2`, not `gpt2`
    }
    let regexes: Option<Vec<&str>> = pre["pretokenizers"]
        .as_array()
        .map(|steps| steps.iter().filter(|s| s["type"] == "Split").filter_map(|s| s["pattern"]["Regex"].as_str()).collect());
    if let Some(found) = regexes {
        for name in KNOWN_PRE {
            if let Some((want, _)) = pre_tokenizer_regexes(name)
                && want == found
            {
                return Ok((*name).to_string());
            }
        }
    }
    Err(bad(
        path,
        "its pre-tokenizer is not one llama.cpp names (GPT-2 byte level, or the splits of a `tokenizer.ggml.pre` secateur knows)",
    ))
}

/// Whether `tok` (a `tokenizer.json`) is a SentencePiece vocabulary as transformers converts
/// them (LLaMA-2, Mistral, TinyLlama): BPE with byte fallback whose normaliser (or `Metaspace`
/// pre-tokenizer) writes spaces as `▁`. `Some(add_space_prefix)` then, else `None`.
fn sentencepiece_style(tok: &Json) -> Option<bool> {
    if tok["model"]["byte_fallback"] != true {
        return None;
    }
    let steps = |v: &Json, list: &str| -> Vec<Json> {
        match v["type"].as_str() {
            Some("Sequence") => v[list].as_array().cloned().unwrap_or_default(),
            Some(_) => vec![v.clone()],
            None => Vec::new(),
        }
    };
    let norms = steps(&tok["normalizer"], "normalizers");
    let replaces = norms.iter().any(|n| n["type"] == "Replace" && n["pattern"]["String"] == " " && n["content"] == "\u{2581}");
    if replaces {
        return Some(norms.iter().any(|n| n["type"] == "Prepend" && n["prepend"] == "\u{2581}"));
    }
    let meta = steps(&tok["pre_tokenizer"], "pretokenizers").into_iter().find(|p| p["type"] == "Metaspace")?;
    Some(meta["prepend_scheme"] != "never" && meta["add_prefix_space"] != false)
}

/// The tokenizer metadata from `tokenizer.json` and `tokenizer_config.json`: a byte-level BPE
/// (`tokenizer.ggml.model = gpt2`, with merges and the pre-tokenizer's llama.cpp name), or a
/// SentencePiece-style one (see [`sentencepiece_style`]) as `llama` with scores.
///
/// `tokenizer.json` keeps no SentencePiece scores; llama.cpp merges the adjacent pair whose
/// union has the highest score, so each piece gets `-rank` of the first merge that makes it
/// (SentencePiece's own scores for BPE pieces follow merge order the same way), and pieces no
/// merge makes score below all of them. Byte pieces `<0xXX>` are BYTE, the unknown token
/// UNKNOWN, special added tokens CONTROL, other added tokens USER_DEFINED.
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Meta)>> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(bad(&path, format!("a {} tokenizer cannot be written to GGUF yet (secateur writes BPE vocabularies)", model["type"])));
    }
    let spm = sentencepiece_style(&tok);
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = model["vocab"].as_object().ok_or_else(|| bad(&path, "`model.vocab` is not an object"))?;
    let mut place = |t: &str, id: u64, ty: Option<i32>| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(&path, format!("token `{t}` has id {id}, past the model's {vocab_size} embeddings")))?;
        *slot = Some(t.to_string());
        if let Some(ty) = ty {
            types[id as usize] = ty;
        }
        Ok(())
    };
    for (t, id) in vocab {
        let byte = spm.is_some() && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
        place(t, id.as_u64().ok_or_else(|| bad(&path, format!("token `{t}` has no integer id")))?, byte.then_some(6))?;
    }
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(t), Some(id)) = (a["content"].as_str(), a["id"].as_u64()) else {
            return Err(bad(&path, "an entry of `added_tokens` lacks `content` or `id`"));
        };
        let ty = if spm.is_some() && model["unk_token"].as_str() == Some(t) {
            2
        } else if a["special"] == true {
            3
        } else {
            4
        };
        place(t, id, Some(ty))?;
    }
    // Embedding rows past the tokenizer's vocabulary, named as llama.cpp's converter names them.
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| bad(&path, "`model.merges` is not an array"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
            }
            _ => Err(bad(&path, format!("merge {m} is neither `a b` nor [a, b]"))),
        })
        .collect::<Result<_>>()?;
    let mut meta = Vec::new();
    match spm {
        None => {
            meta.push(("tokenizer.ggml.model".to_string(), Meta::Str("gpt2".into())));
            meta.push(("tokenizer.ggml.pre".to_string(), Meta::Str(pre_name(&tok["pre_tokenizer"], &path)?)));
        }
        Some(_) => meta.push(("tokenizer.ggml.model".to_string(), Meta::Str("llama".into()))),
    }
    let id_of = |t: &str| tokens.iter().position(|x| x == t);
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { Json::Null };
    let mut ids = Vec::new();
    for (field, key) in
        [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")]
    {
        let t = cfg[field].as_str().or_else(|| cfg[field]["content"].as_str());
        if let Some(t) = t {
            let id = id_of(t).ok_or_else(|| bad(&cfg_path, format!("`{field}` `{t}` is not a token of {}", path.display())))?;
            ids.push((format!("tokenizer.ggml.{key}"), Meta::U32(id as u32)));
        }
    }
    if let Some(prefix) = spm {
        let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let normal_floor = -(merges.len() as f32);
        let mut scores: Vec<f32> = (0..tokens.len()).map(|i| if types[i] == 1 { normal_floor - i as f32 } else { 0.0 }).collect();
        for (rank, m) in merges.iter().enumerate().rev() {
            let Some((l, r)) = m.split_once(' ') else { return Err(bad(&path, format!("merge `{m}` is not `a b`"))) };
            if let Some(&i) = index.get(format!("{l}{r}").as_str()) {
                scores[i] = -(rank as f32);
            }
        }
        meta.push(("tokenizer.ggml.tokens".into(), Meta::StrArray(tokens)));
        meta.push(("tokenizer.ggml.scores".into(), Meta::F32Array(scores)));
        meta.push(("tokenizer.ggml.token_type".into(), Meta::I32Array(types)));
        meta.push(("tokenizer.ggml.add_space_prefix".into(), Meta::Bool(prefix)));
    } else {
        meta.push(("tokenizer.ggml.tokens".into(), Meta::StrArray(tokens)));
        meta.push(("tokenizer.ggml.token_type".into(), Meta::I32Array(types)));
        meta.push(("tokenizer.ggml.merges".into(), Meta::StrArray(merges)));
    }
    meta.extend(ids);
    meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(cfg["add_bos_token"] == true)));
    if cfg["add_eos_token"] == true {
        meta.push(("tokenizer.ggml.add_eos_token".into(), Meta::Bool(true)));
    }
    if let Some(t) = cfg["chat_template"].as_str() {
        meta.push(("tokenizer.chat_template".into(), Meta::Str(t.to_string())));
    }
    Ok(meta)
}

/// Checks that the model `spec` (read from `config`) is one GGUF's architectures can express, before any work that would end in writing it; the error says what is not.
pub fn check_exportable(spec: &ArchSpec, config: &Path) -> Result<()> {
    arch_metadata(spec, config).map(drop)
}

/// Writes the checkpoint `dir` (any family; dense, pruned, merged or an extracted homogeneous
/// sub-network) as the GGUF v3 file `out`, matrices in `ty` (one of [`EXPORT_TYPES`]); the
/// file appears whole or not at all.
///
/// ```no_run
/// use secateur_models::gguf::{GgmlType, export::export};
/// let report = export("runs/nas/heuristic".as_ref(), "heuristic-q8_0.gguf".as_ref(), GgmlType::Q8_0)?;
/// println!("{} bytes, {:?}", report.bytes, report.tensor_types);
/// # Ok::<(), secateur_models::ModelError>(())
/// ```
pub fn export(dir: &Path, out: &Path, ty: GgmlType) -> Result<ExportReport> {
    export_with(dir, out, ty, &mut |_| None)
}

/// [`export`], with the values of some tensors given by `weight` (by Hugging Face name, `[out,
/// in]` row-major; called once per tensor) instead of read from the checkpoint: how a quantized
/// checkpoint, whose projections are packed codes, is written with its dequantized weights.
pub fn export_with(dir: &Path, out: &Path, ty: GgmlType, weight: &mut dyn FnMut(&str) -> Option<Vec<f32>>) -> Result<ExportReport> {
    let config = dir.join("config.json");
    if !EXPORT_TYPES.contains(&ty) {
        return Err(bad(out, format!("{} is not a type secateur writes (f32, f16, q8_0, q4_0, q4_1)", ty.name())));
    }
    let spec = ArchSpec::from_config_file(&config)?;
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(export_arch(&spec).into())),
        ("general.name".into(), Meta::Str(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()))),
        ("general.file_type".into(), Meta::U32(file_type(ty))),
    ];
    meta.extend(arch_metadata(&spec, &config)?);
    meta.extend(tokenizer_metadata(dir, spec.vocab_size)?);
    meta.push(("general.quantization_version".into(), Meta::U32(2)));

    let ckpt = Checkpoint::open(dir)?;
    let mut infos = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut report = ExportReport { path: out.to_path_buf(), bytes: 0, tensor_types: BTreeMap::new(), fallbacks: Vec::new() };
    for (p, synth) in export_tensors(&spec) {
        let values = match weight(&p.hf) {
            _ if synth == Synth::Zeros => vec![0.0; p.shape.iter().product()],
            Some(v) if v.len() == p.shape.iter().product::<usize>() => v,
            Some(v) => {
                return Err(ModelError::ShapeMismatch {
                    path: config.clone(),
                    name: p.hf.clone(),
                    expected: p.shape.clone(),
                    found: vec![v.len()],
                });
            }
            None => ckpt.read_f32(&p.hf, &p.shape)?,
        };
        let values = p
            .rows
            .apply(values, p.shape[0], false)
            .ok_or_else(|| bad(&config, format!("tensor `{}`: rows do not split into heads", p.hf)))?;
        let (row_ty, cols) = if p.shape.len() == 1 { (GgmlType::F32, p.shape[0]) } else { (ty, p.shape[1]) };
        let (t, offset, fallback) = push_tensor(&mut data, &values, cols, row_ty)
            .map_err(|reason| bad(ckpt.path_of(&p.hf), format!("tensor `{}`: {reason}", p.hf)))?;
        if fallback {
            report.fallbacks.push(p.hf.clone());
        }
        *report.tensor_types.entry(t.name().to_string()).or_default() += 1;
        infos.push((p.gguf, p.shape, t, offset));
    }

    report.bytes = write_gguf(out, &meta, &infos, data)?;
    Ok(report)
}

/// One tensor of a GGUF file being written: its GGUF name, PyTorch shape (outermost first),
/// type, and the offset of its bytes in the data section.
pub type TensorInfo = (String, Vec<usize>, GgmlType, usize);

/// Writes a GGUF v3 file atomically, laid out as the `gguf` package's writer does (metadata,
/// tensor infos with dimensions fastest-first, 32-byte alignment) from `meta`, `infos` and the
/// data section (each tensor at its offset, aligned); returns its size in bytes.
pub fn write_gguf(out: &Path, meta: &[(String, Meta)], infos: &[TensorInfo], data: Vec<u8>) -> Result<u64> {
    let mut file = Vec::with_capacity(data.len() + (1 << 20));
    file.extend(b"GGUF");
    file.extend(3u32.to_le_bytes());
    file.extend((infos.len() as u64).to_le_bytes());
    file.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut file, k);
        v.write(&mut file);
    }
    for (name, shape, t, offset) in infos {
        put_str(&mut file, name);
        file.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            file.extend((*d as u64).to_le_bytes());
        }
        file.extend(t.id().to_le_bytes());
        file.extend((*offset as u64).to_le_bytes());
    }
    file.resize(file.len().next_multiple_of(ALIGN), 0);
    file.extend(data);
    write_atomic(out, &file)?;
    Ok(file.len() as u64)
}

/// Appends `values` (`[rows, cols]` row-major) to `data` as `ty`, or as F16 when rows do not
/// fill whole blocks of `ty` (then `fallback` is true); returns the type written and its offset.
pub fn push_tensor(data: &mut Vec<u8>, values: &[f32], cols: usize, ty: GgmlType) -> std::result::Result<(GgmlType, usize, bool), String> {
    let (t, fallback) = if !cols.is_multiple_of(ty.block_size()) { (GgmlType::F16, true) } else { (ty, false) };
    let bytes = quantize(t, values)?;
    let offset = data.len();
    data.extend(&bytes);
    data.resize(data.len().next_multiple_of(ALIGN), 0);
    Ok((t, offset, fallback))
}

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) of a model whose matrices are `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        _ => 7, // Q8_0
    }
}
