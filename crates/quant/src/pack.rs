//! AutoGPTQ's packed storage (`checkpoint_format: gptq`).
//!
//! For `bits` in {2, 4, 8} (`vals = 32 / bits` values per 32-bit word):
//! - `qweight`: int32 `[in / vals, out]`; word `[i, o]` holds `q[o, vals·i + k]` at bits
//!   `bits·k`;
//! - `qzeros`: int32 `[groups, out / vals]`; word `[g, j]` holds `zero[vals·j + k, g] - 1` at bits
//!   `bits·k` (AutoGPTQ stores zero points minus one);
//! - `scales`: f16 `[groups, out]`; `g_idx`: int32 `[in]`, the group of every input.
//!
//! A zero point of 0 is stored as `-1` (all ones) and reads back as `2^bits`, which AutoGPTQ's
//! own kernels then use as is: that is the known overflow of this format (fixed by
//! `gptq_v2`). secateur reads it back modulo `2^bits`, so its own round trip is exact.

use rayon::prelude::*;

use crate::QuantError;
use crate::rtn::{QuantConfig, Quantized};

/// Packed tensors of one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub out_features: usize,
    pub in_features: usize,
    pub config: QuantConfig,
    /// `[in / vals, out]`.
    pub qweight: Vec<u32>,
    /// `[groups, out / vals]`.
    pub qzeros: Vec<u32>,
    /// `[groups, out]`.
    pub scales: Vec<half::f16>,
    /// `[in]`.
    pub g_idx: Vec<i32>,
}

fn vals(bits: u32) -> Result<usize, QuantError> {
    if 32 % bits != 0 {
        return Err(QuantError::Config(format!("{bits}-bit values cannot be packed in the GPTQ layout (2, 4 or 8 bits)")));
    }
    Ok((32 / bits) as usize)
}

impl Packed {
    /// Packs a quantized matrix.
    pub fn pack(q: &Quantized) -> Result<Self, QuantError> {
        let bits = q.config.bits;
        let v = vals(bits)?;
        let (o, i) = (q.out_features, q.in_features);
        let g = q.config.group(i);
        if i % v != 0 || o % v != 0 || (!g.is_multiple_of(v) && g != i) {
            return Err(QuantError::Config(format!("a {o}x{i} matrix in groups of {g} cannot be packed {v} values per word")));
        }
        let groups = q.groups();
        let mut qweight = vec![0u32; i / v * o];
        // Word rows in parallel: row `w` packs inputs `v·w..v·(w + 1)` of every output.
        qweight.par_chunks_mut(o).enumerate().for_each(|(w, words)| {
            for (r, word) in words.iter_mut().enumerate() {
                let codes = &q.q[r * i + w * v..r * i + (w + 1) * v];
                *word = codes.iter().enumerate().fold(0u32, |acc, (k, &c)| acc | (c as u32) << (bits as usize * k));
            }
        });
        let mask = (1u32 << bits) - 1;
        let mut qzeros = vec![0u32; groups * (o / v)];
        for gi in 0..groups {
            for r in 0..o {
                let z = (q.zeros[r * groups + gi] as u32).wrapping_sub(1) & mask;
                qzeros[gi * (o / v) + r / v] |= z << (bits as usize * (r % v));
            }
        }
        let mut scales = vec![half::f16::ZERO; groups * o];
        for r in 0..o {
            for gi in 0..groups {
                scales[gi * o + r] = half::f16::from_f32(q.scales[r * groups + gi]);
            }
        }
        let g_idx = (0..i).map(|c| (c / g) as i32).collect();
        Ok(Self { out_features: o, in_features: i, config: q.config, qweight, qzeros, scales, g_idx })
    }

    /// Packs `q` whose column `j` is input `perm[j]` of the layer (GPTQ's act-order) in the
    /// checkpoint's layout: codes in input order, `g_idx[perm[j]] = j / group`.
    pub fn pack_permuted(q: &Quantized, perm: Option<&[usize]>) -> Result<Self, QuantError> {
        let Some(perm) = perm else { return Self::pack(q) };
        let i = q.in_features;
        if perm.len() != i || {
            let mut seen = vec![false; i];
            !perm.iter().all(|&p| p < i && !std::mem::replace(&mut seen[p], true))
        } {
            return Err(QuantError::Config(format!("the column permutation is not a permutation of {i} inputs")));
        }
        let g = q.config.group(i);
        let codes = crate::gptq::unpermute_columns(&q.q, i, perm);
        let mut packed = Self::pack(&Quantized { q: codes, ..q.clone() })?;
        for (j, &p) in perm.iter().enumerate() {
            packed.g_idx[p] = (j / g) as i32;
        }
        Ok(packed)
    }

    /// The act-order permutation of `g_idx`, if the groups are not contiguous: column `j` of
    /// the sorted matrix is input `perm[j]` (inputs stably sorted by group). Errors when a
    /// group index is out of range or the groups do not have the sizes contiguous groups would.
    pub fn act_order(&self) -> Result<Option<Vec<usize>>, QuantError> {
        let i = self.in_features;
        let g = self.config.group(i);
        if self.g_idx.len() != i {
            return Err(QuantError::Config(format!("g_idx has {} entries for {i} inputs", self.g_idx.len())));
        }
        if self.g_idx.iter().enumerate().all(|(c, &gi)| gi as usize == c / g) {
            return Ok(None);
        }
        let groups = i.div_ceil(g);
        let mut counts = vec![0usize; groups];
        for (c, &gi) in self.g_idx.iter().enumerate() {
            if gi < 0 || gi as usize >= groups {
                return Err(QuantError::Config(format!("g_idx[{c}] = {gi} is outside the {groups} groups")));
            }
            counts[gi as usize] += 1;
        }
        if let Some(k) = (0..groups).find(|&k| counts[k] != g.min(i - k * g)) {
            return Err(QuantError::Config(format!("g_idx puts {} inputs in group {k} of size {g}", counts[k])));
        }
        let mut perm: Vec<usize> = (0..i).collect();
        perm.sort_by_key(|&c| self.g_idx[c]);
        Ok(Some(perm))
    }

    /// Unpacks into the quantized matrix.
    pub fn unpack(&self) -> Quantized {
        let bits = self.config.bits as usize;
        let v = 32 / bits;
        let (o, i) = (self.out_features, self.in_features);
        let mask = (1u32 << bits) - 1;
        let groups = self.scales.len() / o;
        let mut q = vec![0u8; o * i];
        // Output rows in parallel.
        q.par_chunks_mut(i).enumerate().for_each(|(r, row)| {
            for (c, code) in row.iter_mut().enumerate() {
                *code = ((self.qweight[(c / v) * o + r] >> (bits * (c % v))) & mask) as u8;
            }
        });
        let (zeros, scales) = self.zeros_and_scales();
        let (zeros, scales) = (0..o).flat_map(|r| (0..groups).map(move |gi| gi * o + r)).map(|k| (zeros[k] as u8, scales[k])).unzip();
        Quantized { out_features: o, in_features: i, config: self.config, q, scales, zeros }
    }

    /// Zero points and scales as f32, `[groups, out]` (the stored layout), without unpacking
    /// the codes.
    pub fn zeros_and_scales(&self) -> (Vec<f32>, Vec<f32>) {
        let bits = self.config.bits as usize;
        let v = 32 / bits;
        let o = self.out_features;
        let mask = (1u32 << bits) - 1;
        let zeros = (0..self.scales.len())
            .map(|k| {
                let (gi, r) = (k / o, k % o);
                let stored = (self.qzeros[gi * (o / v) + r / v] >> (bits * (r % v))) & mask;
                ((stored + 1) & mask) as f32
            })
            .collect();
        (zeros, self.scales.iter().map(|s| s.to_f32()).collect())
    }

    /// Bytes of the packed tensors.
    pub fn bytes(&self) -> usize {
        4 * (self.qweight.len() + self.qzeros.len() + self.g_idx.len()) + 2 * self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::quantize;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packing_round_trips(o8 in 1usize..4, i16 in 1usize..4, bits in prop::sample::select(vec![2u32, 4, 8]), per_channel in prop::bool::ANY, seed in 0u64..1000) {
            let (o, i) = (o8 * 16, i16 * 16);
            let w: Vec<f32> = (0..o * i).map(|k| (((k as u64 * 2654435761 + seed) % 1000) as f32 / 250.0) - 2.0).collect();
            let cfg = QuantConfig { bits, group_size: if per_channel { None } else { Some(16) } };
            let q = quantize(&w, o, i, cfg).unwrap();
            let packed = Packed::pack(&q).unwrap();
            prop_assert_eq!(packed.qweight.len(), i * bits as usize / 32 * o);
            prop_assert_eq!(packed.unpack(), q.clone());
            // Act-order: the codes of a permuted matrix go back to input order, and the
            // permutation is recovered from g_idx (stable within a group).
            let perm: Vec<usize> = (0..i).rev().collect();
            let permuted = Packed::pack_permuted(&q, Some(&perm)).unwrap();
            let got = permuted.act_order().unwrap();
            if per_channel || i == 16 {
                prop_assert!(got.is_none(), "one group: nothing to sort");
            } else {
                let got = got.unwrap();
                prop_assert!(got.iter().enumerate().all(|(j, &c)| (i - 1 - c) / 16 == j / 16), "sorted by group");
                prop_assert_eq!(permuted.unpack().q, crate::gptq::unpermute_columns(&q.q, i, &perm));
            }
        }
    }

    #[test]
    fn layout_by_hand() {
        // One output row of 8 inputs, 4 bits: q = 0..8 -> one word 0x76543210 per input block.
        let q = Quantized {
            out_features: 8,
            in_features: 8,
            config: QuantConfig { bits: 4, group_size: None },
            q: (0..64).map(|k| (k % 8) as u8).collect(),
            scales: vec![0.5; 8],
            zeros: (0..8).map(|r| r as u8).collect(),
        };
        let p = Packed::pack(&q).unwrap();
        assert_eq!(p.qweight, vec![0x7654_3210; 8]);
        // Zero points minus one, 8 per word along the outputs; zero 0 wraps to 0xF.
        assert_eq!(p.qzeros, vec![0x6543_210F]);
        assert_eq!(p.g_idx, vec![0; 8]);
        assert_eq!(p.unpack(), q);
    }
}
