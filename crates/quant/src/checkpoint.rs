//! Quantized Hugging Face checkpoints in the GPTQ format: `{module}.qweight`, `.qzeros`,
//! `.scales`, `.g_idx` per projection, and `quantization_config` in `config.json`
//! (`quant_method: gptq`, `sym: false`, `desc_act` (act-order `g_idx` are read and written),
//! `checkpoint_format: gptq`).

use std::path::Path;

use burn::prelude::*;
use secateur_models::weights::{COPIED_FILES, Checkpoint, Dtype, RawTensor, WEIGHTS_FILE, encode_f32, write_atomic, write_safetensors};
use secateur_models::{ArchSpec, Dense, DenseLm, ModelError, Site};
use serde_json::json;

use crate::QuantError;
use crate::linear::{QuantLinear, QuantLm};
use crate::pack::Packed;
use crate::rtn::{QuantConfig, Quantized, quantize};

/// Quantizes every projection of a dense model (embeddings, norms and the head stay f32, and
/// the head gets an int8 copy for decoding: [`secateur_models::CausalLm::quantize_head`]).
pub fn quantize_model<B: Backend>(model: DenseLm<B>, cfg: QuantConfig) -> Result<QuantLm<B>, QuantError> {
    let model = model.quantize_head();
    model.map_projections(|site, dense: Dense<B>| {
        let [o, i] = dense.shape();
        let w: Vec<f32> = dense.weight.val().into_data().convert::<f32>().to_vec().expect("f32 weight");
        let q = quantize(&w, o, i, cfg).map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
        let packed = Packed::pack(&q).map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
        Ok(QuantLinear::new(packed, dense.bias.map(|b| b.val())))
    })
}

/// Quantizes one dense projection's weight (for callers that need the unpacked values).
pub fn quantize_dense<B: Backend>(dense: &Dense<B>, cfg: QuantConfig) -> Result<Quantized, QuantError> {
    let [o, i] = dense.shape();
    let w: Vec<f32> = dense.weight.val().into_data().convert::<f32>().to_vec().expect("f32 weight");
    quantize(&w, o, i, cfg)
}

fn i32_bytes(v: impl Iterator<Item = i32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a quantized model in `out`, laid out like its dense source `src`: every tensor of
/// `src` except the projection weights, plus the packed tensors; `config.json` gains the
/// `quantization_config`. Returns the size in bytes of the written weights file.
pub fn write_quantized<B: Backend>(src: &Path, out: &Path, model: &QuantLm<B>) -> Result<u64, QuantError> {
    write_quantized_with(src, out, model, &QuantMeta::default())
}

/// How a quantized model was made, for its `quantization_config`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QuantMeta {
    /// GPTQ's dampening (`damp_percent`), `None` for round-to-nearest.
    pub damp: Option<f64>,
    pub static_groups: bool,
}

/// [`write_quantized`] with the settings of the method that made the model.
pub fn write_quantized_with<B: Backend>(src: &Path, out: &Path, model: &QuantLm<B>, how: &QuantMeta) -> Result<u64, QuantError> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::Io { path: out.to_path_buf(), source: e })?;
    let ckpt = Checkpoint::open(src)?;
    let spec = model.spec();
    let mut tensors: Vec<RawTensor> = Vec::new();
    let mut replaced = std::collections::HashSet::new();
    let mut cfg = None;
    let mut desc_act = false;
    for (site, p) in model.projections() {
        let module = spec.hf_module(site.layer, site.kind);
        replaced.insert(format!("{module}.weight"));
        let pk = p.checkpoint_packed().map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
        desc_act |= p.perm.is_some();
        cfg = Some(pk.config);
        let v = 32 / pk.config.bits as usize;
        let groups = pk.scales.len() / pk.out_features;
        tensors.push((
            format!("{module}.qweight"),
            Dtype::I32,
            vec![pk.in_features / v, pk.out_features],
            i32_bytes(pk.qweight.iter().map(|&w| w as i32)),
        ));
        tensors.push((
            format!("{module}.qzeros"),
            Dtype::I32,
            vec![groups, pk.out_features / v],
            i32_bytes(pk.qzeros.iter().map(|&w| w as i32)),
        ));
        tensors.push((
            format!("{module}.scales"),
            Dtype::F16,
            vec![groups, pk.out_features],
            pk.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        ));
        tensors.push((format!("{module}.g_idx"), Dtype::I32, vec![pk.in_features], i32_bytes(pk.g_idx.iter().copied())));
        if let Some(b) = &p.bias {
            let name = format!("{module}.bias");
            let dtype = ckpt.raw(&name).map_or(Dtype::F32, |(d, _, _)| d);
            let vals: Vec<f32> = b.val().into_data().convert::<f32>().to_vec().expect("f32");
            tensors.push((name.clone(), dtype, vec![vals.len()], encode_f32(&vals, dtype).expect("float dtype")));
            replaced.insert(name);
        }
    }
    for name in ckpt.names() {
        if !replaced.contains(&name) {
            let (dtype, shape, bytes) = ckpt.raw(&name).expect("listed tensor");
            tensors.push((name, dtype, shape.to_vec(), bytes.to_vec()));
        }
    }
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    let weights = out.join(WEIGHTS_FILE);
    write_safetensors(&weights, &tensors, meta)?;
    let cfg = cfg.ok_or_else(|| QuantError::Config("the model has no projections".into()))?;
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::Io { path: config_path.clone(), source: e })?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: config_path.clone(), source: e })?;
    config["quantization_config"] = json!({
        "quant_method": "gptq",
        "bits": cfg.bits,
        "group_size": cfg.group_size.map_or(-1, |g| g as i64),
        "sym": false,
        "desc_act": desc_act,
        "static_groups": how.static_groups,
        "damp_percent": how.damp.unwrap_or(0.01),
        "checkpoint_format": "gptq",
        // Blocks run in sequence; within a block every projection sees the dense block's inputs.
        "true_sequential": false,
    });
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config).expect("JSON").as_bytes())?;
    for f in COPIED_FILES.iter().filter(|f| **f != "config.json") {
        let from = src.join(f);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| ModelError::Io { path: from.clone(), source: e })?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    Ok(std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0))
}

/// The `quantization_config` of a checkpoint directory, if any.
pub fn quant_config(dir: &Path) -> Result<Option<QuantConfig>, QuantError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.clone(), source: e })?;
    let Some(q) = v.get("quantization_config") else { return Ok(None) };
    let bad =
        |field: &str, reason: &str| QuantError::Checkpoint { path: path.clone(), reason: format!("quantization_config.{field}: {reason}") };
    if q.get("quant_method").and_then(|m| m.as_str()) != Some("gptq") {
        return Err(bad("quant_method", "only gptq checkpoints are read"));
    }
    if let Some(f) = q.get("checkpoint_format").and_then(|m| m.as_str())
        && f != "gptq"
    {
        return Err(bad("checkpoint_format", "only the gptq (v1) format is read"));
    }
    let bits = match q.get("bits") {
        None => return Err(bad("bits", "missing")),
        Some(b) => match b.as_u64() {
            Some(n @ (2 | 4 | 8)) => n as u32,
            _ => return Err(bad("bits", &format!("{b} is not one of 2, 4, 8 (the packings GPTQ checkpoints use)"))),
        },
    };
    let group = match q.get("group_size") {
        None => -1,
        Some(g) => match g.as_i64() {
            Some(n) if n == -1 || (1..=1 << 20).contains(&n) => n,
            _ => return Err(bad("group_size", &format!("{g} is neither -1 (one group per row) nor a positive group size"))),
        },
    };
    Ok(Some(QuantConfig { bits, group_size: (group > 0).then_some(group as usize) }))
}

/// Loads a quantized checkpoint written by [`write_quantized`] (or by GPTQ tools with
/// `sym: false`, 2/4/8 bits, with or without act-order).
pub fn load_quantized<B: Backend>(dir: &Path, device: &B::Device) -> Result<QuantLm<B>, QuantError> {
    let cfg = quant_config(dir)?
        .ok_or_else(|| QuantError::Checkpoint { path: dir.join("config.json"), reason: "no quantization_config".into() })?;
    let spec = ArchSpec::from_config_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let model = secateur_models::CausalLm::from_checkpoint_with(spec, &ckpt, device, |spec, ckpt, site, device| {
        load_projection(spec, ckpt, site, cfg, device)
    })?;
    Ok(model.quantize_head())
}

fn load_projection<B: Backend>(
    spec: &ArchSpec,
    ckpt: &Checkpoint,
    site: Site,
    cfg: QuantConfig,
    device: &B::Device,
) -> Result<QuantLinear<B>, ModelError> {
    let module = spec.hf_module(site.layer, site.kind);
    let [o, i] = spec.site_shape(site.layer, site.kind);
    let v = 32 / cfg.bits as usize;
    let g = cfg.group(i);
    let groups = i.div_ceil(g);
    let raw = |name: String, dtype: Dtype, shape: Vec<usize>| -> Result<Vec<u8>, ModelError> {
        let (d, s, bytes) =
            ckpt.raw(&name).ok_or_else(|| ModelError::MissingTensor { path: ckpt.path_of(&name).to_path_buf(), name: name.clone() })?;
        if s != shape.as_slice() {
            return Err(ModelError::ShapeMismatch { path: ckpt.path_of(&name).to_path_buf(), name, expected: shape, found: s.to_vec() });
        }
        if d != dtype {
            return Err(ModelError::UnsupportedDtype {
                path: ckpt.path_of(&name).to_path_buf(),
                name,
                dtype: format!("{d:?} (expected {dtype:?})"),
            });
        }
        Ok(bytes.to_vec())
    };
    let words = |b: Vec<u8>| -> Vec<u32> { b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect() };
    let qweight = words(raw(format!("{module}.qweight"), Dtype::I32, vec![i / v, o])?);
    let qzeros = words(raw(format!("{module}.qzeros"), Dtype::I32, vec![groups, o / v])?);
    let scales = raw(format!("{module}.scales"), Dtype::F16, vec![groups, o])?
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
        .collect::<Vec<_>>();
    if let Some(at) = scales.iter().position(|s| !s.is_finite()) {
        let name = format!("{module}.scales");
        return Err(ModelError::NonFinite { path: ckpt.path_of(&name).to_path_buf(), value: scales[at].to_f32(), name, index: at });
    }
    let g_idx: Vec<i32> = words(raw(format!("{module}.g_idx"), Dtype::I32, vec![i])?).into_iter().map(|w| w as i32).collect();
    let bias = if spec.site_has_bias(site.kind) {
        let data = ckpt.read_f32(&format!("{module}.bias"), &[o])?;
        Some(Tensor::from_data(TensorData::new(data, [o]), device))
    } else {
        None
    };
    let packed = Packed { out_features: o, in_features: i, config: cfg, qweight, qzeros, scales, g_idx };
    QuantLinear::from_packed(packed, bias).map_err(|e| ModelError::InvalidConfig {
        path: ckpt.path_of(&format!("{module}.g_idx")).to_path_buf(),
        field: format!("{module}.g_idx"),
        reason: e.to_string(),
    })
}

/// Writes any checkpoint secateur loads as a GGUF v3 file (see
/// [`secateur_models::gguf::export::export`]): a dense one as it is, a GPTQ-format one with its
/// projections dequantized, then written in `ty` (the GPTQ grid is not carried over exactly:
/// GGUF's blocks have their own scales).
pub fn export_gguf<B: Backend>(
    dir: &Path,
    out: &Path,
    ty: secateur_models::gguf::GgmlType,
    device: &B::Device,
) -> Result<secateur_models::gguf::export::ExportReport, QuantError> {
    use secateur_models::gguf::export::{check_exportable, export, export_with};
    if quant_config(dir)?.is_none() {
        return Ok(export(dir, out, ty)?);
    }
    let config = dir.join("config.json");
    check_exportable(&ArchSpec::from_config_file(&config)?, &config)?;
    let model = load_quantized::<B>(dir, device)?;
    let spec = model.spec().clone();
    let mut weights: std::collections::HashMap<String, Vec<f32>> = model
        .projections()
        .into_iter()
        .map(|(site, p)| (format!("{}.weight", spec.hf_module(site.layer, site.kind)), p.dequantized()))
        .collect();
    drop(model);
    Ok(export_with(dir, out, ty, &mut |name| weights.remove(name))?)
}
