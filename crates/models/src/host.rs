//! Inference kernels on host memory for the CPU backend: causal attention as blocked matrix
//! multiplies with the mask, the softmax and a vectorised `exp` fused in between, on all cores.
//!
//! burn's own CPU attention scores every key of one head at a time on one core, and composing it
//! from tensor ops materialises the `[heads, queries, keys]` scores and the additive mask several
//! times; at a 2,048-token window that is most of a forward pass. These kernels run only where
//! they can ([`enabled`]: the CPU backend, no autodiff); training and the GPU keep burn's ops.

use burn::prelude::*;

use crate::nn::MASKED;

/// Whether the host kernels serve backend `B` on `device`: burn's CPU backend (`Flex`) outside
/// autodiff.
pub fn enabled<B: Backend>(device: &B::Device) -> bool {
    !B::ad_enabled(device) && std::any::type_name::<B>().starts_with("burn_flex::")
}

/// What masks the attention of one forward pass, kept on the host: the same rules as
/// [`crate::nn::attention_bias`] (padding keys, causality by key slot, the sliding window,
/// ALiBi), applied while scoring instead of as a `[batch, heads, seq, keys]` tensor.
#[derive(Debug, Clone)]
pub struct HostMask {
    /// Per batch row and key slot: 0 for a real token, [`MASKED`] for padding.
    pub key_bias: Vec<Vec<f32>>,
    /// Key slots before the new queries (the cache).
    pub past: usize,
    pub sliding_window: Option<usize>,
    /// ALiBi slopes per head (empty without ALiBi).
    pub alibi: Vec<f64>,
}

impl HostMask {
    /// The mask of queries that are the last `seq` of the key slots of `key_mask`.
    pub fn new(key_mask: &[Vec<bool>], seq: usize, sliding_window: Option<usize>, alibi: &[f64]) -> Self {
        let keys = key_mask.first().map_or(0, |m| m.len());
        Self {
            key_bias: key_mask.iter().map(|row| row.iter().map(|&real| if real { 0.0 } else { MASKED }).collect()).collect(),
            past: keys - seq,
            sliding_window,
            alibi: alibi.to_vec(),
        }
    }
}

/// Queries per task of [`attention`].
const BLOCK: usize = 64;

/// `e^x` for `f32`, Cephes' `expf` (range reduction by ln 2, degree-5 polynomial; about 1 ulp),
/// written branch-free so that loops over it vectorise; inputs below -87.3 give exactly 0.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let xc = x.clamp(-87.336_55, 88.376_26);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_55 { 0.0 } else { y * scale }
}

/// Softmax of `row[lo..hi]` plus `bias[lo..hi]` in place; the rest of `row` becomes 0.
#[inline(always)]
fn softmax_span(row: &mut [f32], bias: &[f32], lo: usize, hi: usize) {
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
    let span = &mut row[lo..hi];
    for (s, b) in span.iter_mut().zip(&bias[lo..hi]) {
        *s += *b;
    }
    // Reductions in 16 lanes (a float reduction in one accumulator does not vectorise).
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = span.chunks_exact(L);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = chunks.remainder().iter().fold(lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), |m, &v| m.max(v));
    for s in span.iter_mut() {
        *s = exp(*s - max);
    }
    let mut lanes = [0f32; L];
    let mut chunks = span.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v;
        }
    }
    let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for s in span.iter_mut() {
        *s *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn softmax_span_avx512(row: &mut [f32], bias: &[f32], lo: usize, hi: usize) {
    softmax_span(row, bias, lo, hi)
}

fn softmax_dispatch(row: &mut [f32], bias: &[f32], lo: usize, hi: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected at run time.
        return unsafe { softmax_span_avx512(row, bias, lo, hi) };
    }
    softmax_span(row, bias, lo, hi)
}

/// `dst[m x n] = beta · lhs[m x k] · rhs[k x n]`, each with its own strides (row, column), on
/// the calling thread.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
) {
    // SAFETY: the caller guarantees the strided extents lie in live, disjoint-where-written memory.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Causal attention on host slices. `q: [b, s, h, d]` (RoPE applied), `k, v: [b, kvh, keys, d]`
/// with the queries' own keys last; query head `g·rep + r` reads key head `g` (`rep = h / kvh`).
/// Returns `[b, s, h, d]`. Tasks are blocks of [`BLOCK`] queries of one key head, run on all
/// cores ([`crate::par`]), longest first; each scores its block against the keys it can see only.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &HostMask,
    b: usize,
    s: usize,
    h: usize,
    kvh: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let keys = mask.past + s;
    assert_eq!(q.len(), b * s * h * d, "query shape");
    assert_eq!(k.len(), b * kvh * keys * d, "key shape");
    assert_eq!(v.len(), k.len(), "value shape");
    let rep = h / kvh;
    let blocks = s.div_ceil(BLOCK);
    let mut out = vec![0f32; b * s * h * d];
    // ALiBi bias by distance, per head: alibi[head][q - j] as attention_bias computes it.
    let alibi: Vec<Vec<f32>> = mask.alibi.iter().map(|&slope| (0..keys).map(|dist| (slope * -(dist as f64)) as f32).collect()).collect();
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let tasks = b * kvh * blocks;
    crate::par::par_for(tasks, &|t| {
        // Longest first: the last query blocks see the most keys.
        let t = tasks - 1 - t;
        let blk = t % blocks;
        let g = (t / blocks) % kvh;
        let bi = t / (blocks * kvh);
        let t0 = blk * BLOCK;
        let len = BLOCK.min(s - t0);
        let seen = mask.past + t0 + len;
        let kb = &k[(bi * kvh + g) * keys * d..];
        let vb = &v[(bi * kvh + g) * keys * d..];
        let key_bias = &mask.key_bias[bi];
        let mut scores = vec![0f32; len * seen];
        let mut bias_row = vec![0f32; seen];
        for r in 0..rep {
            let head = g * rep + r;
            let q0 = ((bi * s + t0) * h + head) * d;
            // SAFETY: `len` rows of stride h·d from q0 lie in q; `seen` keys of `d` in kb; the
            // scores buffer is [len, seen].
            unsafe { matmul(len, seen, d, scores.as_mut_ptr(), seen, q.as_ptr().add(q0), h * d, 1, kb.as_ptr(), 1, d, scale) };
            for (i, row) in scores.chunks_mut(seen).enumerate() {
                let qpos = mask.past + t0 + i;
                let hi = qpos + 1;
                let lo = mask.sliding_window.map_or(0, |w| hi.saturating_sub(w));
                let bias: &[f32] = match alibi.get(head) {
                    Some(tab) => {
                        for (j, bj) in bias_row[lo..hi].iter_mut().enumerate() {
                            *bj = key_bias[lo + j] + tab[qpos - (lo + j)];
                        }
                        &bias_row
                    }
                    None => key_bias,
                };
                softmax_dispatch(row, bias, lo, hi);
            }
            // SAFETY: rows (bi, t0..t0+len, head) of `out` belong to this task alone.
            unsafe { matmul(len, d, seen, out_ptr.get().add(q0), h * d, scores.as_ptr(), seen, 1, vb.as_ptr(), d, 1, 1.0) };
        }
    });
    out
}

struct SyncPtr(*mut f32);
// SAFETY: the tasks of one call write disjoint rows.
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}
impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `silu(g) · u` element-wise (`silu(x) = x / (1 + e^-x)`), on all cores.
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "gate and up shapes");
    let mut out = vec![0f32; g.len()];
    const CHUNK: usize = 1 << 15;
    crate::par::par_chunks_mut(&mut out, CHUNK, &|c, o| {
        let at = c * CHUNK;
        silu_mul_dispatch(&g[at..at + o.len()], &u[at..at + o.len()], o);
    });
    out
}

#[inline(always)]
fn silu_mul_span(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_span(g, u, out)
}

fn silu_mul_dispatch(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected at run time.
        return unsafe { silu_mul_avx512(g, u, out) };
    }
    silu_mul_span(g, u, out)
}

/// Whether this CPU has the AVX-512 subsets the vectorised host loops are compiled for.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// For each row of `logits: [rows, vocab]`: the log-probability of `targets[row]` under the
/// row's softmax and the row's argmax (the first maximum), on all cores, without materialising
/// the log-softmax.
pub fn log_softmax_pick(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<(f32, u32)> {
    assert_eq!(logits.len(), vocab * targets.len(), "logits shape");
    let mut out = vec![(0f32, 0u32); targets.len()];
    let at = SyncPtr(out.as_mut_ptr() as *mut f32);
    crate::par::par_for(targets.len(), &|r| {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let (max, sum) = max_sum_exp_dispatch(row);
        let arg = row.iter().position(|&v| v == max).unwrap_or(0) as u32;
        let logp = (row[targets[r] as usize] as f64 - max as f64 - (sum as f64).ln()) as f32;
        // SAFETY: row r's slot belongs to this task alone.
        unsafe { *(at.get() as *mut (f32, u32)).add(r) = (logp, arg) };
    });
    out
}

/// The maximum of `row` and `Σ e^(x - max)`, in 16 lanes.
#[inline(always)]
fn max_sum_exp(row: &[f32]) -> (f32, f32) {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = chunks.remainder().iter().fold(lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), |m, &v| m.max(v));
    let mut lanes = [0f32; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += exp(v - max);
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| exp(v - max)).sum::<f32>();
    (max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn max_sum_exp_avx512(row: &[f32]) -> (f32, f32) {
    max_sum_exp(row)
}

fn max_sum_exp_dispatch(row: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were detected at run time.
        return unsafe { max_sum_exp_avx512(row) };
    }
    max_sum_exp(row)
}

/// Tunes glibc's allocator for tensor work (call once at program start; the `secateur` command
/// does): blocks up to 32 MB are reused from the heap instead of being mapped fresh per tensor
/// and returned at every free (page faults and page clearing were a tenth of a forward pass),
/// and freed memory is kept for reuse. A no-op elsewhere than Linux with glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; values are in glibc's accepted ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A tensor's values as `f32` on the host.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 tensor data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_pick_equals_the_definition() {
        let vocab = 1000;
        let logits: Vec<f32> = (0..3 * vocab).map(|i| ((i * 7919) % 1013) as f32 / 50.0 - 10.0).collect();
        let targets = [5u32, 999, 0];
        let got = log_softmax_pick(&logits, vocab, &targets);
        for (r, &(logp, arg)) in got.iter().enumerate() {
            let row: Vec<f64> = logits[r * vocab..(r + 1) * vocab].iter().map(|&v| v as f64).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            assert!((logp as f64 - (row[targets[r] as usize] - lse)).abs() < 1e-5, "row {r}");
            assert_eq!(arg as usize, row.iter().position(|&v| v == max).unwrap());
        }
    }

    #[test]
    fn silu_mul_equals_the_definition() {
        let g: Vec<f32> = (0..70_001).map(|i| (i as f32 - 35_000.0) / 300.0).collect();
        let u: Vec<f32> = g.iter().map(|v| 1.5 - v / 7.0).collect();
        for ((o, &g), &u) in silu_mul(&g, &u).iter().zip(&g).zip(&u) {
            let want = (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32;
            assert!((o - want).abs() <= 1e-6 * want.abs().max(1.0), "silu({g}) * {u}: {o} vs {want}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_flushes_below_range() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * (i as f32 / 200_000.0);
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }
}
