//! Extraction of an elastic sub-network into a standalone, smaller model with a Hugging Face
//! `config.json` that both secateur and transformers read.
//!
//! Any valid [`SubnetStructure`] can be extracted: a subset of blocks, per-block MLP widths and
//! key/value groups, and a narrower residual stream. When the sub-network is homogeneous and the
//! family's config can say so (LLaMA/Mistral: everything, as `head_dim` is explicit; GPT-NeoX:
//! blocks and MLP width, since its head size is `hidden / heads`; MPT: blocks and MLP width
//! through `expansion_ratio`; BLOOM: blocks only, its MLP is always `4·hidden`), the written
//! config is a plain Hugging Face one. Otherwise it is the super-network's config plus the
//! `secateur_subnet` extension ([`crate::spec::SubnetExtension`]), which secateur reads and
//! transformers ignores.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;

use crate::Dense;
use crate::error::{ModelError, Result};
use crate::nn::Norm;
use crate::spec::{ArchSpec, LayerDims, SUBNET_EXTENSION_KEY, SubnetExtension};
use crate::transformer::{Block, CausalLm, SubnetStructure};

/// A contiguous copy: narrowed views keep the parent's strides, and strided weights make every
/// later matmul slow on the CPU backend.
fn owned<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
}

fn slice<B: Backend>(d: &Dense<B>, rows: &[(usize, usize)], cols: usize) -> Dense<B> {
    let parts: Vec<Tensor<B, 2>> = rows.iter().map(|&(start, len)| d.weight.val().narrow(0, start, len)).collect();
    let w = owned(Tensor::cat(parts, 0).narrow(1, 0, cols));
    let b = d.bias.as_ref().map(|b| owned(Tensor::cat(rows.iter().map(|&(start, len)| b.val().narrow(0, start, len)).collect(), 0)));
    Dense { weight: Param::from_tensor(w), bias: b.map(Param::from_tensor) }
}

fn norm<B: Backend>(n: &Norm<B>, e: usize) -> Norm<B> {
    let take = |p: &Param<Tensor<B, 1>>| Param::from_tensor(owned(p.val().narrow(0, 0, e)));
    Norm { weight: take(&n.weight), bias: n.bias.as_ref().map(take), eps: n.eps, rms: n.rms }
}

/// The family's own fields for a homogeneous sub-network, where they can say it.
fn native_config(spec: &ArchSpec, config: &serde_json::Value, layers: usize, e: usize, dims: LayerDims) -> Option<serde_json::Value> {
    let mut cfg = config.clone();
    let obj = cfg.as_object_mut()?;
    obj.remove(SUBNET_EXTENSION_KEY);
    (spec.family.ops().native_config)(spec, obj, layers, e, dims).then_some(cfg)
}

/// The super-network's config with the number of layers changed and the [`SubnetExtension`].
fn extension_config(spec: &ArchSpec, config: &serde_json::Value, e: usize, dims: Vec<LayerDims>) -> Result<serde_json::Value> {
    let mut cfg = config.clone();
    let key = spec.family.ops().layers_key;
    let obj = cfg.as_object_mut().ok_or_else(|| ModelError::InvalidInput("config.json is not an object".into()))?;
    obj.insert(key.to_string(), dims.len().into());
    let ext = SubnetExtension { hidden_size: e, layers: dims };
    obj.insert(SUBNET_EXTENSION_KEY.to_string(), serde_json::to_value(ext).expect("the extension serialises"));
    Ok(cfg)
}

/// The standalone model of `structure` and its `config.json` (`config` is the super-network's).
///
/// The config uses the family's own fields when they can describe the sub-network (then
/// transformers loads it too) and the documented [`SubnetExtension`] otherwise.
pub fn extract<B: Backend>(
    model: &CausalLm<B, Dense<B>>,
    structure: &SubnetStructure,
    config: &serde_json::Value,
) -> Result<(CausalLm<B, Dense<B>>, serde_json::Value)> {
    let spec = model.spec();
    structure.validate(spec)?;
    let e = structure.hidden(spec);
    let dims = structure.layer_dims(spec);
    let layers = dims.len();
    let parse = |cfg: &serde_json::Value| ArchSpec::from_config_value(Path::new("config.json"), cfg.clone());
    let homogeneous = dims.iter().all(|d| *d == dims[0]);
    // Keep the native config only if it parses back to exactly these sizes (MPT's
    // `expansion_ratio` may not represent every width).
    let native = if homogeneous { native_config(spec, config, layers, e, dims[0]) } else { None }
        .and_then(|cfg| parse(&cfg).ok().map(|s| (s, cfg)))
        .filter(|(s, _)| s.hidden_size == e && s.layer_dims.is_none() && (0..layers).all(|l| s.layer(l) == dims[l]));
    let (new_spec, cfg) = match native {
        Some(found) => found,
        None => {
            let cfg = extension_config(spec, config, e, dims.clone())?;
            (parse(&cfg)?, cfg)
        }
    };
    let d = spec.head_dim;
    let blocks = structure
        .layers
        .iter()
        .zip(&dims)
        .map(|(l, nd)| {
            let b = &model.blocks[l.layer];
            let (h, kvh) = (b.dims.num_heads, b.dims.num_kv_heads);
            let (hq, hk) = (nd.num_heads, nd.num_kv_heads);
            let width = nd.intermediate_size;
            let attn_in = match spec.qkv {
                crate::QkvLayout::Separate => vec![
                    slice(&b.attn_in[0], &[(0, hq * d)], e),
                    slice(&b.attn_in[1], &[(0, hk * d)], e),
                    slice(&b.attn_in[2], &[(0, hk * d)], e),
                ],
                crate::QkvLayout::FusedPerHead => vec![slice(&b.attn_in[0], &[(0, hq * 3 * d)], e)],
                crate::QkvLayout::FusedBlocks => vec![slice(&b.attn_in[0], &[(0, hq * d), (h * d, hk * d), ((h + kvh) * d, hk * d)], e)],
            };
            Block {
                attn_norm: norm(&b.attn_norm, e),
                mlp_norm: norm(&b.mlp_norm, e),
                attn_in,
                attn_out: slice(&b.attn_out, &[(0, e)], hq * d),
                mlp_gate: b.mlp_gate.as_ref().map(|g| slice(g, &[(0, width)], e)),
                mlp_up: slice(&b.mlp_up, &[(0, width)], e),
                mlp_down: slice(&b.mlp_down, &[(0, e)], width),
                dims: *nd,
            }
        })
        .collect();
    let columns = |p: &Param<Tensor<B, 2>>| Param::from_tensor(owned(p.val().narrow(1, 0, e)));
    let extracted = CausalLm {
        embed: columns(&model.embed),
        embed_norm: model.embed_norm.as_ref().map(|n| norm(n, e)),
        blocks,
        final_norm: norm(&model.final_norm, e),
        lm_head: model.lm_head.as_ref().map(columns),
        head_q8: None,
        spec: std::sync::Arc::new(new_spec),
    };
    Ok((extracted, cfg))
}
