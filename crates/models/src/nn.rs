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
pub trait Projection<B: Backend>: Module<B> {
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
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        }
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
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = if self.rms {
            let var = x.clone().powi_scalar(2).mean_dim(2);
            x * (var + self.eps).sqrt().recip()
        } else {
            let mean = x.clone().mean_dim(2);
            let xc = x - mean;
            let var = xc.clone().powi_scalar(2).mean_dim(2);
            xc * (var + self.eps).sqrt().recip()
        };
        let y = x * self.weight.val().unsqueeze::<3>();
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<3>(),
            None => y,
        }
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
    let base: Vec<f32> = (0..rotary_dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / rotary_dim as f32))
        .collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => base
            .iter()
            .map(|&f| {
                let f = f as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
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

/// Cosine and sine tables `[batch, 1, seq, rotary_dim]` for the given positions (`[batch][seq]`).
pub fn rope_tables<B: Backend>(
    inv_freq: &[f32],
    positions: &[Vec<usize>],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let b = positions.len();
    let s = positions.first().map_or(0, |p| p.len());
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(b * s * half * 2);
    let mut sin = Vec::with_capacity(b * s * half * 2);
    for row in positions {
        for &p in row {
            // transformers multiplies in f32, then takes cos/sin of the f32 angle.
            let angles: Vec<f32> = inv_freq.iter().map(|f| f * p as f32).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| (*a as f64).cos() as f32));
                sin.extend(angles.iter().map(|a| (*a as f64).sin() as f32));
            }
        }
    }
    let shape = [b, 1, s, half * 2];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Rotate-half RoPE on the first `cos.dims()[3]` channels of `x: [batch, heads, seq, head_dim]`.
pub fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let rot = cos.dims()[3];
    let (x_rot, x_pass) = if rot < d {
        (x.clone().narrow(3, 0, rot), Some(x.narrow(3, rot, d - rot)))
    } else {
        (x, None)
    };
    let half = rot / 2;
    let x1 = x_rot.clone().narrow(3, 0, half);
    let x2 = x_rot.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let out = x_rot * cos.clone() + rotated * sin.clone();
    match x_pass {
        Some(p) => Tensor::cat(vec![out, p], 3),
        None => out,
    }
}

/// Value added to disallowed attention scores (finite, so fully masked rows stay NaN-free).
pub const MASKED: f32 = -1e30;

/// Additive attention bias `[batch, 1 or heads, seq, keys]`: causal and padding masks, the
/// sliding window, and ALiBi. `key_mask[b]` covers every key slot (cache and new tokens);
/// the new queries are the last `seq` slots.
pub fn attention_bias<B: Backend>(
    spec: &ArchSpec,
    key_mask: &[Vec<bool>],
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
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
