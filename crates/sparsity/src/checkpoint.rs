//! Writing a pruned model as a Hugging Face checkpoint plus its masks and a sparsity report.

use std::path::Path;

use burn::prelude::*;
use secateur_models::weights::{encode_f32, write_atomic, write_safetensors, Dtype, RawTensor};
use secateur_models::{Checkpoint, DenseLm};
use serde_json::json;

use crate::prune::SiteMask;
use crate::{PruneConfig, SparsityError};

/// Files copied unchanged from the source checkpoint when present.
const COPIED: &[&str] = &["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// Writes `out/model.safetensors` (every tensor of `src`, the pruned projection weights in
/// their stored dtype), `out/masks.safetensors` (one u8 tensor per site, 1 = kept),
/// `out/sparsity.json`, and copies config and tokenizer files. Each file is written atomically.
pub fn write_pruned<B: Backend>(
    src: &Path,
    out: &Path,
    model: &DenseLm<B>,
    masks: &[SiteMask],
    cfg: &PruneConfig,
) -> Result<serde_json::Value, SparsityError> {
    let write_err = |path: &Path, reason: String| SparsityError::Write {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e.to_string()))?;
    let ckpt = Checkpoint::open(src)?;
    let spec = model.spec();
    let mut replaced = std::collections::HashMap::new();
    for (site, proj) in model.projections() {
        let name = format!("{}.weight", spec.hf_module(site.layer, site.kind));
        let values: Vec<f32> = proj.weight.val().into_data().convert::<f32>().to_vec().expect("f32 weight");
        replaced.insert(name, values);
    }
    let mut tensors: Vec<RawTensor> = Vec::new();
    for name in ckpt.names() {
        let (dtype, shape, bytes) = ckpt.raw(&name).expect("listed tensor");
        let bytes = match replaced.get(&name) {
            Some(values) => encode_f32(values, dtype).ok_or_else(|| {
                write_err(ckpt.path_of(&name), format!("tensor `{name}` has unsupported dtype {dtype:?}"))
            })?,
            None => bytes.to_vec(),
        };
        tensors.push((name, dtype, shape.to_vec(), bytes));
    }
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    write_safetensors(&out.join("model.safetensors"), &tensors, meta)?;

    let mask_tensors: Vec<RawTensor> = masks
        .iter()
        .map(|m| {
            let bytes = m.keep.iter().map(|&k| k as u8).collect();
            (m.site.to_string(), Dtype::U8, m.shape.to_vec(), bytes)
        })
        .collect();
    write_safetensors(&out.join("masks.safetensors"), &mask_tensors, None)?;

    for f in COPIED {
        let from = src.join(f);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|source| SparsityError::Io { path: from.clone(), source })?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    let zeros: usize = masks.iter().map(|m| m.keep.iter().filter(|k| !**k).count()).sum();
    let total: usize = masks.iter().map(|m| m.keep.len()).sum();
    let report = json!({
        "method": cfg.method,
        "pattern": cfg.pattern,
        "pruned_weights": zeros,
        "weights_in_pruned_sites": total,
        "total_sparsity": zeros as f64 / total.max(1) as f64,
        "parameters": model.num_params(),
        "nonzero_parameters": model.num_params() - zeros,
        "sites": masks.iter().map(|m| (m.site.to_string(), json!(m.sparsity()))).collect::<serde_json::Map<_, _>>(),
    });
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    write_atomic(&out.join("sparsity.json"), text.as_bytes())?;
    Ok(report)
}
