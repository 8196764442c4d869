//! The quantized projection: packed weights in memory, a dequantizing matmul for prefill and an
//! INT-n matrix-vector kernel for decoding.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::prelude::*;
use rayon::prelude::*;
use secateur_models::{CausalLm, Projection};

use crate::pack::Packed;

/// Rows (tokens) up to which the matrix-vector kernel is used instead of dequantizing.
pub const KERNEL_MAX_ROWS: usize = 4;

/// A projection whose weight is stored packed (AutoGPTQ layout).
#[derive(Module, Debug)]
pub struct QuantLinear<B: Backend> {
    #[module(skip)]
    pub packed: Arc<Packed>,
    /// Zero points unpacked once, `[groups, out]` as f32 (small: one per group and output).
    #[module(skip)]
    pub zeros: Arc<Vec<f32>>,
    /// Scales `[groups, out]` as f32.
    #[module(skip)]
    pub scales: Arc<Vec<f32>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> QuantLinear<B> {
    /// Wraps packed tensors (and an optional bias).
    pub fn new(packed: Packed, bias: Option<Tensor<B, 1>>) -> Self {
        let q = packed.unpack();
        let (o, groups) = (q.out_features, q.groups());
        let mut zeros = vec![0f32; groups * o];
        let mut scales = vec![0f32; groups * o];
        for r in 0..o {
            for g in 0..groups {
                zeros[g * o + r] = q.zeros[r * groups + g] as f32;
                scales[g * o + r] = q.scales[r * groups + g];
            }
        }
        Self { packed: Arc::new(packed), zeros: Arc::new(zeros), scales: Arc::new(scales), bias: bias.map(Param::from_tensor) }
    }

    /// The dequantized weight `[out, in]` (row-major).
    pub fn dequantized(&self) -> Vec<f32> {
        self.packed.unpack().dequantize()
    }

    /// Bytes held for the weight (packed values, zero points, scales, group indices).
    pub fn weight_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// `y = x·Wᵀ` for a few rows `x: [rows, in]` (row-major), straight from the packed words:
    /// per group, `s·(Σ x·q − z·Σ x)`. Outputs are split across threads.
    pub fn matvec(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let p = &*self.packed;
        let (o, i) = (p.out_features, p.in_features);
        let bits = p.config.bits as usize;
        let v = 32 / bits;
        let mask = (1u32 << bits) - 1;
        let g = p.config.group(i);
        let groups = i.div_ceil(g);
        let mut y = vec![0f32; rows * o];
        const CHUNK: usize = 256;
        y.par_chunks_mut(o).zip(x.par_chunks(i)).for_each(|(yr, xr)| {
            let sums: Vec<f32> = xr.chunks(g).map(|c| c.iter().sum()).collect();
            yr.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
                let o0 = ci * CHUNK;
                let n = out.len();
                let mut acc = vec![0f32; n];
                #[allow(clippy::needless_range_loop)] // `gi` indexes words, zeros and scales too
                for gi in 0..groups {
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for w in (gi * g / v)..(((gi + 1) * g).min(i) / v) {
                        let words = &p.qweight[w * o + o0..w * o + o0 + n];
                        accumulate(&mut acc, words, &xr[w * v..w * v + v], bits as u32, mask);
                    }
                    let (zs, ss) = (&self.zeros[gi * o + o0..gi * o + o0 + n], &self.scales[gi * o + o0..gi * o + o0 + n]);
                    for j in 0..n {
                        out[j] += ss[j] * (acc[j] - zs[j] * sums[gi]);
                    }
                }
            });
        });
        y
    }
}

/// `acc[j] += Σ_k x[k] · field_k(words[j])`: one input at a time across a run of outputs, so the
/// inner loop is a shift, mask, convert and multiply-add over contiguous words, which the
/// compiler vectorises (with AVX-512 or AVX2 + FMA when the CPU has them, chosen at run time).
#[inline(always)]
fn accumulate_generic(acc: &mut [f32], words: &[u32], x: &[f32], bits: u32, mask: u32) {
    for (k, &xv) in x.iter().enumerate() {
        let shift = bits * k as u32;
        for (a, &word) in acc.iter_mut().zip(words) {
            *a += xv * ((word >> shift) & mask) as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn accumulate_avx512(acc: &mut [f32], words: &[u32], x: &[f32], bits: u32, mask: u32) {
    accumulate_generic(acc, words, x, bits, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn accumulate_avx2(acc: &mut [f32], words: &[u32], x: &[f32], bits: u32, mask: u32) {
    accumulate_generic(acc, words, x, bits, mask)
}

fn accumulate(acc: &mut [f32], words: &[u32], x: &[f32], bits: u32, mask: u32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { accumulate_avx512(acc, words, x, bits, mask) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { accumulate_avx2(acc, words, x, bits, mask) };
        }
    }
    accumulate_generic(acc, words, x, bits, mask)
}

impl<B: Backend> Projection<B> for QuantLinear<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, i] = x.dims();
        let o = self.packed.out_features;
        let device = x.device();
        // The kernel runs on the host: only for inference (it would cut the autodiff graph).
        let y = if b * s <= KERNEL_MAX_ROWS && !B::ad_enabled(&device) {
            let xv: Vec<f32> = x.into_data().convert::<f32>().to_vec().expect("f32 input");
            let y = self.matvec(&xv, b * s);
            Tensor::<B, 2>::from_data(TensorData::new(y, [b * s, o]), &device)
        } else {
            let w = Tensor::<B, 2>::from_data(TensorData::new(self.dequantized(), [o, i]), &device);
            x.reshape([b * s, i]).matmul(w.transpose())
        };
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, s, o])
    }
}

/// A model with quantized projections.
pub type QuantLm<B> = CausalLm<B, QuantLinear<B>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::{QuantConfig, quantize};

    type B = secateur_models::Cpu;

    #[test]
    fn kernel_and_dequantizing_matmul_agree_with_the_dequantized_weight() {
        let (o, i) = (96, 256);
        let w: Vec<f32> = (0..o * i).map(|k| ((k * 7919 % 997) as f32 / 498.5) - 1.0).collect();
        for cfg in [
            QuantConfig { bits: 4, group_size: Some(128) },
            QuantConfig { bits: 4, group_size: None },
            QuantConfig { bits: 8, group_size: Some(64) },
            QuantConfig { bits: 4, group_size: Some(48) },
        ] {
            let q = quantize(&w, o, i, cfg).unwrap();
            let deq = q.dequantize();
            let lin = QuantLinear::<B>::new(Packed::pack(&q).unwrap(), None);
            let device = Default::default();
            for rows in [1usize, 3, 9] {
                let x: Vec<f32> = (0..rows * i).map(|k| ((k * 31 % 17) as f32 - 8.0) / 8.0).collect();
                let want: Vec<f32> = (0..rows)
                    .flat_map(|r| {
                        let (x, deq) = (&x, &deq);
                        (0..o).map(move |c| (0..i).map(|j| x[r * i + j] as f64 * deq[c * i + j] as f64).sum::<f64>() as f32)
                    })
                    .collect();
                let xt = Tensor::<B, 3>::from_data(TensorData::new(x, [1, rows, i]), &device);
                let got: Vec<f32> = lin.forward(xt).into_data().to_vec().unwrap();
                let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 2e-3, "{cfg:?}, {rows} rows: {worst}");
            }
        }
    }
}
