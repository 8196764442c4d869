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

use burn::prelude::*;
use secateur_models::{AttnContext, DenseLm, PositionKind, QkvLayout, Site, SiteKind};
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
    let device = model.device();
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

/// Reorders the embedding channels and every block's MLP neurons (and, with `heads`, its
/// key/value groups) by descending importance. The result computes the same function.
pub fn reorder<B: Backend>(model: DenseLm<B>, imp: &Importance, heads: bool) -> Result<DenseLm<B>, TrainError> {
    let mut model = model.permute_channels(&descending(&imp.channels));
    if heads && matches!(model.spec().position, PositionKind::Alibi { .. }) {
        return Err(TrainError::Config(format!(
            "{:?}: ALiBi ties each head to its slope by position; heads cannot be reordered",
            model.spec().family
        )));
    }
    for l in 0..model.spec().num_layers {
        model = model.permute_neurons(l, &descending(&imp.neurons[l]));
        if heads {
            model = model.permute_kv_groups(l, &descending(&imp.groups[l]))?;
        }
    }
    Ok(model)
}
