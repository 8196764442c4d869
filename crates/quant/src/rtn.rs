//! Asymmetric round-to-nearest (RTN) quantization with per-group scales and zero points.
//!
//! For every row and every group of `group_size` consecutive inputs (the whole row when
//! `group_size` is `None`; the last group of a row may be shorter, as in GPTQ): the range is widened to include zero (GPTQ's convention:
//! `lo = min(min w, 0)`, `hi = max(max w, 0)`, and `[-1, 1]` for an all-zero group), then
//! `scale = (hi - lo) / (2^bits - 1)`, `zero = round(-lo / scale)` (in `[0, 2^bits - 1]`),
//! `q = clamp(round(w / scale) + zero, 0, 2^bits - 1)` and `w ≈ (q - zero) · scale`. Rounding is
//! half to even, as `torch.round` does. Because the range holds zero, 0 is exactly
//! representable: a pruned weight stays exactly zero.
//!
//! Scales are rounded to f16 before the values are quantized, because GPTQ checkpoints store
//! them in f16: the in-memory model and the written checkpoint are then the same model. The
//! error of every value is at most half a step, except that the f16 rounding of the scale can
//! add up to `maxq · 2⁻¹¹` of a step at the two ends of a group's range.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::QuantError;

/// Bits and group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantConfig {
    pub bits: u32,
    /// Inputs per group; `None` quantizes each row as one group (per channel).
    pub group_size: Option<usize>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self { bits: 4, group_size: Some(128) }
    }
}

impl QuantConfig {
    /// The largest quantized value, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// The group size for rows of `in_features` inputs.
    pub fn group(&self, in_features: usize) -> usize {
        self.group_size.unwrap_or(in_features).min(in_features)
    }

    /// Checks bits and group size against a row width.
    pub fn validate(&self, in_features: usize) -> Result<(), QuantError> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::Config(format!("{} bits: supported are 2 to 8", self.bits)));
        }
        if self.group(in_features) == 0 {
            return Err(QuantError::Config("the group size must be positive".into()));
        }
        Ok(())
    }
}

/// A quantized `[out, in]` matrix (unpacked).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub out_features: usize,
    pub in_features: usize,
    pub config: QuantConfig,
    /// `[out, in]` values in `0..=maxq`.
    pub q: Vec<u8>,
    /// `[out, groups]`.
    pub scales: Vec<f32>,
    /// `[out, groups]`, in `0..=maxq`.
    pub zeros: Vec<u8>,
}

/// Round half to even (`torch.round`).
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Scale and zero point of one group (GPTQ's asymmetric convention).
pub fn group_params(values: &[f32], maxq: u32) -> (f32, u8) {
    let lo = values.iter().copied().fold(0.0f32, f32::min);
    let hi = values.iter().copied().fold(0.0f32, f32::max);
    let (lo, hi) = if lo == 0.0 && hi == 0.0 { (-1.0, 1.0) } else { (lo, hi) };
    let scale = half::f16::from_f32((hi - lo) / maxq as f32).to_f32();
    let zero = round_half_even(-lo / scale).clamp(0.0, maxq as f32);
    (scale, zero as u8)
}

/// Quantizes one value with a group's parameters.
pub fn quantize_value(w: f32, scale: f32, zero: u8, maxq: u32) -> u8 {
    (round_half_even(w / scale) + zero as f32).clamp(0.0, maxq as f32) as u8
}

/// Quantizes a row-major `[out, in]` matrix.
pub fn quantize(w: &[f32], out_features: usize, in_features: usize, config: QuantConfig) -> Result<Quantized, QuantError> {
    config.validate(in_features)?;
    if w.len() != out_features * in_features {
        return Err(QuantError::Config(format!("{} values for a {out_features}x{in_features} matrix", w.len())));
    }
    let g = config.group(in_features);
    let groups = in_features.div_ceil(g);
    let maxq = config.maxq();
    let mut q = vec![0u8; w.len()];
    let mut scales = vec![0f32; out_features * groups];
    let mut zeros = vec![0u8; out_features * groups];
    // Rows in parallel (each row's values are independent of the others).
    q.par_chunks_mut(in_features)
        .zip(w.par_chunks(in_features))
        .zip(scales.par_chunks_mut(groups).zip(zeros.par_chunks_mut(groups)))
        .for_each(|((qr, wr), (sr, zr))| {
            for (k, (qg, wg)) in qr.chunks_mut(g).zip(wr.chunks(g)).enumerate() {
                let (scale, zero) = group_params(wg, maxq);
                sr[k] = scale;
                zr[k] = zero;
                for (qv, &v) in qg.iter_mut().zip(wg) {
                    *qv = quantize_value(v, scale, zero, maxq);
                }
            }
        });
    Ok(Quantized { out_features, in_features, config, q, scales, zeros })
}

impl Quantized {
    /// Number of groups per row (the last one may be shorter, as GPTQ allows).
    pub fn groups(&self) -> usize {
        self.in_features.div_ceil(self.config.group(self.in_features))
    }

    /// Quantizes new values of the same shape with this matrix's scales and zero points
    /// (QA-SparsePEFT merging).
    pub fn requantize(&self, w: &[f32]) -> Self {
        let g = self.config.group(self.in_features);
        let maxq = self.config.maxq();
        let groups = self.groups();
        let q = w
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (r, c) = (i / self.in_features, i % self.in_features);
                let k = r * groups + c / g;
                quantize_value(v, self.scales[k], self.zeros[k], maxq)
            })
            .collect();
        Self { q, ..self.clone() }
    }

    /// `(q - zero) · scale`, row-major `[out, in]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let g = self.config.group(self.in_features);
        let groups = self.groups();
        self.q
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let (r, c) = (i / self.in_features, i % self.in_features);
                let k = r * groups + c / g;
                (q as f32 - self.zeros[k] as f32) * self.scales[k]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_group() {
        // Range [-1, 2] over 15 steps: scale 0.2 (0.199951171875 in f16), zero round(5.0012) = 5.
        let (s, z) = group_params(&[-1.0, 0.5, 2.0], 15);
        assert_eq!(s as f64, 0.199951171875);
        assert_eq!(z, 5);
        assert_eq!(quantize_value(0.5, s, z, 15), 8); // 0.5/s = 2.5006 -> 3? no: round(2.5006) = 3 -> 8
        assert_eq!(quantize_value(-0.1, s, z, 15), 4); // -0.5001 -> -1 + 5
        // Ties round to even, as torch.round does.
        assert_eq!(quantize_value(0.75, 0.5, 0, 15), 2); // 1.5 -> 2
        assert_eq!(quantize_value(1.25, 0.5, 0, 15), 2); // 2.5 -> 2
        // A group entirely above zero still includes 0 in its range.
        let (s, z) = group_params(&[1.0, 3.0], 15);
        assert_eq!(z, 0);
        assert!((s - 0.2).abs() < 1e-4);
        // A constant-zero group gets the [-1, 1] range.
        let (s, z) = group_params(&[0.0, 0.0], 15);
        assert!((s - 2.0 / 15.0).abs() < 1e-4);
        assert_eq!(z, 8);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
    }

    fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>, u32, Option<usize>)> {
        (1usize..5, prop::sample::select(vec![8usize, 16, 32]), 2u32..=8, prop::bool::ANY).prop_flat_map(|(o, i, bits, per_channel)| {
            let group = if per_channel { None } else { Some(8) };
            (Just(o), Just(i), prop::collection::vec(-3.0f32..3.0, o * i), Just(bits), Just(group))
        })
    }

    proptest! {
        #[test]
        fn error_is_at_most_half_a_step((o, i, w, bits, group) in matrix()) {
            let q = quantize(&w, o, i, QuantConfig { bits, group_size: group }).unwrap();
            let d = q.dequantize();
            let g = q.config.group(i);
            for (idx, (a, b)) in w.iter().zip(&d).enumerate() {
                let s = q.scales[(idx / i) * q.groups() + (idx % i) / g];
                // Half a step, plus the f16 rounding of the scale at the ends of the range.
                let slack = q.config.maxq() as f32 * s / 2048.0;
                prop_assert!((a - b).abs() <= s / 2.0 + slack + 1e-6, "{a} vs {b}, scale {s}");
            }
        }

        #[test]
        fn zeros_stay_exactly_zero((o, i, mut w, bits, group) in matrix(), mask in prop::collection::vec(prop::bool::ANY, 160)) {
            for (v, m) in w.iter_mut().zip(mask.iter().cycle()) {
                if *m { *v = 0.0; }
            }
            let q = quantize(&w, o, i, QuantConfig { bits, group_size: group }).unwrap();
            for (a, b) in w.iter().zip(q.dequantize()) {
                if *a == 0.0 { prop_assert_eq!(b, 0.0); }
            }
        }
    }
}
