//! Extraction of an elastic sub-network into a standalone, smaller model with a Hugging Face
//! `config.json` that both secateur and transformers read.
//!
//! Supported: any subset of blocks, and one MLP width and one number of key/value groups shared
//! by the kept blocks, where the family's config can say so (LLaMA/Mistral: all three; GPT-NeoX:
//! blocks and MLP width, since its head size is `hidden / heads`; MPT: blocks and MLP width
//! through `expansion_ratio`; BLOOM: blocks only, its MLP is always `4·hidden`). Per-block widths
//! (heterogeneous sub-networks) need a config extension and are not supported yet.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;

use crate::error::{ModelError, Result};
use crate::spec::{ArchSpec, Family, PositionKind};
use crate::transformer::{Block, CausalLm, SubnetStructure};
use crate::Dense;

fn slice<B: Backend>(d: &Dense<B>, rows: &[(usize, usize)], cols: usize) -> Dense<B> {
    let parts: Vec<Tensor<B, 2>> = rows.iter().map(|&(start, len)| d.weight.val().narrow(0, start, len)).collect();
    let w = Tensor::cat(parts, 0).narrow(1, 0, cols);
    let b = d.bias.as_ref().map(|b| Tensor::cat(rows.iter().map(|&(start, len)| b.val().narrow(0, start, len)).collect(), 0));
    Dense { weight: Param::from_tensor(w), bias: b.map(Param::from_tensor) }
}

/// The standalone model of `structure` and its `config.json` (`config` is the super-network's).
pub fn extract<B: Backend>(model: &CausalLm<B, Dense<B>>, structure: &SubnetStructure, config: &serde_json::Value) -> Result<(CausalLm<B, Dense<B>>, serde_json::Value)> {
    let spec = model.spec();
    structure.validate(spec)?;
    let first = structure.layers[0];
    if structure.layers.iter().any(|l| l.mlp_width != first.mlp_width || l.kv_groups != first.kv_groups) {
        return Err(ModelError::InvalidInput("extraction of sub-networks whose blocks differ in width is not supported yet".into()));
    }
    let (width, groups) = (first.mlp_width, first.kv_groups);
    let rep = spec.num_heads / spec.num_kv_heads;
    let refuse = |what: &str| Err(ModelError::InvalidInput(format!("{:?} configs cannot express a smaller {what}", spec.family)));
    let heads_changed = groups != spec.num_kv_heads;
    let width_changed = width != spec.intermediate_size;
    if heads_changed && (spec.family != Family::Llama || matches!(spec.position, PositionKind::Alibi { .. })) {
        return refuse("number of heads");
    }
    if width_changed && spec.family == Family::Bloom {
        return refuse("MLP width");
    }
    let mut cfg = config.clone();
    let set = |cfg: &mut serde_json::Value, key: &str, v: serde_json::Value| cfg[key] = v;
    let layers = structure.layers.len();
    match spec.family {
        Family::Llama => {
            set(&mut cfg, "num_hidden_layers", layers.into());
            set(&mut cfg, "intermediate_size", width.into());
            set(&mut cfg, "num_attention_heads", (groups * rep).into());
            set(&mut cfg, "num_key_value_heads", groups.into());
            set(&mut cfg, "head_dim", spec.head_dim.into());
        }
        Family::GptNeox => {
            set(&mut cfg, "num_hidden_layers", layers.into());
            set(&mut cfg, "intermediate_size", width.into());
        }
        Family::Bloom => set(&mut cfg, "n_layer", layers.into()),
        Family::Mpt => {
            set(&mut cfg, "n_layers", layers.into());
            set(&mut cfg, "expansion_ratio", (width as f64 / spec.hidden_size as f64).into());
        }
    }
    let new_spec = ArchSpec::from_config_value(Path::new("config.json"), cfg.clone())?;
    if new_spec.intermediate_size != width {
        return refuse("MLP width of this value");
    }
    let d = spec.head_dim;
    let (h, kvh) = (spec.num_heads, spec.num_kv_heads);
    let (hq, hk) = (groups * rep, groups);
    let blocks = structure
        .layers
        .iter()
        .map(|l| {
            let b = &model.blocks[l.layer];
            let attn_in = match spec.qkv {
                crate::QkvLayout::Separate => vec![
                    slice(&b.attn_in[0], &[(0, hq * d)], spec.hidden_size),
                    slice(&b.attn_in[1], &[(0, hk * d)], spec.hidden_size),
                    slice(&b.attn_in[2], &[(0, hk * d)], spec.hidden_size),
                ],
                crate::QkvLayout::FusedPerHead => vec![slice(&b.attn_in[0], &[(0, hq * 3 * d)], spec.hidden_size)],
                crate::QkvLayout::FusedBlocks => {
                    vec![slice(&b.attn_in[0], &[(0, hq * d), (h * d, hk * d), ((h + kvh) * d, hk * d)], spec.hidden_size)]
                }
            };
            Block {
                attn_norm: b.attn_norm.clone(),
                mlp_norm: b.mlp_norm.clone(),
                attn_in,
                attn_out: slice(&b.attn_out, &[(0, spec.hidden_size)], hq * d),
                mlp_gate: b.mlp_gate.as_ref().map(|g| slice(g, &[(0, width)], spec.hidden_size)),
                mlp_up: slice(&b.mlp_up, &[(0, width)], spec.hidden_size),
                mlp_down: slice(&b.mlp_down, &[(0, spec.hidden_size)], width),
            }
        })
        .collect();
    let extracted = CausalLm {
        embed: model.embed.clone(),
        embed_norm: model.embed_norm.clone(),
        blocks,
        final_norm: model.final_norm.clone(),
        lm_head: model.lm_head.clone(),
        spec: std::sync::Arc::new(new_spec),
    };
    Ok((extracted, cfg))
}
