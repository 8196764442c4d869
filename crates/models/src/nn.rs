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

/// [`linear`] with the weight a parameter: in bf16 when [`crate::bf16::set_inference`] is on
/// and the host kernels serve this backend, using the parameter's packed copy (the first `cols`
/// inputs of it when `cols` is less than its width).
pub fn linear_param<B: Backend>(x: Tensor<B, 3>, w: &Param<Tensor<B, 2>>, b: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    let device = x.device();
    let [bs, s, i] = x.dims();
    if !(crate::bf16::inference() && crate::host::enabled::<B>(&device)) {
        let w = w.val();
        let w = if w.dims()[1] > i { w.narrow(1, 0, i) } else { w };
        return linear(x, w, b);
    }
    let packed = crate::bf16::packed(w.id, i, || {
        let t = w.val();
        let t = if t.dims()[1] > i { t.narrow(1, 0, i) } else { t };
        let [o, _] = t.dims();
        crate::bf16::Bf16Weight::pack(&crate::host::to_host(t), o, i)
    });
    let o = packed.out_features;
    let y = crate::bf16::matmul(&crate::host::to_host(x), bs * s, &packed);
    let y = Tensor::<B, 2>::from_data(TensorData::new(y, [bs * s, o]), &device);
    let y = match b {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    };
    y.reshape([bs, s, o])
}

impl<B: Backend> Projection<B> for Dense<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear_param(x, &self.weight, self.bias.as_ref().map(|b| b.val()))
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

/// A gated MLP's hidden state `act(gate) · up`; SiLU runs as one fused pass on the host where
/// [`crate::host::enabled`] (burn's CPU `silu` takes several passes with a scalar `exp`).
pub fn gated<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    let device = gate.device();
    if act == Activation::Silu && crate::host::enabled::<B>(&device) {
        let shape = gate.shape();
        let (g, u) = (crate::host::to_host(gate), crate::host::to_host(up));
        return Tensor::from_data(TensorData::new(crate::host::silu_mul(&g, &u), shape), &device);
    }
    activate(gate, act) * up
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

/// Rows of a matrix quantized to int8 in blocks of [`Q8_BLOCK`] columns (llama.cpp's Q8_0:
/// scale `max|w| / 127` per block, round half away from zero): a decoding LM head that reads a
/// quarter of the f32 bytes. `y = W·x` is computed from the codes with f32 activations.
#[derive(Clone)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` codes.
    pub codes: Vec<i8>,
    /// `[rows, cols / Q8_BLOCK]` scales.
    pub scales: Vec<f32>,
}

/// Columns per scale of [`Int8Rows`].
pub const Q8_BLOCK: usize = 32;

impl std::fmt::Debug for Int8Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Rows [{} x {}]", self.rows, self.cols)
    }
}

impl Int8Rows {
    /// Quantizes a row-major `[rows, cols]` matrix; `None` when `cols` is not a multiple of
    /// [`Q8_BLOCK`].
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(Q8_BLOCK) || w.len() != rows * cols {
            return None;
        }
        use rayon::prelude::*;
        let mut codes = vec![0i8; w.len()];
        let mut scales = vec![0f32; w.len() / Q8_BLOCK];
        // Rows in parallel, each block of a row on its own.
        codes.par_chunks_mut(cols).zip(w.par_chunks(cols)).zip(scales.par_chunks_mut(cols / Q8_BLOCK)).for_each(|((cr, wr), sr)| {
            for ((wb, cb), d_out) in wr.chunks(Q8_BLOCK).zip(cr.chunks_mut(Q8_BLOCK)).zip(sr) {
                let d = wb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (c, &v) in cb.iter_mut().zip(wb) {
                    *c = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
                *d_out = d;
            }
        });
        Some(Self { rows, cols, codes, scales })
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    /// `y[r] = Σ_k W[r, k]·x[r', k]` for `n` rows `x: [n, cols]`: `[n, rows]`, split across
    /// threads by output rows ([`crate::par`]).
    pub fn matvec(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * self.rows];
        let blocks = self.cols / Q8_BLOCK;
        const CHUNK: usize = 1024;
        for (yr, xr) in y.chunks_mut(self.rows).zip(x.chunks(self.cols)) {
            crate::par::par_chunks_mut(yr, CHUNK, &|ci, out| {
                for (j, y) in out.iter_mut().enumerate() {
                    let r = ci * CHUNK + j;
                    let codes = &self.codes[r * self.cols..(r + 1) * self.cols];
                    *y = dot_q8(codes, &self.scales[r * blocks..(r + 1) * blocks], xr);
                }
            });
        }
        y
    }
}

/// `Σ_b d_b · Σ_{k in b} c_k·x_k` over blocks of 32, with 16 f32 lanes (the compiler vectorises
/// the lanes; AVX-512 when the CPU has it, chosen at run time).
fn dot_q8(codes: &[i8], scales: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { dot_q8_avx512(codes, scales, x) };
        }
    }
    dot_q8_generic(codes, scales, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_q8_avx512(codes: &[i8], scales: &[f32], x: &[f32]) -> f32 {
    dot_q8_generic(codes, scales, x)
}

#[inline(always)]
fn dot_q8_generic(codes: &[i8], scales: &[f32], x: &[f32]) -> f32 {
    let mut total = [0f32; 16];
    for ((cb, xb), &d) in codes.chunks_exact(Q8_BLOCK).zip(x.chunks_exact(Q8_BLOCK)).zip(scales) {
        let mut acc = [0f32; 16];
        for (c2, x2) in cb.chunks_exact(16).zip(xb.chunks_exact(16)) {
            for l in 0..16 {
                acc[l] += c2[l] as f32 * x2[l];
            }
        }
        for l in 0..16 {
            total[l] += d * acc[l];
        }
    }
    total.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_compute_their_definition_and_stay_close_to_f32() {
        let (rows, cols) = (1029, 96);
        let w: Vec<f32> = (0..rows * cols).map(|k| (((k * 7919) % 1013) as f32 - 506.0) / 300.0).collect();
        let q = Int8Rows::quantize(&w, rows, cols).unwrap();
        assert!(Int8Rows::quantize(&w[..rows * 90], rows, 90).is_none());
        // Codes: round(w / d) with d = max|w| / 127 per block of 32; the block maximum maps to ±127.
        for (b, wb) in w.chunks(Q8_BLOCK).enumerate() {
            let d = q.scales[b];
            assert_eq!(d, wb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0);
            for (k, &v) in wb.iter().enumerate() {
                assert_eq!(q.codes[b * Q8_BLOCK + k], (v / d).round() as i8, "block {b}, column {k}");
            }
        }
        let n = 3;
        let x: Vec<f32> = (0..n * cols).map(|k| (((k * 31) % 23) as f32 - 11.0) / 7.0).collect();
        let y = q.matvec(&x, n);
        let mut worst_def = 0f64;
        let mut err = (0f64, 0f64);
        for r in 0..n {
            for j in 0..rows {
                let xs = &x[r * cols..(r + 1) * cols];
                let def: f64 =
                    (0..cols).map(|k| q.scales[(j * cols + k) / Q8_BLOCK] as f64 * q.codes[j * cols + k] as f64 * xs[k] as f64).sum();
                let exact: f64 = (0..cols).map(|k| w[j * cols + k] as f64 * xs[k] as f64).sum();
                let got = y[r * rows + j] as f64;
                worst_def = worst_def.max((got - def).abs() / def.abs().max(1.0));
                err.0 += (got - exact).powi(2);
                err.1 += exact.powi(2);
            }
        }
        assert!(worst_def < 1e-5, "against its definition: {worst_def}");
        assert!((err.0 / err.1).sqrt() < 0.01, "against the f32 weights: {}", (err.0 / err.1).sqrt());
    }
}
