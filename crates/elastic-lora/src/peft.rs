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

/// Loads a PEFT LoRA adapter directory onto a dense model. Each site with `lora_A`/`lora_B`
/// tensors gets an adapter of that rank with PEFT's scale `lora_alpha / r` (per-module values
/// from `rank_pattern` and `alpha_pattern`).
pub fn import_peft<B: Backend>(model: DenseLm<B>, dir: &Path, device: &B::Device) -> Result<AdaptedLm<B>, LoraError> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| LoraError::Io { path: cfg_path.clone(), source })?;
    let bad = |reason: String| LoraError::File { path: cfg_path.clone(), reason };
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if cfg.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
        return Err(bad("`peft_type` is not LORA".into()));
    }
    for flag in ["use_dora", "fan_in_fan_out", "use_rslora"] {
        if cfg.get(flag).and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad(format!("`{flag}: true` is not supported")));
        }
    }
    let r_default = cfg.get("r").and_then(|v| v.as_f64()).ok_or_else(|| bad("missing `r`".into()))?;
    let alpha_default = cfg.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| bad("missing `lora_alpha`".into()))?;
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
                let r_cfg = pattern_value(cfg.get("rank_pattern"), &module).unwrap_or(r_default) as usize;
                if r != r_cfg {
                    return Err(LoraError::File {
                        path: dir.join(ADAPTER_WEIGHTS),
                        reason: format!("`{ka}` has rank {r}, the config says {r_cfg}"),
                    });
                }
                let alpha = pattern_value(cfg.get("alpha_pattern"), &module).unwrap_or(alpha_default);
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
