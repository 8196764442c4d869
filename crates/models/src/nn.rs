//! Building blocks shared by every family: the [`Projection`] trait and its dense
//! implementation, normalisation, activations, rotary tables and the attention bias.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation;

use crate::spec::{Activation, ArchSpec, PositionKind, RopeScaling};

/// A linear map `[.., in] -> [.., out]` at a projection site.
///
/// The model is generic over its projection type, so downstream crates swap in their own
/// (masked, quantized, with an adapter) with [`crate::CausalLm::map_projections`] without forking
/// the model code.
pub trait Projection<B: Backend>: Module<B> + burn::module::ModuleDisplay {
    /// Applies the projection to `[batch, seq, in]`, giving `[batch, seq, out]`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// A dense projection with PyTorch's layout: `weight` is `[out, in]`, `y = x·Wᵀ + b`.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Dense<B> {
    /// Wraps a `[out, in]` weight and an optional `[out]` bias.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.val().dims()
    }
}

/// `x·Wᵀ (+ b)` for `x: [batch, seq, in]` and `w: [out, in]`.
pub fn linear<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    let [bs, s, i] = x.dims();
    let [o, _] = w.dims();
    let y = x.reshape([bs * s, i]).matmul(w.transpose());
    let y = match b {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    };
    y.reshape([bs, s, o])
}

impl<B: Backend> Projection<B> for Dense<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// RMSNorm or LayerNorm over the last dimension.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
    /// RMSNorm when true, LayerNorm otherwise.
    pub rms: bool,
}

impl<B: Backend> Norm<B> {
    /// Normalises `x: [batch, seq, hidden]` over its last dimension.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // Work on [rows, hidden]: burn's flex backend broadcasts much faster in 2D than in 3D.
        let [b, s, h] = x.dims();
        let x = x.reshape([b * s, h]);
        let x = if self.rms {
            let var = x.clone().powi_scalar(2).mean_dim(1);
            x * (var + self.eps).sqrt().recip()
        } else {
            let xc = x.clone() - x.mean_dim(1);
            let var = xc.clone().powi_scalar(2).mean_dim(1);
            xc * (var + self.eps).sqrt().recip()
        };
        // An elastic sub-network with a narrower residual stream uses the first `h` channels.
        let take = |t: Tensor<B, 1>| if t.dims()[0] == h { t } else { t.narrow(0, 0, h) };
        let y = x * take(self.weight.val()).unsqueeze::<2>();
        let y = match &self.bias {
            Some(bias) => y + take(bias.val()).unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, s, h])
    }
}

/// Applies an MLP activation.
pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Silu => activation::silu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Relu => activation::relu(x),
    }
}

/// Inverse frequencies of rotate-half RoPE, computed as transformers does (f32), with scaling.
pub fn rope_inv_freq(theta: f64, rotary_dim: usize, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base: Vec<f32> = (0..rotary_dim).step_by(2).map(|i| 1.0 / (theta as f32).powf(i as f32 / rotary_dim as f32)).collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old }) => base
            .iter()
            .map(|&f| {
                let f = f as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                if medium {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                } else {
                    scaled as f32
                }
            })
            .collect(),
    }
}

/// RoPE tables for one forward pass: `cos` and `sin` are `[batch * seq, head_dim]` (channels past
/// the rotary dimension hold 1 and 0, so they pass through), and `rotate` is the `[head_dim,
/// head_dim]` matrix with `x·rotate = rotate_half(x)` on the rotary channels and 0 elsewhere.
/// Everything is a same-shape element-wise op or a matmul: on the CPU backend these are far
/// faster than broadcasting or strided ones.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    pub rotate: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for the given positions (`[batch][seq]`) and head size.
    pub fn new(inv_freq: &[f32], head_dim: usize, positions: &[Vec<usize>], device: &B::Device) -> Self {
        let half = inv_freq.len();
        let rows = positions.iter().map(Vec::len).sum::<usize>();
        let mut cos = Vec::with_capacity(rows * head_dim);
        let mut sin = Vec::with_capacity(rows * head_dim);
        for &p in positions.iter().flatten() {
            // transformers multiplies in f32, then takes cos/sin of the f32 angle.
            let angles: Vec<f64> = inv_freq.iter().map(|f| (f * p as f32) as f64).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
            cos.extend(std::iter::repeat_n(1.0, head_dim - 2 * half));
            sin.extend(std::iter::repeat_n(0.0, head_dim - 2 * half));
        }
        let mut rotate = vec![0f32; head_dim * head_dim];
        for j in 0..half {
            rotate[(j + half) * head_dim + j] = -1.0; // out[j] = -x[j + half]
            rotate[j * head_dim + j + half] = 1.0; // out[j + half] = x[j]
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [rows, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [rows, head_dim]), device),
            rotate: Tensor::from_data(TensorData::new(rotate, [head_dim, head_dim]), device),
        }
    }

    /// The tables repeated for `heads` heads: `[batch * seq * heads, head_dim]`.
    pub fn per_head(&self, heads: usize) -> Self {
        let [rows, d] = self.cos.dims();
        let rep = |t: &Tensor<B, 2>| t.clone().unsqueeze_dim::<3>(1).repeat_dim(1, heads).reshape([rows * heads, d]);
        Self { cos: rep(&self.cos), sin: rep(&self.sin), rotate: self.rotate.clone() }
    }

    /// Applies rotate-half RoPE to `x: [batch, seq, heads, head_dim]` (tables from
    /// [`Self::per_head`] with the same number of heads).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let x = x.reshape([b * s * h, d]);
        let rotated = x.clone().matmul(self.rotate.clone());
        (x * self.cos.clone() + rotated * self.sin.clone()).reshape([b, s, h, d])
    }
}

/// Value added to disallowed attention scores (finite, so fully masked rows stay NaN-free).
pub const MASKED: f32 = -1e30;

/// Additive attention bias `[batch, 1 or heads, seq, keys]`: causal and padding masks, the
/// sliding window, and ALiBi. `key_mask[b]` covers every key slot (cache and new tokens);
/// the new queries are the last `seq` slots.
pub fn attention_bias<B: Backend>(spec: &ArchSpec, key_mask: &[Vec<bool>], seq: usize, device: &B::Device) -> Tensor<B, 4> {
    let b = key_mask.len();
    let t = key_mask.first().map_or(0, |m| m.len());
    let past = t - seq;
    let slopes: &[f64] = match &spec.position {
        PositionKind::Alibi { slopes } => slopes,
        PositionKind::Rope { .. } => &[],
    };
    let hb = slopes.len().max(1);
    let mut data = Vec::with_capacity(b * hb * seq * t);
    for row in key_mask {
        for h in 0..hb {
            for i in 0..seq {
                let q = past + i;
                for (j, &real) in row.iter().enumerate() {
                    let in_window = spec.sliding_window.is_none_or(|w| q - j.min(q) < w);
                    if real && j <= q && in_window {
                        let alibi = slopes.get(h).map_or(0.0, |s| s * (j as f64 - q as f64));
                        data.push(alibi as f32);
                    } else {
                        data.push(MASKED);
                    }
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, hb, seq, t]), device)
}

/// Projections that can run on a slice of their weight: the elastic sub-networks of NAS keep the
/// first output rows (MLP neurons, heads) and the matching input columns of the next projection.
pub trait Sliceable<B: Backend>: Projection<B> {
    /// Outputs `start..start + len` only, reading the first `cols` input features (`x` has
    /// `cols` features).
    fn forward_slice(&self, x: Tensor<B, 3>, start: usize, len: usize, cols: usize) -> Tensor<B, 3>;
}

/// Rows `start..start + len` and the first `cols` columns of `w`, without copying when whole.
pub fn slice_weight<B: Backend>(w: Tensor<B, 2>, start: usize, len: usize, cols: usize) -> Tensor<B, 2> {
    let [o, i] = w.dims();
    let w = if start == 0 && len == o { w } else { w.narrow(0, start, len) };
    if cols == i { w } else { w.narrow(1, 0, cols) }
}

impl<B: Backend> Sliceable<B> for Dense<B> {
    fn forward_slice(&self, x: Tensor<B, 3>, start: usize, len: usize, cols: usize) -> Tensor<B, 3> {
        let bias = self.bias.as_ref().map(|b| if start == 0 && len == b.dims()[0] { b.val() } else { b.val().narrow(0, start, len) });
        linear(x, slice_weight(self.weight.val(), start, len, cols), bias)
    }
}
