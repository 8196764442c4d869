//! The quantized projection: packed weights in memory, a dequantizing matmul for prefill and an
//! INT-n matrix-vector kernel for decoding.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::prelude::*;
use rayon::prelude::*;
use secateur_models::par::par_chunks_mut;
use secateur_models::{CausalLm, Projection};

use crate::pack::Packed;
use crate::rtn::Quantized;

/// Rows (tokens) up to which the packed kernel is used instead of dequantizing the weight
/// (prompts of decoding included; longer inputs dequantize and call the backend's matmul).
pub const KERNEL_MAX_ROWS: usize = 32;

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
    /// Zero points `[groups, out]` as integers, for the integer kernel.
    #[module(skip)]
    pub izeros: Arc<Vec<i32>>,
    /// The packed words again, tiled for the integer kernel: `[out / 16, in / vals, 16]`, so that
    /// it reads memory in sequence (empty when the kernel does not apply). A permutation of
    /// `packed.qweight`, which stays in the checkpoint's layout.
    #[module(skip)]
    pub tiled: Arc<Vec<u32>>,
    /// Act-order checkpoints: `packed` holds the columns sorted by group, column `j` being
    /// input `perm[j]`; inputs are gathered in that order before the matmul.
    #[module(skip)]
    pub perm: Option<Arc<Vec<usize>>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> QuantLinear<B> {
    /// Wraps packed tensors with any group indices (act-order ones are sorted by group once).
    pub fn from_packed(packed: Packed, bias: Option<Tensor<B, 1>>) -> Result<Self, crate::QuantError> {
        match packed.act_order()? {
            None => Ok(Self::new(packed, bias)),
            Some(perm) => {
                let q = packed.unpack();
                let sorted = Quantized { q: q.q.chunks(q.in_features).flat_map(|r| perm.iter().map(|&c| r[c])).collect(), ..q };
                let mut lin = Self::new(Packed::pack(&sorted)?, bias);
                lin.perm = Some(Arc::new(perm));
                Ok(lin)
            }
        }
    }

    /// The packed tensors as a checkpoint stores them (input order, act-order `g_idx`).
    pub fn checkpoint_packed(&self) -> Result<Packed, crate::QuantError> {
        match &self.perm {
            None => Ok((*self.packed).clone()),
            Some(perm) => Packed::pack_permuted(&self.packed.unpack(), Some(perm)),
        }
    }

    /// Wraps packed tensors whose groups are contiguous (`g_idx[c] = c / group`, as
    /// [`Packed::pack`] writes them; see [`Self::from_packed`] for others), and an optional bias.
    pub fn new(packed: Packed, bias: Option<Tensor<B, 1>>) -> Self {
        let o = packed.out_features;
        let (zeros, scales) = packed.zeros_and_scales();
        let izeros = zeros.iter().map(|&z| z as i32).collect();
        let tiled = match IntLayout::of(&packed) {
            Some(l) => {
                let mut tiled = vec![0u32; o / 16 * l.words * 16];
                tiled.par_chunks_mut(l.words * 16).enumerate().for_each(|(t, tile)| {
                    for (k, word) in tile.iter_mut().enumerate() {
                        let (w, c) = (k / 16, k % 16);
                        *word = packed.qweight[w * o + 16 * t + c];
                    }
                });
                tiled
            }
            None => Vec::new(),
        };
        Self {
            tiled: Arc::new(tiled),
            packed: Arc::new(packed),
            zeros: Arc::new(zeros),
            scales: Arc::new(scales),
            izeros: Arc::new(izeros),
            perm: None,
            bias: bias.map(Param::from_tensor),
        }
    }

    /// The dequantized weight `[out, in]` (row-major, inputs in the layer's order).
    pub fn dequantized(&self) -> Vec<f32> {
        let d = self.packed.unpack().dequantize();
        match &self.perm {
            None => d,
            Some(perm) => crate::gptq::unpermute_columns(&d, self.packed.in_features, perm),
        }
    }

    /// Bytes held for the weight (packed values, zero points, scales, group indices, and the
    /// kernel's tiled copy of the packed values).
    pub fn weight_bytes(&self) -> usize {
        self.packed.bytes() + 4 * self.tiled.len()
    }

    /// `y = x·Wᵀ` for a few rows `x: [rows, in]` (row-major), straight from the packed words:
    /// [`Self::matvec_int`] when the layout allows it (2, 4 or 8 bits, groups a multiple of a
    /// word), else [`Self::matvec_f32`].
    pub fn matvec(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match IntLayout::of(&self.packed) {
            Some(layout) => self.matvec_int(x, rows, layout),
            None => self.matvec_f32(x, rows),
        }
    }

    /// The decoding kernel of llama.cpp's kind: each row of `x` is quantized to int8 per block of
    /// at most 128 inputs within a group (scale `max|x| / 127`, round half away from zero), the
    /// products with the weight codes are summed exactly in integers (`vpdpbusd` on CPUs with
    /// AVX-512 VNNI, a portable loop elsewhere: the same integers either way, so results do not
    /// depend on the CPU), and per block `s·dx·(Σ xq·q − z·Σ xq)` is added in f32. Outputs
    /// are split across threads in tiles of 16 ([`secateur_models::par`]: no thread wake-up per call).
    pub fn matvec_int(&self, x: &[f32], rows: usize, layout: IntLayout) -> Vec<f32> {
        let p = &*self.packed;
        let (o, i) = (p.out_features, p.in_features);
        let threads = rayon::current_num_threads().max(1);
        let chunk = o.div_ceil(2 * threads).next_multiple_of(16).max(16);
        let xq: Vec<ActRow> = x.chunks(i).take(rows).map(|xr| ActRow::quantize(xr, &layout)).collect();
        // Task c computes outputs c·chunk.. of every row into its own `[rows, len]` region, so
        // each weight tile is read from memory once for all rows.
        let mut tiles = vec![0f32; rows * o];
        par_chunks_mut(&mut tiles, chunk * rows, &|ci, out| self.int_tile(&xq, &layout, ci * chunk, out));
        let mut y = vec![0f32; rows * o];
        for (ci, tile) in tiles.chunks(chunk * rows).enumerate() {
            let n = tile.len() / rows;
            for (r, t) in tile.chunks(n).enumerate() {
                y[r * o + ci * chunk..r * o + ci * chunk + n].copy_from_slice(t);
            }
        }
        y
    }

    /// Outputs `o0 .. o0 + n` of every row, into `out: [rows, n]` (its f32 epilogue compiled
    /// for AVX-512 when the CPU has it; the same operations in the same order either way).
    fn int_tile(&self, xq: &[ActRow], layout: &IntLayout, o0: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked above).
                return unsafe { self.int_tile_avx512(xq, layout, o0, out) };
            }
        }
        self.int_tile_generic(xq, layout, o0, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn int_tile_avx512(&self, xq: &[ActRow], layout: &IntLayout, o0: usize, out: &mut [f32]) {
        self.int_tile_generic(xq, layout, o0, out)
    }

    #[inline(always)]
    fn int_tile_generic(&self, xq: &[ActRow], layout: &IntLayout, o0: usize, out: &mut [f32]) {
        let p = &*self.packed;
        let o = p.out_features;
        let n = out.len() / xq.len();
        let mut facc = vec![0f32; out.len()];
        let mut iacc = vec![0i32; n];
        for gi in 0..layout.groups {
            facc.iter_mut().for_each(|a| *a = 0.0);
            let (w_lo, w_hi) = layout.group_words(gi);
            let zs = &self.izeros[gi * o + o0..gi * o + o0 + n];
            let mut w0 = w_lo;
            while w0 < w_hi {
                let w1 = (w0 + layout.block_words).min(w_hi);
                let b = w0 / layout.block_words;
                for (x, fr) in xq.iter().zip(facc.chunks_mut(n)) {
                    int_dot(
                        &mut iacc,
                        Words { rows: &p.qweight, tiled: &self.tiled },
                        o,
                        o0,
                        w0..w1,
                        &x.packed[w0 * layout.planes..w1 * layout.planes],
                        layout,
                    );
                    let (dx, sum) = (x.scale[b], x.sum[b]);
                    for ((f, &a), &z) in fr.iter_mut().zip(&iacc).zip(zs) {
                        *f += dx * (a - z * sum) as f32;
                    }
                }
                w0 = w1;
            }
            let ss = &self.scales[gi * o + o0..gi * o + o0 + n];
            for (yr, fr) in out.chunks_mut(n).zip(facc.chunks(n)) {
                for ((y, &f), &s) in yr.iter_mut().zip(fr).zip(ss) {
                    *y += s * f;
                }
            }
        }
    }

    /// The f32 kernel: per group, `s·(Σ x·q − z·Σ x)` with f32 activations. Outputs are split
    /// across threads.
    pub fn matvec_f32(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let p = &*self.packed;
        let (o, i) = (p.out_features, p.in_features);
        let bits = p.config.bits as usize;
        let v = 32 / bits;
        let mask = (1u32 << bits) - 1;
        let g = p.config.group(i);
        let groups = i.div_ceil(g);
        let mut y = vec![0f32; rows * o];
        let chunk = o.div_ceil(2 * rayon::current_num_threads().max(1)).next_multiple_of(16).max(16);
        y.par_chunks_mut(o).zip(x.par_chunks(i)).for_each(|(yr, xr)| {
            let sums: Vec<f32> = xr.chunks(g).map(|c| c.iter().sum()).collect();
            yr.par_chunks_mut(chunk).enumerate().for_each(|(ci, out)| {
                let o0 = ci * chunk;
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

/// How the integer kernel walks a packed matrix: `planes` byte planes per word (a plane holds
/// 4 codes in the bytes of each lane: plane `p` of a word is `(word >> bits·p) & mask` in every
/// byte, its byte `t` the code of input `planes·t + p`), activation blocks of `block_words`
/// words, groups of `group_words` words.
#[derive(Debug, Clone, Copy)]
pub struct IntLayout {
    pub bits: u32,
    pub planes: usize,
    pub words: usize,
    pub group_words: usize,
    pub block_words: usize,
    pub groups: usize,
}

impl IntLayout {
    /// The layout of `p`, or `None` where the integer kernel does not apply (a group or the
    /// input width not a whole number of words, which [`Packed::pack`] refuses too, or a number
    /// of outputs that is not a multiple of 16).
    pub fn of(p: &Packed) -> Option<Self> {
        let bits = p.config.bits;
        if !matches!(bits, 2 | 4 | 8) {
            return None;
        }
        let v = 32 / bits as usize;
        let (i, g) = (p.in_features, p.config.group(p.in_features));
        if !i.is_multiple_of(v) || !g.is_multiple_of(v) || !p.out_features.is_multiple_of(16) {
            return None;
        }
        let group_words = g / v;
        // The largest number of words that divides the group and spans at most 128 inputs.
        let block_words = (1..=group_words.min(128 / v)).rev().find(|d| group_words.is_multiple_of(*d))?;
        Some(Self { bits, planes: 8 / bits as usize, words: i / v, group_words, block_words, groups: i.div_ceil(g) })
    }

    fn group_words(&self, gi: usize) -> (usize, usize) {
        (gi * self.group_words, ((gi + 1) * self.group_words).min(self.words))
    }

    fn byte_mask(&self) -> u32 {
        let m = (1u32 << self.bits) - 1;
        m | (m << 8) | (m << 16) | (m << 24)
    }
}

/// One row of activations quantized to int8 per block, packed to match the weight planes.
struct ActRow {
    /// Per word and plane, the 4 activations of that plane's bytes (`[words * planes]`).
    packed: Vec<i32>,
    /// Per block: the scale `dx` and the sum of the quantized activations.
    scale: Vec<f32>,
    sum: Vec<i32>,
}

impl ActRow {
    fn quantize(x: &[f32], l: &IntLayout) -> Self {
        let v = 32 / l.bits as usize;
        let block = l.block_words * v;
        let mut q = vec![0i8; x.len()];
        let (mut scale, mut sum) = (Vec::new(), Vec::new());
        for (xb, qb) in x.chunks(block).zip(q.chunks_mut(block)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let dx = amax / 127.0;
            let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            let mut s = 0i32;
            for (qv, &xv) in qb.iter_mut().zip(xb) {
                *qv = (xv * inv).round().clamp(-127.0, 127.0) as i8;
                s += *qv as i32;
            }
            scale.push(dx);
            sum.push(s);
        }
        let mut packed = vec![0i32; l.words * l.planes];
        for w in 0..l.words {
            for p in 0..l.planes {
                let b = |t: usize| q[w * v + l.planes * t + p] as u8 as u32;
                packed[w * l.planes + p] = (b(0) | (b(1) << 8) | (b(2) << 16) | (b(3) << 24)) as i32;
            }
        }
        Self { packed, scale, sum }
    }
}

/// `iacc[j] = Σ_{w in words} Σ_planes dot4(plane(qweight[w·o + o0 + j]), xp[w, plane])`, exactly.
/// The packed words in the checkpoint's layout `[in / vals, out]` and in the kernel's tiles.
#[derive(Clone, Copy)]
struct Words<'a> {
    rows: &'a [u32],
    tiled: &'a [u32],
}

fn int_dot(iacc: &mut [i32], qw: Words, o: usize, o0: usize, words: std::ops::Range<usize>, xp: &[i32], l: &IntLayout) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F and AVX-512 VNNI (checked above).
            return unsafe { int_dot_vnni(iacc, qw, o, o0, words, xp, l) };
        }
    }
    int_dot_generic(iacc, qw.rows, o, o0, words, xp, l, 0)
}

/// The portable integer dot products, for the outputs from `from` on (of the tile).
#[allow(clippy::too_many_arguments)]
fn int_dot_generic(
    iacc: &mut [i32],
    qweight: &[u32],
    o: usize,
    o0: usize,
    words: std::ops::Range<usize>,
    xp: &[i32],
    l: &IntLayout,
    from: usize,
) {
    let mask = l.byte_mask();
    let w0 = words.start;
    for (j, a) in iacc.iter_mut().enumerate().skip(from) {
        let mut s = 0i32;
        for w in words.clone() {
            let word = qweight[w * o + o0 + j];
            for p in 0..l.planes {
                let plane = (word >> (l.bits as usize * p)) & mask;
                let xv = xp[(w - w0) * l.planes + p] as u32;
                for t in 0..4 {
                    s += ((plane >> (8 * t)) & 0xff) as i32 * ((xv >> (8 * t)) & 0xff) as u8 as i8 as i32;
                }
            }
        }
        *a = s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn int_dot_vnni(iacc: &mut [i32], qw: Words, o: usize, o0: usize, words: std::ops::Range<usize>, xp: &[i32], l: &IntLayout) {
    use std::arch::x86_64::*;
    // The 16 words of outputs `o0 + j ..` at word row `w`, from the tiles (o0 and j are multiples of 16).
    let stride = 16 * l.words;
    let at = |w: usize, j: usize| -> &[u32] {
        let t = (o0 + j) / 16;
        &qw.tiled[t * stride + w * 16..t * stride + w * 16 + 16]
    };
    let n = iacc.len();
    let mask = _mm512_set1_epi32(l.byte_mask() as i32);
    let w0 = words.start;
    let mut j = 0;
    if l.bits == 4 {
        // The common case, unrolled: the two nibble planes with immediate shifts, and one
        // accumulator per plane and register so that the multiply-adds do not wait on each other.
        let low = _mm512_set1_epi32(0x0f0f_0f0f);
        while j + 64 <= n {
            let mut even = [_mm512_setzero_si512(); 4];
            let mut odd = [_mm512_setzero_si512(); 4];
            for w in words.clone() {
                let (xe, xo) = (_mm512_set1_epi32(xp[(w - w0) * 2]), _mm512_set1_epi32(xp[(w - w0) * 2 + 1]));
                for r in 0..4 {
                    // SAFETY: `at` returns 16 u32.
                    let wv = unsafe { _mm512_loadu_si512(at(w, j + 16 * r).as_ptr() as *const _) };
                    even[r] = _mm512_dpbusd_epi32(even[r], _mm512_and_si512(wv, low), xe);
                    odd[r] = _mm512_dpbusd_epi32(odd[r], _mm512_and_si512(_mm512_srli_epi32::<4>(wv), low), xo);
                }
            }
            for r in 0..4 {
                // SAFETY: `iacc[j + 16r ..][..16]` is in bounds (j + 64 <= n).
                unsafe { _mm512_storeu_si512(iacc[j + 16 * r..].as_mut_ptr() as *mut _, _mm512_add_epi32(even[r], odd[r])) };
            }
            j += 64;
        }
    }
    // Tiles of 64 outputs (4 registers), then of 16; the rest (fewer than 16) portably.
    while j + 64 <= n {
        let mut acc = [_mm512_setzero_si512(); 4];
        for w in words.clone() {
            // SAFETY: `at` returns 16 u32.
            let wv: [__m512i; 4] = std::array::from_fn(|r| unsafe { _mm512_loadu_si512(at(w, j + 16 * r).as_ptr() as *const _) });
            for p in 0..l.planes {
                let xv = _mm512_set1_epi32(xp[(w - w0) * l.planes + p]);
                let shift = _mm512_set1_epi32((l.bits as usize * p) as i32);
                for r in 0..4 {
                    let plane = _mm512_and_si512(_mm512_srlv_epi32(wv[r], shift), mask);
                    acc[r] = _mm512_dpbusd_epi32(acc[r], plane, xv);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: `iacc[j + 16r ..][..16]` is in bounds (j + 64 <= n).
            unsafe { _mm512_storeu_si512(iacc[j + 16 * r..].as_mut_ptr() as *mut _, *a) };
        }
        j += 64;
    }
    while j + 16 <= n {
        let mut acc = _mm512_setzero_si512();
        for w in words.clone() {
            // SAFETY: 16 u32 in bounds, as the slice shows.
            let wv = unsafe { _mm512_loadu_si512(at(w, j).as_ptr() as *const _) };
            for p in 0..l.planes {
                let xv = _mm512_set1_epi32(xp[(w - w0) * l.planes + p]);
                let plane = _mm512_and_si512(_mm512_srlv_epi32(wv, _mm512_set1_epi32((l.bits as usize * p) as i32)), mask);
                acc = _mm512_dpbusd_epi32(acc, plane, xv);
            }
        }
        // SAFETY: `iacc[j..j + 16]` is in bounds.
        unsafe { _mm512_storeu_si512(iacc[j..].as_mut_ptr() as *mut _, acc) };
        j += 16;
    }
    int_dot_generic(iacc, qw.rows, o, o0, words, xp, l, j);
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
            let mut xv: Vec<f32> = x.into_data().convert::<f32>().to_vec().expect("f32 input");
            if let Some(perm) = &self.perm {
                xv = xv.chunks(i).flat_map(|r| perm.iter().map(|&c| r[c])).collect();
            }
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

    fn reference(x: &[f32], rows: usize, deq: &[f32], o: usize, i: usize) -> Vec<f32> {
        (0..rows)
            .flat_map(|r| (0..o).map(move |c| (0..i).map(|j| x[r * i + j] as f64 * deq[c * i + j] as f64).sum::<f64>() as f32))
            .collect()
    }

    fn weights(o: usize, i: usize) -> Vec<f32> {
        (0..o * i).map(|k| ((k * 7919 % 997) as f32 / 498.5) - 1.0).collect()
    }

    const CONFIGS: [QuantConfig; 6] = [
        QuantConfig { bits: 4, group_size: Some(128) },
        QuantConfig { bits: 4, group_size: None },
        QuantConfig { bits: 8, group_size: Some(64) },
        QuantConfig { bits: 4, group_size: Some(48) },
        QuantConfig { bits: 2, group_size: Some(32) },
        QuantConfig { bits: 8, group_size: None },
    ];

    #[test]
    fn f32_kernel_and_dequantizing_matmul_agree_with_the_dequantized_weight() {
        let (o, i) = (208, 288);
        let w = weights(o, i);
        for cfg in CONFIGS {
            let q = quantize(&w, o, i, cfg).unwrap();
            let deq = q.dequantize();
            let lin = QuantLinear::<B>::new(Packed::pack(&q).unwrap(), None);
            for rows in [1usize, 3, 40] {
                let x: Vec<f32> = (0..rows * i).map(|k| ((k * 31 % 17) as f32 - 8.0) / 8.0).collect();
                let want = reference(&x, rows, &deq, o, i);
                let got = if rows > KERNEL_MAX_ROWS {
                    let xt = Tensor::<B, 3>::from_data(TensorData::new(x, [1, rows, i]), &Default::default());
                    lin.forward(xt).into_data().to_vec().unwrap()
                } else {
                    lin.matvec_f32(&x, rows)
                };
                let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 2e-3, "{cfg:?}, {rows} rows: {worst}");
            }
        }
    }

    /// The integer kernel against an f64 evaluation of its own definition (activations
    /// quantized per block independently here), and within 1% of the f32 result.
    #[test]
    fn integer_kernel_computes_its_definition() {
        let (o, i) = (208, 288);
        let w = weights(o, i);
        let mut used = 0;
        for cfg in CONFIGS {
            let q = quantize(&w, o, i, cfg).unwrap();
            let deq = q.dequantize();
            let packed = Packed::pack(&q).unwrap();
            let Some(layout) = IntLayout::of(&packed) else { continue };
            used += 1;
            let block = layout.block_words * (32 / cfg.bits as usize);
            let lin = QuantLinear::<B>::new(packed, None);
            let rows = 5;
            let x: Vec<f32> = (0..rows * i).map(|k| (((k * 37) % 101) as f32 - 50.0) / 17.0).collect();
            // x as the kernel sees it: round(x / dx) * dx per block, dx = max|x| / 127.
            let xq: Vec<f32> = x
                .chunks(i)
                .flat_map(|row| {
                    row.chunks(block).flat_map(|b| {
                        let dx = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                        b.iter().map(move |v| if dx > 0.0 { (v / dx).round() * dx } else { 0.0 }).collect::<Vec<_>>()
                    })
                })
                .collect();
            let want = reference(&xq, rows, &deq, o, i);
            let got = lin.matvec_int(&x, rows, layout);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5 * scale, "{cfg:?}: {worst} of {scale}");
            // The cost of the int8 activations against f32 ones.
            let exact = reference(&x, rows, &deq, o, i);
            let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let diff: Vec<f32> = exact.iter().zip(&got).map(|(a, b)| a - b).collect();
            assert!(norm(&diff) < 0.01 * norm(&exact), "{cfg:?}: relative error {}", norm(&diff) / norm(&exact));
        }
        // Every packable layout (groups a whole number of words) has an integer layout.
        assert_eq!(used, CONFIGS.len());
    }

    /// The VNNI and portable integer paths give the same integers.
    #[test]
    fn integer_paths_agree_exactly() {
        let (o, i) = (208, 256);
        let w = weights(o, i);
        for cfg in CONFIGS.into_iter().take(3) {
            let lin = QuantLinear::<B>::new(Packed::pack(&quantize(&w, o, i, cfg).unwrap()).unwrap(), None);
            let packed = &*lin.packed;
            let layout = IntLayout::of(packed).unwrap();
            let x: Vec<f32> = (0..i).map(|k| (((k * 53) % 97) as f32 - 48.0) / 9.0).collect();
            let xq = ActRow::quantize(&x, &layout);
            let words = 0..layout.block_words;
            let xp = &xq.packed[..layout.block_words * layout.planes];
            for o0 in [0, 16] {
                let n = o - o0 - 16 + 3; // 64-wide tiles, 16-wide tiles and a portable rest
                let (mut a, mut b) = (vec![0i32; n], vec![0i32; n]);
                int_dot(&mut a, Words { rows: &packed.qweight, tiled: &lin.tiled }, o, o0, words.clone(), xp, &layout);
                int_dot_generic(&mut b, &packed.qweight, o, o0, words.clone(), xp, &layout, 0);
                assert_eq!(a, b, "{cfg:?} at {o0}");
            }
        }
    }
}
