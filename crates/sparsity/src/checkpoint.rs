//! Writing a pruned model as a Hugging Face checkpoint plus its masks and a sparsity report.

use std::path::Path;

use burn::prelude::Backend;

use secateur_models::DenseLm;
use secateur_models::weights::{Dtype, RawTensor, write_atomic, write_safetensors};
use serde_json::json;

use crate::prune::SiteMask;
use crate::{PruneConfig, SparsityError};

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
    let write_err = |path: &Path, reason: String| SparsityError::Write { path: path.to_path_buf(), reason };
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e.to_string()))?;
    secateur_models::weights::save_like(model, src, out)?;

    let mask_tensors: Vec<RawTensor> = masks
        .iter()
        .map(|m| {
            let bytes = m.keep.iter().map(|&k| k as u8).collect();
            (m.site.to_string(), Dtype::U8, m.shape.to_vec(), bytes)
        })
        .collect();
    write_safetensors(&out.join("masks.safetensors"), &mask_tensors, None)?;

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
