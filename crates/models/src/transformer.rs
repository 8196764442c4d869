//! The shared decoder: embedding, blocks, final norm and LM head, with a KV cache, generic
//! over the backend `B` and the projection type `P`.

use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::ops::AttentionModuleOptions;

use crate::error::{ModelError, Result};
use crate::host::{self, HostMask};
use crate::nn::{Dense, Int8Rows, Norm, Projection, RopeTables, Sliceable, activate, attention_bias, gated, rope_inv_freq};
use crate::site::{Site, SiteKind};
use crate::spec::{ArchSpec, LayerDims, NormKind, PositionKind, QkvLayout, Residual};
use crate::weights::Checkpoint;

/// One decoder block. Projections are stored in the order of [`ArchSpec::block_site_kinds`].
#[derive(Module, Debug)]
pub struct Block<B: Backend, P: Module<B>> {
    pub attn_norm: Norm<B>,
    pub mlp_norm: Norm<B>,
    /// `[q, k, v]`, or `[qkv]` for fused layouts.
    pub attn_in: Vec<P>,
    pub attn_out: P,
    pub mlp_gate: Option<P>,
    pub mlp_up: P,
    pub mlp_down: P,
    /// The block's sizes (heads, key/value heads, MLP width).
    #[module(skip)]
    pub dims: LayerDims,
}

/// A causal language model of any supported family.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend, P: Module<B>> {
    /// Token embedding `[vocab, hidden]`.
    pub embed: Param<Tensor<B, 2>>,
    pub embed_norm: Option<Norm<B>>,
    pub blocks: Vec<Block<B, P>>,
    pub final_norm: Norm<B>,
    /// LM head `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// The head (or the tied embedding) quantized to int8 for decoding ([`Self::quantize_head`]):
    /// logits of up to [`HEAD_KERNEL_MAX_ROWS`] positions come from it, outside autodiff.
    #[module(skip)]
    pub head_q8: Option<Arc<Int8Rows>>,
    #[module(skip)]
    pub spec: Arc<ArchSpec>,
}

/// Positions up to which [`CausalLm::logits`] uses the int8 head when the model has one.
pub const HEAD_KERNEL_MAX_ROWS: usize = 4;

/// A model with the dense projections it was loaded with.
pub type DenseLm<B> = CausalLm<B, Dense<B>>;

/// Keys and values of past tokens, per layer, plus the padding mask and positions they had.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    key_mask: Vec<Vec<bool>>,
    next_pos: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` rows of a model with `layers` blocks.
    pub fn new(layers: usize, batch: usize) -> Self {
        Self { layers: vec![None; layers], key_mask: vec![Vec::new(); batch], next_pos: vec![0; batch] }
    }

    /// Number of cached key slots.
    pub fn len(&self) -> usize {
        self.key_mask.first().map_or(0, |m| m.len())
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-forward attention inputs shared by all blocks.
pub struct AttnContext<B: Backend> {
    pub spec: Arc<ArchSpec>,
    /// RoPE tables for the query heads and for the key/value heads.
    pub rope: Option<[RopeTables<B>; 2]>,
    /// The per-position tables, for sub-networks with fewer heads.
    pub rope_base: Option<RopeTables<B>>,
    /// The mask on the host, where the host attention kernel serves the backend.
    pub host: Option<HostMask>,
    key_mask: Vec<Vec<bool>>,
    seq: usize,
    device: B::Device,
    bias: std::sync::OnceLock<Tensor<B, 4>>,
}

impl<B: Backend> AttnContext<B> {
    /// The context of `seq` new tokens given the mask of every key slot (cache and new) and
    /// the positions of the new tokens.
    pub fn new(spec: Arc<ArchSpec>, key_mask: &[Vec<bool>], positions: &[Vec<usize>], device: &B::Device) -> Self {
        let seq = positions.first().map_or(0, |p| p.len());
        let rope = match &spec.position {
            PositionKind::Rope { theta, rotary_dim, scaling } => {
                let inv = rope_inv_freq(*theta, *rotary_dim, scaling.as_ref());
                let tables = RopeTables::<B>::new(&inv, spec.head_dim, positions, device);
                Some(tables)
            }
            PositionKind::Alibi { .. } => None,
        };
        let host = crate::host::enabled::<B>(device).then(|| {
            let slopes: &[f64] = match &spec.position {
                PositionKind::Alibi { slopes } => slopes,
                PositionKind::Rope { .. } => &[],
            };
            HostMask::new(key_mask, seq, spec.sliding_window, slopes)
        });
        let rope_base = rope;
        let rope = rope_base.as_ref().map(|t| [t.per_head(spec.num_heads), t.per_head(spec.num_kv_heads)]);
        Self { spec, rope, rope_base, host, key_mask: key_mask.to_vec(), seq, device: device.clone(), bias: std::sync::OnceLock::new() }
    }

    /// Additive bias `[batch, kv_heads or 1, (heads / kv_heads) * seq, keys]` for burn's
    /// attention, built on first use.
    pub fn bias(&self) -> Tensor<B, 4> {
        self.bias
            .get_or_init(|| {
                let spec = &self.spec;
                // Lay the bias out like the grouped queries: [b, kvh or 1, rep * seq, keys].
                let bias = attention_bias::<B>(spec, &self.key_mask, self.seq, &self.device);
                let [b, hb, _, t] = bias.dims();
                let rep = spec.num_heads / spec.num_kv_heads;
                if rep == 1 {
                    bias
                } else if hb == 1 {
                    bias.repeat_dim(2, rep)
                } else {
                    bias.reshape([b, spec.num_kv_heads, rep * self.seq, t])
                }
            })
            .clone()
    }

    /// Context of a right- or left-padded batch without a cache: positions count real tokens.
    pub fn for_batch(spec: Arc<ArchSpec>, mask: &[Vec<bool>], device: &B::Device) -> Self {
        let positions: Vec<Vec<usize>> = mask.iter().map(|row| positions_of(row, 0)).collect();
        Self::new(spec, mask, &positions, device)
    }
}

/// Positions of a row's tokens given `start` real tokens before it: `cumsum(mask) - 1`, and the
/// previous position at padding.
pub fn positions_of(row: &[bool], start: usize) -> Vec<usize> {
    let mut next = start;
    row.iter()
        .map(|&real| {
            if real {
                next += 1;
                next - 1
            } else {
                next.saturating_sub(1)
            }
        })
        .collect()
}

/// Attention of `q: [b, s, h, d]` over `k, v: [b, s, kvh, d]` (RoPE applied here, keys and
/// values appended to `kv`), giving `[b, s, h·d]` before the output projection. `h` and `kvh`
/// may be fewer than the model's (the first heads of an elastic sub-network).
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    ctx: &AttnContext<B>,
    kv: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    h: usize,
    kvh: usize,
) -> Tensor<B, 3> {
    let spec = &*ctx.spec;
    let [b, s, _, d] = q.dims();
    let (q, k) = match &ctx.rope {
        Some([rq, rk]) if h == spec.num_heads && kvh == spec.num_kv_heads => (rq.apply(q), rk.apply(k)),
        Some(_) => {
            let tables = ctx.rope_base.as_ref().expect("RoPE contexts hold their base tables");
            (tables.per_head(h).apply(q), tables.per_head(kvh).apply(k))
        }
        None => (q, k),
    };
    let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
    let (k, v) = match kv {
        Some(slot) => {
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            (k, v)
        }
        None => (k, v),
    };
    let rep = h / kvh;
    if let Some(mask) = &ctx.host {
        let device = q.device();
        let (qh, kh, vh) = (host::to_host(q.swap_dims(1, 2)), host::to_host(k), host::to_host(v));
        let out = host::attention(&qh, &kh, &vh, mask, b, s, h, kvh, d, spec.attn_scale as f32);
        return Tensor::from_data(TensorData::new(out, [b, s, h * d]), &device);
    }
    // Grouped-query attention without copying keys: query heads g*rep..g*rep+rep share
    // key/value head g, so [b, h, s, d] is viewed as [b, kvh, rep*s, d]; the context's
    // bias is already laid out to match (ALiBi biases, one per head, keep the first h).
    let bias = ctx.bias();
    let bias = if bias.dims()[1] > 1 && h < spec.num_heads { bias.narrow(1, 0, kvh) } else { bias };
    let q = q.reshape([b, kvh, rep * s, d]);
    let out = if s > 2 * QUERY_BLOCK {
        causal_blocked_attention(q, k, v, bias, rep, s, spec.attn_scale)
    } else {
        let options = AttentionModuleOptions { scale: Some(spec.attn_scale), ..Default::default() };
        burn::tensor::module::attention(q, k, v, None, Some(bias), options)
    };
    out.reshape([b, h, s, d]).swap_dims(1, 2).reshape([b, s, h * d])
}

/// Queries per block of [`causal_blocked_attention`].
const QUERY_BLOCK: usize = 256;

/// Attention of long sequences (prefill, perplexity windows) as matrix multiplies over blocks of
/// [`QUERY_BLOCK`] queries, each against the keys up to its last query only: every model here is
/// causal (keys after a query are masked in `bias`), so the skipped keys would weigh exactly 0.
/// Half the work of attending to every key, and each block's products run on all cores (burn's
/// fused CPU attention runs one head at a time on one core). `q`: `[b, kvh, rep * s, d]` (grouped
/// query heads, `rep` per key head), `k, v`: `[b, kvh, keys, d]` (the last `s` keys are the
/// queries' own), `bias`: `[b, 1 or kvh, rep * s, keys]`. Returns `[b, kvh, rep * s, d]`.
fn causal_blocked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 4>,
    rep: usize,
    s: usize,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, kvh, _, d] = q.dims();
    let keys = k.dims()[2];
    let hb = bias.dims()[1];
    let past = keys - s;
    let q = q.reshape([b, kvh, rep, s, d]);
    let bias = bias.reshape([b, hb, rep, s, keys]);
    let mut outs = Vec::with_capacity(s.div_ceil(QUERY_BLOCK));
    for t0 in (0..s).step_by(QUERY_BLOCK) {
        let len = QUERY_BLOCK.min(s - t0);
        let seen = past + t0 + len;
        let qb = q.clone().narrow(3, t0, len).reshape([b, kvh, rep * len, d]);
        let kb = k.clone().narrow(2, 0, seen);
        let vb = v.clone().narrow(2, 0, seen);
        let bb = bias.clone().narrow(3, t0, len).narrow(4, 0, seen).reshape([b, hb, rep * len, seen]);
        let scores = qb.matmul(kb.swap_dims(2, 3)).mul_scalar(scale) + bb;
        let p = burn::tensor::activation::softmax(scores, 3);
        outs.push(p.matmul(vb).reshape([b, kvh, rep, len, d]));
    }
    Tensor::cat(outs, 3).reshape([b, kvh, rep * s, d])
}

/// q, k and v as `[b, s, heads, d]` (clipped as the family does) from the attention input
/// projections' outputs: three tensors (q, k, v), or the one fused output of the family's layout,
/// for `hq` query and `hk` key/value heads.
fn split_heads<B: Backend>(spec: &ArchSpec, outs: Vec<Tensor<B, 3>>, hq: usize, hk: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let d = spec.head_dim;
    let clip = |t: Tensor<B, 3>| match spec.clip_qkv {
        Some(c) => t.clamp(-c, c),
        None => t,
    };
    let [b, s, _] = outs[0].dims();
    let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, d]);
    let mut outs: Vec<Tensor<B, 3>> = outs.into_iter().map(clip).collect();
    if let [y] = &outs[..] {
        let y = y.clone();
        return match spec.qkv {
            QkvLayout::FusedPerHead => {
                let y = y.reshape([b, s, hq, 3 * d]);
                let part = |i: usize| y.clone().narrow(3, i * d, d);
                (part(0), part(1), part(2))
            }
            _ => (
                split(y.clone().narrow(2, 0, hq * d), hq),
                split(y.clone().narrow(2, hq * d, hk * d), hk),
                split(y.narrow(2, (hq + hk) * d, hk * d), hk),
            ),
        };
    }
    let v = outs.pop().expect("three outputs");
    let k = outs.pop().expect("three outputs");
    let q = outs.pop().expect("three outputs");
    (split(q, hq), split(k, hk), split(v, hk))
}

impl<B: Backend, P: Projection<B>> Block<B, P> {
    /// Runs the block on `x: [batch, seq, hidden]`, appending keys and values to `kv`.
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &AttnContext<B>, kv: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>) -> Tensor<B, 3> {
        self.residual(x, &ctx.spec, |n| self.attention(n, ctx, kv), |n| self.mlp(n, &ctx.spec))
    }

    /// Combines attention and MLP around the residual stream as the family does.
    fn residual(
        &self,
        x: Tensor<B, 3>,
        spec: &ArchSpec,
        attn: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
        mlp: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match spec.residual {
            Residual::Sequential => {
                let h = x.clone() + attn(self.attn_norm.forward(x));
                h.clone() + mlp(self.mlp_norm.forward(h))
            }
            Residual::Parallel => {
                let a = attn(self.attn_norm.forward(x.clone()));
                let m = mlp(self.mlp_norm.forward(x.clone()));
                x + a + m
            }
            Residual::SequentialPostNorm => {
                let n = self.attn_norm.forward(x);
                let h = n.clone() + attn(n);
                let n = self.mlp_norm.forward(h);
                n.clone() + mlp(n)
            }
        }
    }

    /// Self-attention of normalised input `x: [batch, seq, hidden]`.
    pub fn attention(&self, x: Tensor<B, 3>, ctx: &AttnContext<B>, kv: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>) -> Tensor<B, 3> {
        let (h, kvh) = (self.dims.num_heads, self.dims.num_kv_heads);
        let outs = self.attn_in.iter().map(|p| p.forward(x.clone())).collect();
        let (q, k, v) = split_heads(&ctx.spec, outs, h, kvh);
        let out = attend(q, k, v, ctx, kv, h, kvh);
        self.attn_out.forward(out)
    }

    /// The block with only the first `groups` key/value groups (and their query heads) and the
    /// first `width` MLP neurons, on a residual stream of the first `x.dims()[2]` channels: the
    /// weights are sliced, not copied.
    pub fn forward_sliced(&self, x: Tensor<B, 3>, ctx: &AttnContext<B>, width: usize, groups: usize) -> Tensor<B, 3>
    where
        P: Sliceable<B>,
    {
        let e = x.dims()[2];
        let attn = |x: Tensor<B, 3>| self.attention_sliced(x, ctx, groups);
        let mlp = |x: Tensor<B, 3>| {
            let hidden = match &self.mlp_gate {
                Some(g) => gated(g.forward_slice(x.clone(), 0, width, e), self.mlp_up.forward_slice(x, 0, width, e), ctx.spec.activation),
                None => activate(self.mlp_up.forward_slice(x, 0, width, e), ctx.spec.activation),
            };
            self.mlp_down.forward_slice(hidden, 0, e, width)
        };
        self.residual(x, &ctx.spec, attn, mlp)
    }

    fn attention_sliced(&self, x: Tensor<B, 3>, ctx: &AttnContext<B>, groups: usize) -> Tensor<B, 3>
    where
        P: Sliceable<B>,
    {
        let e = x.dims()[2];
        let (h, kvh, d) = (self.dims.num_heads, self.dims.num_kv_heads, ctx.spec.head_dim);
        let (hq, hk) = (groups * (h / kvh), groups);
        let rows = |p: &P, start: usize, len: usize| p.forward_slice(x.clone(), start, len, e);
        let outs = match ctx.spec.qkv {
            QkvLayout::Separate => {
                vec![rows(&self.attn_in[0], 0, hq * d), rows(&self.attn_in[1], 0, hk * d), rows(&self.attn_in[2], 0, hk * d)]
            }
            QkvLayout::FusedPerHead => vec![rows(&self.attn_in[0], 0, hq * 3 * d)],
            // The kept rows of the q, k and v blocks of the fused output.
            QkvLayout::FusedBlocks => {
                let w = &self.attn_in[0];
                vec![rows(w, 0, hq * d), rows(w, h * d, hk * d), rows(w, (h + kvh) * d, hk * d)]
            }
        };
        let (q, k, v) = split_heads(&ctx.spec, outs, hq, hk);
        let out = attend(q, k, v, ctx, None, hq, hk);
        self.attn_out.forward_slice(out, 0, e, hq * d)
    }

    /// The MLP of normalised input `x`.
    pub fn mlp(&self, x: Tensor<B, 3>, spec: &ArchSpec) -> Tensor<B, 3> {
        let hidden = match &self.mlp_gate {
            Some(gate) => gated(gate.forward(x.clone()), self.mlp_up.forward(x), spec.activation),
            None => activate(self.mlp_up.forward(x), spec.activation),
        };
        self.mlp_down.forward(hidden)
    }

    /// The block's projections with their kinds, in forward order.
    pub fn projections(&self) -> Vec<(SiteKind, &P)> {
        let mut out: Vec<(SiteKind, &P)> = attn_in_kinds(self.attn_in.len()).iter().copied().zip(self.attn_in.iter()).collect();
        out.push((SiteKind::O, &self.attn_out));
        if let Some(g) = &self.mlp_gate {
            out.push((SiteKind::Gate, g));
        }
        out.push((SiteKind::Up, &self.mlp_up));
        out.push((SiteKind::Down, &self.mlp_down));
        out
    }
}

/// The active part of one block of an elastic sub-network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerStructure {
    /// Index of the block in the super-network.
    pub layer: usize,
    /// MLP neurons kept (the first ones).
    pub mlp_width: usize,
    /// Key/value groups kept (the first ones, with their query heads).
    pub kv_groups: usize,
}

/// An elastic sub-network: the blocks that run, in order, how much of each, and the width of
/// the residual stream (the first channels of the embedding, norms and LM head).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubnetStructure {
    pub layers: Vec<LayerStructure>,
    /// Residual-stream channels kept; `None` keeps all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
}

impl SubnetStructure {
    /// Every block at full size.
    pub fn full(spec: &ArchSpec) -> Self {
        Self {
            layers: (0..spec.num_layers)
                .map(|layer| {
                    let d = spec.layer(layer);
                    LayerStructure { layer, mlp_width: d.intermediate_size, kv_groups: d.num_kv_heads }
                })
                .collect(),
            hidden_size: None,
        }
    }

    /// The residual width this structure runs at.
    pub fn hidden(&self, spec: &ArchSpec) -> usize {
        self.hidden_size.unwrap_or(spec.hidden_size)
    }

    /// Checks the structure against an architecture; errors name the layer and the dimension.
    pub fn validate(&self, spec: &ArchSpec) -> Result<()> {
        let bad = |m: String| ModelError::InvalidInput(format!("sub-network: {m}"));
        if self.layers.is_empty() {
            return Err(bad("no block is kept".into()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.layer >= spec.num_layers {
                return Err(bad(format!("block {} does not exist ({} blocks)", l.layer, spec.num_layers)));
            }
            if i > 0 && l.layer <= self.layers[i - 1].layer {
                return Err(bad(format!("blocks must be listed once, in order ({} after {})", l.layer, self.layers[i - 1].layer)));
            }
            let dims = spec.layer(l.layer);
            if l.mlp_width == 0 || l.mlp_width > dims.intermediate_size {
                return Err(bad(format!("block {}: MLP width {} not in 1..={}", l.layer, l.mlp_width, dims.intermediate_size)));
            }
            if l.kv_groups == 0 || l.kv_groups > dims.num_kv_heads {
                return Err(bad(format!(
                    "block {}: {} key/value groups not in 1..={} (heads are kept in whole groups of {})",
                    l.layer,
                    l.kv_groups,
                    dims.num_kv_heads,
                    dims.num_heads / dims.num_kv_heads
                )));
            }
        }
        if let Some(e) = self.hidden_size
            && (e == 0 || e > spec.hidden_size)
        {
            return Err(bad(format!("embedding width {e} not in 1..={}", spec.hidden_size)));
        }
        Ok(())
    }
}

/// Site kinds of a block's attention inputs: `[q, k, v]`, or `[qkv]` when fused.
fn attn_in_kinds(n: usize) -> &'static [SiteKind] {
    if n == 3 { &[SiteKind::Q, SiteKind::K, SiteKind::V] } else { &[SiteKind::Qkv] }
}

impl<B: Backend, P: Module<B>> Block<B, P> {
    /// Replaces every projection through `f`, keeping norms.
    pub fn map_projections<Q: Module<B>, E>(
        self,
        layer: usize,
        f: &mut impl FnMut(Site, P) -> std::result::Result<Q, E>,
    ) -> std::result::Result<Block<B, Q>, E> {
        let in_kinds = attn_in_kinds(self.attn_in.len());
        let mut attn_in = Vec::with_capacity(in_kinds.len());
        for (&kind, p) in in_kinds.iter().zip(self.attn_in) {
            attn_in.push(f(Site::new(layer, kind), p)?);
        }
        let attn_out = f(Site::new(layer, SiteKind::O), self.attn_out)?;
        let mlp_gate = match self.mlp_gate {
            Some(g) => Some(f(Site::new(layer, SiteKind::Gate), g)?),
            None => None,
        };
        Ok(Block {
            attn_norm: self.attn_norm,
            mlp_norm: self.mlp_norm,
            attn_in,
            attn_out,
            mlp_gate,
            mlp_up: f(Site::new(layer, SiteKind::Up), self.mlp_up)?,
            mlp_down: f(Site::new(layer, SiteKind::Down), self.mlp_down)?,
            dims: self.dims,
        })
    }
}

impl<B: Backend, P: Module<B>> CausalLm<B, P> {
    /// The device the model's weights live on.
    pub fn device(&self) -> B::Device {
        self.embed.val().device()
    }

    /// The architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Every projection with its site, in forward order.
    pub fn projections(&self) -> Vec<(Site, &P)>
    where
        P: Projection<B>,
    {
        self.blocks.iter().enumerate().flat_map(|(l, b)| b.projections().into_iter().map(move |(k, p)| (Site::new(l, k), p))).collect()
    }

    /// Every projection site with its `[out, in]` shape, in forward order.
    pub fn sites(&self) -> Vec<(Site, [usize; 2])> {
        let kinds = self.spec.block_site_kinds();
        (0..self.spec.num_layers).flat_map(|l| kinds.iter().map(move |&k| (Site::new(l, k), self.spec.site_shape(l, k)))).collect()
    }

    /// Replaces every projection through `f` (called in forward order with its site).
    /// This is how downstream crates put masked, quantized or adapter projections in the model.
    pub fn map_projections<Q: Module<B>, E>(
        self,
        mut f: impl FnMut(Site, P) -> std::result::Result<Q, E>,
    ) -> std::result::Result<CausalLm<B, Q>, E> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (l, b) in self.blocks.into_iter().enumerate() {
            blocks.push(b.map_projections(l, &mut f)?);
        }
        Ok(CausalLm {
            embed: self.embed,
            embed_norm: self.embed_norm,
            blocks,
            final_norm: self.final_norm,
            lm_head: self.lm_head,
            head_q8: self.head_q8,
            spec: self.spec,
        })
    }

    /// Number of parameters (embedding, head if untied, norms and projections as dense; see
    /// [`crate::cost`]).
    pub fn num_params(&self) -> usize {
        crate::cost::cost(&self.spec, &std::collections::HashMap::new(), 0).params
    }
}

impl<B: Backend, P: Projection<B>> CausalLm<B, P> {
    /// Embeds token ids `[batch, seq]` (with BLOOM's embedding norm).
    pub fn embed_tokens(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens_width(ids, self.spec.hidden_size)
    }

    /// Embeds token ids into the first `width` channels of the residual stream.
    pub fn embed_tokens_width(&self, ids: Tensor<B, 2, Int>, width: usize) -> Tensor<B, 3> {
        let table = self.embed.val();
        let table = if width < self.spec.hidden_size { table.narrow(1, 0, width) } else { table };
        let h = burn::tensor::module::embedding(table, ids);
        match &self.embed_norm {
            Some(n) => n.forward(h),
            None => h,
        }
    }

    /// Final norm and LM head: `[batch, seq, hidden] -> [batch, seq, vocab]`. A narrower `h`
    /// (an elastic sub-network's residual stream) uses the first columns of the head.
    pub fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, e] = h.dims();
        let h = self.final_norm.forward(h);
        if let Some(q) = &self.head_q8
            && e == q.cols
            && b * s <= HEAD_KERNEL_MAX_ROWS
            && !B::ad_enabled(&h.device())
        {
            let device = h.device();
            let x: Vec<f32> = h.into_data().convert::<f32>().to_vec().expect("f32 hidden states");
            return Tensor::from_data(TensorData::new(q.matvec(&x, b * s), [b, s, q.rows]), &device);
        }
        self.head(h)
    }

    /// [`Self::logits`] from the f32 head always (never the int8 decoding head): what scoring
    /// uses, so that a score does not depend on how many positions were scored at once.
    pub fn logits_exact(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.head(self.final_norm.forward(h))
    }

    fn head(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::nn::linear_param(h, self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }

    /// Keeps an int8 copy of the LM head (the embedding when tied) for decoding: logits of up
    /// to [`HEAD_KERNEL_MAX_ROWS`] positions are then computed from it (a quarter of the bytes;
    /// llama.cpp keeps its heads in Q8_0 or Q6_K likewise). The f32 head stays for longer inputs
    /// and training. A hidden size that is not a multiple of 32 keeps the f32 head only.
    pub fn quantize_head(mut self) -> Self {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).val();
        let [v, h] = head.dims();
        let w: Vec<f32> = head.into_data().convert::<f32>().to_vec().expect("f32 head");
        self.head_q8 = Int8Rows::quantize(&w, v, h).map(Arc::new);
        self
    }

    /// Builds the attention context of `seq` new tokens given the mask of every key slot
    /// and the positions of the new tokens.
    pub fn context(&self, key_mask: &[Vec<bool>], positions: &[Vec<usize>], device: &B::Device) -> AttnContext<B> {
        AttnContext::new(self.spec.clone(), key_mask, positions, device)
    }

    /// Logits `[batch, seq, vocab]` of a padded batch. `mask[b][t]` is false at padding;
    /// padding may be on either side (positions count real tokens only).
    pub fn forward(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>]) -> Result<Tensor<B, 3>> {
        let mut cache = KvCache::new(0, mask.len());
        self.forward_impl(ids, mask, &mut cache, false)
    }

    /// Like [`Self::forward`], but attends to and extends `cache`.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        if cache.layers.len() != self.blocks.len() {
            if cache.is_empty() {
                cache.layers = vec![None; self.blocks.len()];
            } else {
                return Err(ModelError::InvalidInput(format!(
                    "KV cache has {} layers, the model {}",
                    cache.layers.len(),
                    self.blocks.len()
                )));
            }
        }
        self.forward_impl(ids, mask, cache, true)
    }

    /// The residual stream after the last block (before the final norm), `[batch, seq, hidden]`:
    /// [`Self::logits`] or [`Self::logits_exact`] of the positions wanted gives their logits.
    pub fn hidden_states(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>]) -> Result<Tensor<B, 3>> {
        let mut cache = KvCache::new(0, mask.len());
        self.hidden_impl(ids, mask, &mut cache, false)
    }

    fn forward_impl(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>], cache: &mut KvCache<B>, use_cache: bool) -> Result<Tensor<B, 3>> {
        Ok(self.logits(self.hidden_impl(ids, mask, cache, use_cache)?))
    }

    fn hidden_impl(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>], cache: &mut KvCache<B>, use_cache: bool) -> Result<Tensor<B, 3>> {
        let [b, s] = ids.dims();
        if mask.len() != b || mask.iter().any(|m| m.len() != s) {
            return Err(ModelError::InvalidInput(format!("attention mask must be [{b}][{s}] like the input ids")));
        }
        if cache.key_mask.len() != b {
            return Err(ModelError::InvalidInput(format!("KV cache holds {} rows, the batch has {b}", cache.key_mask.len())));
        }
        let positions: Vec<Vec<usize>> = mask
            .iter()
            .zip(cache.next_pos.iter_mut())
            .map(|(row, next)| {
                let p = positions_of(row, *next);
                *next += row.iter().filter(|&&r| r).count();
                p
            })
            .collect();
        for (keys, row) in cache.key_mask.iter_mut().zip(mask) {
            keys.extend_from_slice(row);
        }
        let device = ids.device();
        let ctx = self.context(&cache.key_mask, &positions, &device);
        let mut h = self.embed_tokens(ids);
        for (l, block) in self.blocks.iter().enumerate() {
            let kv = if use_cache { Some(&mut cache.layers[l]) } else { None };
            h = block.forward(h, &ctx, kv);
        }
        Ok(h)
    }
}

impl<B: Backend, P: Sliceable<B>> CausalLm<B, P> {
    /// Logits of an elastic sub-network of this super-network (no cache): only the blocks of
    /// `structure` run, each with its first MLP neurons and key/value groups.
    pub fn forward_subnet(&self, ids: Tensor<B, 2, Int>, mask: &[Vec<bool>], structure: &SubnetStructure) -> Result<Tensor<B, 3>> {
        structure.validate(&self.spec)?;
        let [b, s] = ids.dims();
        if mask.len() != b || mask.iter().any(|m| m.len() != s) {
            return Err(ModelError::InvalidInput(format!("attention mask must be [{b}][{s}] like the input ids")));
        }
        let ctx = AttnContext::for_batch(self.spec.clone(), mask, &ids.device());
        let mut h = self.embed_tokens_width(ids, structure.hidden(&self.spec));
        for l in &structure.layers {
            h = self.blocks[l.layer].forward_sliced(h, &ctx, l.mlp_width, l.kv_groups);
        }
        Ok(self.logits(h))
    }
}

impl<B: Backend> CausalLm<B, Dense<B>> {
    /// Loads a Hugging Face checkpoint directory (`config.json` plus safetensors weights).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let spec = ArchSpec::from_config_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(spec, &ckpt, device)
    }

    /// Builds the model of `spec` from the tensors of `ckpt`.
    pub fn from_checkpoint(spec: ArchSpec, ckpt: &Checkpoint, device: &B::Device) -> Result<Self> {
        CausalLm::from_checkpoint_with(spec, ckpt, device, |spec, ckpt, site, device| {
            let module = spec.hf_module(site.layer, site.kind);
            let shape = spec.site_shape(site.layer, site.kind);
            let name = format!("{module}.weight");
            if !ckpt.contains(&name) && ckpt.contains(&format!("{module}.qweight")) {
                return Err(ModelError::Quantized { path: ckpt.path_of(&name).to_path_buf() });
            }
            let data = ckpt.read_f32(&name, &shape)?;
            let w = Tensor::from_data(TensorData::new(data, shape), device);
            let b = if spec.site_has_bias(site.kind) {
                let data = ckpt.read_f32(&format!("{module}.bias"), &[shape[0]])?;
                Some(Tensor::from_data(TensorData::new(data, [shape[0]]), device))
            } else {
                None
            };
            Ok(Dense::new(w, b))
        })
    }
}

impl<B: Backend, P: Module<B>> CausalLm<B, P> {
    /// Builds the model of `spec` from `ckpt`, loading every projection with `projection`
    /// (embedding, norms and head are read here). Quantized and other stored formats plug in
    /// through this.
    pub fn from_checkpoint_with(
        spec: ArchSpec,
        ckpt: &Checkpoint,
        device: &B::Device,
        mut projection: impl FnMut(&ArchSpec, &Checkpoint, Site, &B::Device) -> Result<P>,
    ) -> Result<Self> {
        let names = spec.weight_names();
        let (v, hdim) = (spec.vocab_size, spec.hidden_size);
        let t2 = |name: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
            let data = ckpt.read_f32(name, &shape)?;
            Ok(Tensor::from_data(TensorData::new(data, shape), device))
        };
        let t1 = |name: &str, n: usize| -> Result<Tensor<B, 1>> {
            let data = ckpt.read_f32(name, &[n])?;
            Ok(Tensor::from_data(TensorData::new(data, [n]), device))
        };
        let norm = |module: &str| -> Result<Norm<B>> {
            let bias = match spec.norm {
                NormKind::Layer { bias: true } => Some(Param::from_tensor(t1(&format!("{module}.bias"), hdim)?)),
                _ => None,
            };
            Ok(Norm {
                weight: Param::from_tensor(t1(&format!("{module}.weight"), hdim)?),
                bias,
                eps: spec.norm_eps,
                rms: spec.norm == NormKind::Rms,
            })
        };
        let mut blocks = Vec::with_capacity(spec.num_layers);
        for (l, (n1, n2)) in names.block_norms.iter().enumerate() {
            let mut load = |kind: SiteKind| projection(&spec, ckpt, Site::new(l, kind), device);
            let attn_in = match spec.qkv {
                QkvLayout::Separate => vec![load(SiteKind::Q)?, load(SiteKind::K)?, load(SiteKind::V)?],
                _ => vec![load(SiteKind::Qkv)?],
            };
            let attn_out = load(SiteKind::O)?;
            let mlp_gate = if spec.gated_mlp { Some(load(SiteKind::Gate)?) } else { None };
            let mlp_up = load(SiteKind::Up)?;
            let mlp_down = load(SiteKind::Down)?;
            blocks.push(Block {
                attn_norm: norm(n1)?,
                mlp_norm: norm(n2)?,
                attn_in,
                attn_out,
                mlp_gate,
                mlp_up,
                mlp_down,
                dims: spec.layer(l),
            });
        }
        Ok(Self {
            embed: Param::from_tensor(t2(&names.embed, [v, hdim])?),
            embed_norm: names.embed_norm.as_deref().map(norm).transpose()?,
            blocks,
            final_norm: norm(&names.final_norm)?,
            lm_head: match &names.lm_head {
                Some(n) => Some(Param::from_tensor(t2(n, [v, hdim])?)),
                None => None,
            },
            head_q8: None,
            spec: Arc::new(spec),
        })
    }
}

impl<B: Backend> CausalLm<B, Dense<B>> {
    /// A model of `spec` with random weights: projections and embeddings drawn from
    /// N(0, `std`²), norms at weight 1 and bias 0, projection biases 0. Seeded through
    /// `B::seed`, for benchmarks and pretraining from scratch. The backend's random state is
    /// global: concurrent calls from several threads interleave their draws.
    pub fn init_random(spec: ArchSpec, std: f64, seed: u64, device: &B::Device) -> Self {
        use burn::tensor::Distribution;
        B::seed(device, seed);
        let normal = |shape: [usize; 2]| Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device);
        let h = spec.hidden_size;
        let norm = || Norm {
            weight: Param::from_tensor(Tensor::ones([h], device)),
            bias: matches!(spec.norm, NormKind::Layer { bias: true }).then(|| Param::from_tensor(Tensor::zeros([h], device))),
            eps: spec.norm_eps,
            rms: spec.norm == NormKind::Rms,
        };
        let dense = |l: usize, kind: SiteKind| {
            let shape = spec.site_shape(l, kind);
            Dense::new(normal(shape), spec.site_has_bias(kind).then(|| Tensor::zeros([shape[0]], device)))
        };
        let blocks = (0..spec.num_layers)
            .map(|l| Block {
                attn_norm: norm(),
                mlp_norm: norm(),
                attn_in: match spec.qkv {
                    QkvLayout::Separate => vec![dense(l, SiteKind::Q), dense(l, SiteKind::K), dense(l, SiteKind::V)],
                    _ => vec![dense(l, SiteKind::Qkv)],
                },
                attn_out: dense(l, SiteKind::O),
                mlp_gate: spec.gated_mlp.then(|| dense(l, SiteKind::Gate)),
                mlp_up: dense(l, SiteKind::Up),
                mlp_down: dense(l, SiteKind::Down),
                dims: spec.layer(l),
            })
            .collect();
        Self {
            embed: Param::from_tensor(normal([spec.vocab_size, h])),
            embed_norm: spec.embed_norm.then(norm),
            blocks,
            final_norm: norm(),
            lm_head: (!spec.tie_word_embeddings).then(|| Param::from_tensor(normal([spec.vocab_size, h]))),
            head_q8: None,
            spec: Arc::new(spec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::tensor::Distribution;

    /// The blocked path against burn's fused attention (flash-style online softmax, every key)
    /// on a causal, padded bias: grouped queries with one bias for all heads, and one bias per key
    /// head (ALiBi-like), with and without past keys.
    #[test]
    fn blocked_attention_equals_fused_attention() {
        let device = Default::default();
        let (b, kvh, rep, s, d) = (2, 2, 3, 2 * QUERY_BLOCK + 37, 8);
        for (past, per_head) in [(0, false), (5, true)] {
            let keys = past + s;
            let q = Tensor::<Cpu, 4>::random([b, kvh, rep * s, d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<Cpu, 4>::random([b, kvh, keys, d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<Cpu, 4>::random([b, kvh, keys, d], Distribution::Normal(0.0, 1.0), &device);
            let hb = if per_head { kvh } else { 1 };
            // Row 1 has its last 20 keys padded; queries see keys up to their own position.
            let mut data = Vec::new();
            for row in 0..b {
                for h in 0..hb {
                    for _ in 0..rep {
                        for t in 0..s {
                            for j in 0..keys {
                                let real = !(row == 1 && j >= keys - 20);
                                let slope = if per_head { 0.01 * (h + 1) as f32 } else { 0.0 };
                                let visible = j <= past + t && real;
                                data.push(if visible { slope * (j as f32 - (past + t) as f32) } else { crate::nn::MASKED });
                            }
                        }
                    }
                }
            }
            let bias = Tensor::<Cpu, 4>::from_data(TensorData::new(data, [b, hb, rep * s, keys]), &device);
            let options = AttentionModuleOptions { scale: Some(0.3), ..Default::default() };
            let fused = burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, Some(bias.clone()), options);
            let blocked = causal_blocked_attention(q, k, v, bias, rep, s, 0.3);
            let diff: f32 = (fused - blocked).abs().max().into_scalar();
            assert!(diff < 1e-5, "past {past}, per-head bias {per_head}: max |diff| {diff}");
        }
    }
}
