//! Weight permutations that leave a model's function unchanged: the residual stream's channels,
//! a block's MLP neurons, a block's key/value groups (with their query heads). Importance
//! reordering (`secateur_supernet::reorder`) is built on these; the family-specific layouts
//! (separate or fused q/k/v) are handled here.

use burn::module::Param;
use burn::prelude::*;

use crate::nn::{Dense, Norm};
use crate::spec::{PositionKind, QkvLayout};
use crate::{DenseLm, ModelError, Result};

impl<B: Backend> DenseLm<B> {
    /// Moves residual channel `order[i]` to position `i` everywhere it appears: the embedding and
    /// LM-head columns, every norm's weight and bias, the input columns of q/k/v/gate/up and the
    /// output rows of o/down. RMSNorm and LayerNorm statistics do not depend on the order.
    pub fn permute_channels(mut self, order: &[usize]) -> Self {
        self.embed = permute_table(&self.embed, order);
        self.lm_head = self.lm_head.as_ref().map(|h| permute_table(h, order));
        self.head_q8 = None;
        self.embed_norm = self.embed_norm.as_ref().map(|n| permute_norm(n, order));
        self.final_norm = permute_norm(&self.final_norm, order);
        for block in self.blocks.iter_mut() {
            block.attn_norm = permute_norm(&block.attn_norm, order);
            block.mlp_norm = permute_norm(&block.mlp_norm, order);
            block.attn_in = block.attn_in.iter().map(|p| cols(p, 1, order)).collect();
            block.mlp_gate = block.mlp_gate.as_ref().map(|g| cols(g, 1, order));
            block.mlp_up = cols(&block.mlp_up, 1, order);
            block.attn_out = rows(&block.attn_out, 1, order);
            block.mlp_down = rows(&block.mlp_down, 1, order);
        }
        self
    }

    /// Moves MLP neuron `order[i]` of block `layer` to position `i` (gate and up rows, down
    /// columns).
    pub fn permute_neurons(mut self, layer: usize, order: &[usize]) -> Self {
        let block = &mut self.blocks[layer];
        if let Some(g) = &block.mlp_gate {
            block.mlp_gate = Some(rows(g, 1, order));
        }
        block.mlp_up = rows(&block.mlp_up, 1, order);
        block.mlp_down = cols(&block.mlp_down, 1, order);
        self
    }

    /// Moves key/value group `order[i]` of block `layer` (its k and v heads and the query heads
    /// that share them) to position `i`, in the family's q/k/v layout; channels inside a head
    /// are never reordered (RoPE pairs stay intact). ALiBi ties each head to its slope by
    /// position, so ALiBi models refuse.
    pub fn permute_kv_groups(mut self, layer: usize, order: &[usize]) -> Result<Self> {
        let spec = self.spec.clone();
        if matches!(spec.position, PositionKind::Alibi { .. }) {
            return Err(ModelError::InvalidInput(format!(
                "{:?}: ALiBi ties each head to its slope by position; heads cannot be reordered",
                spec.family
            )));
        }
        let d = spec.head_dim;
        let block = &mut self.blocks[layer];
        let (h, rep) = (block.dims.num_heads, block.dims.num_heads / block.dims.num_kv_heads);
        // Query heads follow their group: group g holds heads g*rep .. g*rep + rep.
        let q_order: Vec<usize> = order.iter().flat_map(|&gi| (0..rep).map(move |r| gi * rep + r)).collect();
        block.attn_out = cols(&block.attn_out, d, &q_order);
        block.attn_in = match spec.qkv {
            QkvLayout::Separate => {
                vec![rows(&block.attn_in[0], d, &q_order), rows(&block.attn_in[1], d, order), rows(&block.attn_in[2], d, order)]
            }
            // [heads, 3, head_dim] (multi-head: one head per group).
            QkvLayout::FusedPerHead => vec![rows(&block.attn_in[0], 3 * d, &q_order)],
            // [3, heads, head_dim]: the same head order inside each of the q, k and v blocks.
            QkvLayout::FusedBlocks => {
                let full: Vec<usize> = (0..3).flat_map(|part| q_order.iter().map(move |&q| part * h + q)).collect();
                vec![rows(&block.attn_in[0], d, &full)]
            }
        };
        Ok(self)
    }
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

fn permute_norm<B: Backend>(n: &Norm<B>, order: &[usize]) -> Norm<B> {
    Norm { weight: permute_vec(&n.weight, order), bias: n.bias.as_ref().map(|b| permute_vec(b, order)), eps: n.eps, rms: n.rms }
}

fn permute_table<B: Backend>(p: &Param<Tensor<B, 2>>, order: &[usize]) -> Param<Tensor<B, 2>> {
    let t = p.val();
    let [r, c] = t.dims();
    Param::from_tensor(Tensor::from_data(TensorData::new(permute_cols(&values(t.clone()), c, 1, order), [r, c]), &t.device()))
}
