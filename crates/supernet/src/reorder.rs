//! Importance-based reordering (the NAS-compression paper, Minitron-style): score MLP neurons,
//! attention heads (per key/value group) and blocks on calibration data, then permute the
//! weights so that the first `k` neurons or groups are the most important. A permutation leaves
//! the model's function unchanged; sub-networks that keep the first `k` then keep the best `k`.
//!
//! - Neuron `j` of a block: squared L2 norm over calibration tokens of the MLP's hidden
//!   activation (the input of `down`), i.e. of `act(gate(x))·up(x)` or `act(up(x))`.
//! - Head: the same norm of its slice of the attention output (the input of `o`); a key/value
//!   group's score is the sum over its query heads, and groups move with their k/v heads. Channels
//!   inside a head are never reordered (RoPE pairs stay intact). ALiBi models (BLOOM, MPT) tie each
//!   head to a slope by position, so their heads are not reordered.
//! - Embedding channel: the squared L2 norm of its value in every norm's output that feeds a
//!   projection (the attention and MLP inputs of every block), summed over blocks. Moving a
//!   channel moves its embedding and LM-head column, every norm's weight and bias, the input
//!   column of q/k/v/gate/up and the output row of o/down; RMSNorm and LayerNorm statistics do
//!   not depend on the channel order.
//! - Block: mean over tokens of `1 - cos(input, output)`.

use burn::module::Param;
use burn::prelude::*;
use secateur_models::{AttnContext, Dense, DenseLm, PositionKind, QkvLayout, Site, SiteKind};
use serde::Serialize;

use crate::TrainError;

/// Importance scores of a model.
#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    /// Per layer, per MLP neuron.
    pub neurons: Vec<Vec<f64>>,
    /// Per layer, per key/value group.
    pub groups: Vec<Vec<f64>>,
    /// Per layer: mean `1 - cos(input, output)`.
    pub blocks: Vec<f64>,
    /// Per residual-stream (embedding) channel.
    pub channels: Vec<f64>,
}

/// Scores neurons, head groups and blocks on `calibration` token sequences.
pub fn importance<B: Backend>(model: &DenseLm<B>, calibration: &[Vec<u32>], batch_size: usize) -> Result<Importance, TrainError> {
    let norms = secateur_sparsity::input_norms(model, calibration, batch_size)
        .map_err(|e| TrainError::Config(format!("importance statistics: {e}")))?;
    let spec = model.spec();
    let d = spec.head_dim;
    let mut neurons = Vec::new();
    let mut groups = Vec::new();
    let mut channels = vec![0.0f64; spec.hidden_size];
    let attn_input = if spec.qkv == QkvLayout::Separate { SiteKind::Q } else { SiteKind::Qkv };
    for l in 0..spec.num_layers {
        neurons.push(norms[&Site::new(l, SiteKind::Down)].clone());
        let o = &norms[&Site::new(l, SiteKind::O)];
        let dims = spec.layer(l);
        let rep = dims.num_heads / dims.num_kv_heads;
        groups.push((0..dims.num_kv_heads).map(|g| o[g * rep * d..(g + 1) * rep * d].iter().sum()).collect());
        for kind in [attn_input, SiteKind::Up] {
            for (c, v) in channels.iter_mut().zip(&norms[&Site::new(l, kind)]) {
                *c += v;
            }
        }
    }
    // Block importance: 1 - cosine similarity of each block's input and output.
    let device = model.embed.val().device();
    let mut sums = vec![0.0f64; spec.num_layers];
    let mut tokens = 0usize;
    for chunk in calibration.chunks(batch_size.max(1)) {
        let (ids, mask) = secateur_models::generate::right_pad(chunk, 0);
        let real: Vec<bool> = mask.iter().flatten().copied().collect();
        tokens += real.iter().filter(|r| **r).count();
        let ctx = AttnContext::for_batch(model.spec.clone(), &mask, &device);
        let mut x = model.embed_tokens(secateur_models::generate::token_tensor::<B>(&ids, &device));
        for (l, block) in model.blocks.iter().enumerate() {
            let y = block.forward(x.clone(), &ctx, None);
            let [b, s, hd] = y.dims();
            let (xa, ya) = (x.reshape([b * s, hd]), y.clone().reshape([b * s, hd]));
            let dot = (xa.clone() * ya.clone()).sum_dim(1);
            let nx = (xa.clone() * xa).sum_dim(1).sqrt();
            let ny = (ya.clone() * ya).sum_dim(1).sqrt();
            let cos: Vec<f32> = (dot / (nx * ny + 1e-12)).into_data().convert::<f32>().to_vec().expect("f32");
            sums[l] += cos.iter().zip(&real).filter(|(_, r)| **r).map(|(c, _)| 1.0 - *c as f64).sum::<f64>();
            x = y;
        }
    }
    let blocks = sums.into_iter().map(|s| s / tokens.max(1) as f64).collect();
    Ok(Importance { neurons, groups, blocks, channels })
}

/// Indices sorted by descending score (ties: lower index first).
pub fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// New rows of a `[rows, cols]` matrix: row `i` of the result is row `order[i]` of blocks of `block` rows.
fn permute_rows(w: &[f32], cols: usize, block: usize, order: &[usize]) -> Vec<f32> {
    order.iter().flat_map(|&o| w[o * block * cols..(o + 1) * block * cols].iter().copied()).collect()
}

fn permute_cols(w: &[f32], cols: usize, block: usize, order: &[usize]) -> Vec<f32> {
    w.chunks(cols).flat_map(|row| order.iter().flat_map(move |&o| row[o * block..(o + 1) * block].iter().copied())).collect()
}

fn rebuild<B: Backend>(d: &Dense<B>, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Dense<B> {
    let device = d.weight.val().device();
    let shape = d.shape();
    Dense {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(weight, shape), &device)),
        bias: bias.map(|b| {
            let n = b.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(b, [n]), &device))
        }),
    }
}

/// Permutes rows (output features) of a projection, in blocks of `block` rows.
fn rows<B: Backend>(d: &Dense<B>, block: usize, order: &[usize]) -> Dense<B> {
    let [_, i] = d.shape();
    let w = permute_rows(&values(d.weight.val()), i, block, order);
    let b = d.bias.as_ref().map(|b| permute_rows(&values(b.val()), 1, block, order));
    rebuild(d, w, b)
}

/// Permutes columns (input features) of a projection, in blocks of `block` columns.
fn cols<B: Backend>(d: &Dense<B>, block: usize, order: &[usize]) -> Dense<B> {
    let [_, i] = d.shape();
    let w = permute_cols(&values(d.weight.val()), i, block, order);
    rebuild(d, w, d.bias.as_ref().map(|b| values(b.val())))
}

fn permute_vec<B: Backend>(p: &Param<Tensor<B, 1>>, order: &[usize]) -> Param<Tensor<B, 1>> {
    let v = values(p.val());
    let n = v.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(permute_rows(&v, 1, 1, order), [n]), &p.val().device()))
}

fn permute_norm<B: Backend>(n: &secateur_models::Norm<B>, order: &[usize]) -> secateur_models::Norm<B> {
    secateur_models::Norm {
        weight: permute_vec(&n.weight, order),
        bias: n.bias.as_ref().map(|b| permute_vec(b, order)),
        eps: n.eps,
        rms: n.rms,
    }
}

fn permute_table<B: Backend>(p: &Param<Tensor<B, 2>>, order: &[usize]) -> Param<Tensor<B, 2>> {
    let t = p.val();
    let [r, c] = t.dims();
    Param::from_tensor(Tensor::from_data(TensorData::new(permute_cols(&values(t.clone()), c, 1, order), [r, c]), &t.device()))
}

/// Reorders the residual stream's channels by descending importance (see the module docs).
fn reorder_channels<B: Backend>(mut model: DenseLm<B>, order: &[usize]) -> DenseLm<B> {
    model.embed = permute_table(&model.embed, order);
    model.lm_head = model.lm_head.as_ref().map(|h| permute_table(h, order));
    model.embed_norm = model.embed_norm.as_ref().map(|n| permute_norm(n, order));
    model.final_norm = permute_norm(&model.final_norm, order);
    for block in model.blocks.iter_mut() {
        block.attn_norm = permute_norm(&block.attn_norm, order);
        block.mlp_norm = permute_norm(&block.mlp_norm, order);
        block.attn_in = block.attn_in.iter().map(|p| cols(p, 1, order)).collect();
        block.mlp_gate = block.mlp_gate.as_ref().map(|g| cols(g, 1, order));
        block.mlp_up = cols(&block.mlp_up, 1, order);
        block.attn_out = rows(&block.attn_out, 1, order);
        block.mlp_down = rows(&block.mlp_down, 1, order);
    }
    model
}

/// Reorders the embedding channels and every block's MLP neurons (and, with `heads`, its
/// key/value groups) by descending importance. The result computes the same function.
pub fn reorder<B: Backend>(model: DenseLm<B>, imp: &Importance, heads: bool) -> Result<DenseLm<B>, TrainError> {
    let mut model = reorder_channels(model, &descending(&imp.channels));
    let spec = model.spec.clone();
    if heads && matches!(spec.position, PositionKind::Alibi { .. }) {
        return Err(TrainError::Config(format!(
            "{:?}: ALiBi ties each head to its slope by position; heads cannot be reordered",
            spec.family
        )));
    }
    let d = spec.head_dim;
    for (l, block) in model.blocks.iter_mut().enumerate() {
        let (h, rep) = (block.dims.num_heads, block.dims.num_heads / block.dims.num_kv_heads);
        let n = descending(&imp.neurons[l]);
        if let Some(g) = &block.mlp_gate {
            block.mlp_gate = Some(rows(g, 1, &n));
        }
        block.mlp_up = rows(&block.mlp_up, 1, &n);
        block.mlp_down = cols(&block.mlp_down, 1, &n);
        if !heads {
            continue;
        }
        let g = descending(&imp.groups[l]);
        // Query heads follow their group: group g holds heads g*rep .. g*rep + rep.
        let q_order: Vec<usize> = g.iter().flat_map(|&gi| (0..rep).map(move |r| gi * rep + r)).collect();
        block.attn_out = cols(&block.attn_out, d, &q_order);
        block.attn_in = match spec.qkv {
            QkvLayout::Separate => {
                vec![rows(&block.attn_in[0], d, &q_order), rows(&block.attn_in[1], d, &g), rows(&block.attn_in[2], d, &g)]
            }
            // [heads, 3, head_dim] (multi-head: one head per group).
            QkvLayout::FusedPerHead => vec![rows(&block.attn_in[0], 3 * d, &q_order)],
            // [3, heads, head_dim]: the same head order inside each of the q, k and v blocks.
            QkvLayout::FusedBlocks => {
                let full: Vec<usize> = (0..3).flat_map(|part| q_order.iter().map(move |&q| part * h + q)).collect();
                vec![rows(&block.attn_in[0], d, &full)]
            }
        };
    }
    Ok(model)
}
