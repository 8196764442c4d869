//! Hugging Face PEFT interchange: export a (sub-)adapter with its true ranks so that stock PEFT
//! loads it unpatched, import PEFT LoRA adapters, and merge adapters into the base weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use burn::module::Param;
use burn::prelude::*;
use secateur_models::weights::{Checkpoint, Dtype, RawTensor, write_atomic, write_safetensors};
use secateur_models::{Dense, DenseLm, Projection};
use serde_json::json;

use crate::LoraError;
use crate::lora::{AdaptedLm, ElasticLoraLinear, LoraAdapter, Scaling};

/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's adapter config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

fn key(module: &str, factor: &str) -> String {
    format!("base_model.model.{module}.lora_{factor}.weight")
}

fn to_vec<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 tensor")
}

/// Writes the active sub-adapter of `model` to `dir` in PEFT format: `adapter_model.safetensors`
/// with `lora_A [r, in]` / `lora_B [out, r]` at each site's active rank, and
/// `adapter_config.json` whose `rank_pattern` and `alpha_pattern` give every module its true rank
/// and an alpha with `alpha / r` equal to the scale the adapter used. Sites at rank 0 are left out.
pub fn export_peft<B: Backend, P: Projection<B>>(
    model: &AdaptedLm<B, P>,
    dir: &Path,
    base_model_name_or_path: &str,
) -> Result<serde_json::Value, LoraError> {
    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io { path: dir.to_path_buf(), source })?;
    let spec = model.spec();
    let mut tensors: Vec<RawTensor> = Vec::new();
    let mut modules: Vec<(String, usize, f64)> = Vec::new();
    for (site, proj) in model.projections() {
        let Some(ad) = &proj.adapter else { continue };
        let r = ad.active_rank();
        if r == 0 {
            continue;
        }
        let module = spec.hf_module(site.layer, site.kind);
        let (a, b) = ad.active_factors();
        let (a_shape, b_shape) = (a.dims().to_vec(), b.dims().to_vec());
        let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push((key(&module, "A"), Dtype::F32, a_shape, bytes(to_vec(a))));
        tensors.push((key(&module, "B"), Dtype::F32, b_shape, bytes(to_vec(b))));
        modules.push((module, r, ad.scale_at(r) * r as f64));
    }
    if modules.is_empty() {
        return Err(LoraError::Config("no adapter is active: nothing to export".into()));
    }
    // The most common (rank, alpha) is the default; every other module gets a pattern entry.
    let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (_, r, alpha) in &modules {
        *counts.entry((*r, alpha.to_bits())).or_default() += 1;
    }
    let (&(r0, a0_bits), _) = counts.iter().max_by_key(|(k, c)| (**c, std::cmp::Reverse(**k))).expect("modules");
    let a0 = f64::from_bits(a0_bits);
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for (m, r, alpha) in &modules {
        if *r != r0 {
            rank_pattern.insert(m.clone(), json!(r));
        }
        if alpha.to_bits() != a0_bits {
            alpha_pattern.insert(m.clone(), json!(alpha));
        }
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r0,
        "lora_alpha": a0,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": modules.iter().map(|(m, _, _)| m.clone()).collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
    });
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    write_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors, meta)?;
    write_atomic(&dir.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&config).expect("JSON").as_bytes())?;
    Ok(config)
}

/// PEFT's pattern lookup (`rank_pattern`, `alpha_pattern`): a key applies to a module whose
/// name is the key or ends with `.key` (PEFT matches `(.*\.)?key$` as a regex; keys here are
/// taken literally).
fn pattern_value(pattern: Option<&serde_json::Value>, module: &str) -> Option<f64> {
    pattern?.as_object()?.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).and_then(|(_, v)| v.as_f64())
}

/// The settings of a PEFT LoRA `adapter_config.json` that secateur reads.
struct PeftConfig {
    json: serde_json::Value,
    r: f64,
    alpha: f64,
}

impl PeftConfig {
    fn read(dir: &Path) -> Result<Self, LoraError> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| LoraError::Io { path: cfg_path.clone(), source })?;
        let bad = |reason: String| LoraError::File { path: cfg_path.clone(), reason };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if json.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
            return Err(bad("`peft_type` is not LORA".into()));
        }
        for flag in ["use_dora", "fan_in_fan_out", "use_rslora"] {
            if json.get(flag).and_then(|v| v.as_bool()) == Some(true) {
                return Err(bad(format!("`{flag}: true` is not supported")));
            }
        }
        let r = json.get("r").and_then(|v| v.as_f64()).ok_or_else(|| bad("missing `r`".into()))?;
        let alpha = json.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| bad("missing `lora_alpha`".into()))?;
        Ok(Self { json, r, alpha })
    }

    /// `module`'s alpha (`alpha_pattern`, else `lora_alpha`), once its tensor `ka`'s rank `r`
    /// is checked against the config's (`rank_pattern`, else `r`).
    fn alpha_of(&self, module: &str, r: usize, ka: &str, dir: &Path) -> Result<f64, LoraError> {
        let r_cfg = pattern_value(self.json.get("rank_pattern"), module).unwrap_or(self.r) as usize;
        if r != r_cfg {
            return Err(LoraError::File {
                path: dir.join(ADAPTER_WEIGHTS),
                reason: format!("`{ka}` has rank {r}, the config says {r_cfg}"),
            });
        }
        Ok(pattern_value(self.json.get("alpha_pattern"), module).unwrap_or(self.alpha))
    }
}

/// A PEFT LoRA adapter directory as a llama.cpp LoRA adapter file for the LLaMA-family base
/// in `base` (its GGUF from `secateur export`): GGUF v3 with `general.type = adapter`,
/// `adapter.type = lora`, and per adapted projection `blk.N.<name>.weight.lora_a` (`[r, in]`)
/// and `.lora_b` (`[out, r]`), B's rows in llama.cpp's RoPE order for Q and K as the base's
/// rows are (`convert_lora_to_gguf.py`). Each module's PEFT scale `alpha / r` is folded into B
/// and `adapter.lora.alpha` is 0, which llama.cpp applies as is: per-module `rank_pattern` /
/// `alpha_pattern` (Shears' sub-adapters) keep their scales, where a single alpha could not.
/// Matrices are `ty` (f32, f16 or q8_0; F16 where rows do not fill whole blocks). Written
/// atomically; an adapter on a tensor GGUF adapters cannot hold (embeddings, head) is an error
/// naming it.
pub fn export_gguf_adapter(
    base: &Path,
    adapter: &Path,
    out: &Path,
    ty: secateur_models::gguf::GgmlType,
) -> Result<secateur_models::gguf::export::ExportReport, LoraError> {
    use secateur_models::gguf::GgmlType;
    use secateur_models::gguf::export::{ExportReport, Meta, check_exportable, push_tensor, write_gguf};
    use secateur_models::gguf::import::{gguf_arch, gguf_tensors};
    let config = base.join("config.json");
    let spec = secateur_models::ArchSpec::from_config_file(&config)?;
    check_exportable(&spec, &config)?;
    if ![GgmlType::F32, GgmlType::F16, GgmlType::Q8_0].contains(&ty) {
        return Err(LoraError::File {
            path: out.to_path_buf(),
            reason: format!("adapters are written as f32, f16 or q8_0, not {}", ty.name()),
        });
    }
    let cfg = PeftConfig::read(adapter)?;
    let weights_path = adapter.join(ADAPTER_WEIGHTS);
    let weights = Checkpoint::from_files(std::slice::from_ref(&weights_path))?;
    let bad = |reason: String| LoraError::File { path: weights_path.clone(), reason };
    let mut used = std::collections::HashSet::new();
    let mut infos = Vec::new();
    let mut data = Vec::new();
    let mut report = ExportReport { path: out.to_path_buf(), bytes: 0, tensor_types: BTreeMap::new(), fallbacks: Vec::new() };
    for p in gguf_tensors(&spec).into_iter().filter(|p| p.shape.len() == 2) {
        let Some(module) = p.hf.strip_suffix(".weight") else { continue };
        let (ka, kb) = (key(module, "A"), key(module, "B"));
        let (Some(sa), Some(sb)) = (weights.shape(&ka), weights.shape(&kb)) else {
            if weights.shape(&ka).is_some() || weights.shape(&kb).is_some() {
                return Err(bad(format!("`{module}` has only one of lora_A and lora_B")));
            }
            continue;
        };
        let (r, [out_dim, in_dim]) = (sa[0], [p.shape[0], p.shape[1]]);
        if sa != [r, in_dim] || sb != [out_dim, r] {
            return Err(bad(format!("`{ka}` {sa:?} / `{kb}` {sb:?} do not fit `{}` {:?}", p.hf, p.shape)));
        }
        let scale = cfg.alpha_of(module, r, &ka, adapter)? / r as f64;
        let a = weights.read_f32(&ka, &[r, in_dim])?;
        let b: Vec<f32> = weights.read_f32(&kb, &[out_dim, r])?.into_iter().map(|x| (x as f64 * scale) as f32).collect();
        let b = p.rows.apply(b, out_dim, false).ok_or_else(|| bad(format!("`{kb}`: {out_dim} rows do not split into the heads")))?;
        for (suffix, values, shape, cols) in [("lora_a", a, vec![r, in_dim], in_dim), ("lora_b", b, vec![out_dim, r], r)] {
            let name = format!("{}.{suffix}", p.gguf);
            let (t, offset, fallback) = push_tensor(&mut data, &values, cols, ty).map_err(|e| bad(format!("`{name}`: {e}")))?;
            if fallback {
                report.fallbacks.push(name.clone());
            }
            *report.tensor_types.entry(t.name().to_string()).or_default() += 1;
            infos.push((name, shape, t, offset));
        }
        used.extend([ka, kb]);
    }
    if let Some(other) = weights.names().into_iter().find(|n| !used.contains(n)) {
        return Err(bad(format!("`{other}` adapts a tensor a llama.cpp LoRA adapter cannot hold (only the blocks' projections)")));
    }
    if infos.is_empty() {
        return Err(bad("no lora_A / lora_B pairs on the base's projections".into()));
    }
    let name = adapter.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
    let meta = vec![
        ("general.architecture".to_string(), Meta::Str(gguf_arch(spec.family).into())),
        ("general.type".to_string(), Meta::Str("adapter".into())),
        ("general.name".to_string(), Meta::Str(name)),
        ("adapter.type".to_string(), Meta::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), Meta::F32(0.0)),
    ];
    report.bytes = write_gguf(out, &meta, &infos, data)?;
    Ok(report)
}

/// Loads a PEFT LoRA adapter directory onto a dense model. Each site with `lora_A`/`lora_B`
/// tensors gets an adapter of that rank with PEFT's scale `lora_alpha / r` (per-module values
/// from `rank_pattern` and `alpha_pattern`).
pub fn import_peft<B: Backend>(model: DenseLm<B>, dir: &Path, device: &B::Device) -> Result<AdaptedLm<B>, LoraError> {
    let cfg = PeftConfig::read(dir)?;
    let weights = Checkpoint::from_files(&[dir.join(ADAPTER_WEIGHTS)])?;
    let spec = model.spec().clone();
    let adapted = model.map_projections(|site, base: Dense<B>| {
        let module = spec.hf_module(site.layer, site.kind);
        let (ka, kb) = (key(&module, "A"), key(&module, "B"));
        let adapter = match (weights.shape(&ka), weights.shape(&kb)) {
            (None, None) => None,
            (Some(sa), Some(_)) => {
                let [out, inp] = base.shape();
                let r = sa[0];
                let alpha = cfg.alpha_of(&module, r, &ka, dir)?;
                let a = weights.read_f32(&ka, &[r, inp])?;
                let b = weights.read_f32(&kb, &[out, r])?;
                Some(LoraAdapter {
                    a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [r, inp]), device)),
                    b: Param::from_tensor(Tensor::from_data(TensorData::new(b, [out, r]), device)),
                    alpha,
                    scaling: Scaling::MaxRank,
                    rank: Arc::new(AtomicUsize::new(r)),
                })
            }
            _ => {
                return Err(LoraError::File {
                    path: dir.join(ADAPTER_WEIGHTS),
                    reason: format!("`{module}` has only one of lora_A and lora_B"),
                });
            }
        };
        Ok(ElasticLoraLinear { base, adapter })
    })?;
    Ok(adapted)
}

/// Merges every adapter at its active rank into its base: `W + s·B[:, :r]·A[:r]`.
pub fn merge<B: Backend>(model: AdaptedLm<B>) -> DenseLm<B> {
    let merged: Result<DenseLm<B>, std::convert::Infallible> = model.map_projections(|_, p: ElasticLoraLinear<B, Dense<B>>| {
        Ok(match p.adapter {
            Some(ad) if ad.active_rank() > 0 => {
                Dense { weight: Param::from_tensor(p.base.weight.val() + ad.delta_weight()), bias: p.base.bias }
            }
            _ => p.base,
        })
    });
    match merged {
        Ok(m) => m,
        Err(never) => match never {},
    }
}

/// The active ranks of an adapted model by Hugging Face module name (for reports).
pub fn active_ranks<B: Backend, P: Projection<B>>(model: &AdaptedLm<B, P>) -> HashMap<String, usize> {
    let spec = model.spec();
    model
        .projections()
        .into_iter()
        .filter_map(|(s, p)| p.adapter.as_ref().map(|a| (spec.hf_module(s.layer, s.kind), a.active_rank())))
        .collect()
}
