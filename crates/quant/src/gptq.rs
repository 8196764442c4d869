//! GPTQ (Frantar et al., 2022): quantization of one weight matrix with second-order error
//! feedback, as the reference `GPTQ.fasterquant` does it.
//!
//! With the Hessian `H = 2/N · Σ x xᵀ` of the layer's inputs over `N` calibration tokens:
//!
//! 1. dead inputs (`H_ii = 0`) get `H_ii = 1` and their weights are zeroed;
//! 2. with act-order, the columns are taken by decreasing `H_ii` (a stable sort);
//! 3. `H += damp · mean(diag H) · I`, and `U` is the upper Cholesky factor of `H⁻¹`;
//! 4. columns are quantized in blocks of `block_size`: column `j` with its group's scale and
//!    zero point, error `e = (w_j - q_j) / U_jj`, the rest of the block updated at once
//!    (`W[:, j+1..] -= e · U[j, j+1..]`), the columns after the block lazily with all of the
//!    block's errors (one matrix product).
//!
//! Groups (`group_size` columns in quantization order) fit their scale and zero point when the
//! first column of the group comes up, on the weights as they stand at the start of the current
//! block (the reference reads the outer matrix, which the in-block updates do not reach yet), with
//! the same convention as [`crate::rtn`] (GPTQ's zero-inclusive range, f16 scales). With
//! `static_groups` every group is fit on the original weights before any update, and groups stay
//! in the original column order even with act-order. Per-channel quantization (no group size)
//! fits each row once on the original weights, as the reference does.
//!
//! Sparse bases: a weight that is exactly zero in the input stays exactly zero. Its code is the
//! zero point (GPTQ's ranges always hold 0), and the error of dropping its updated value is fed
//! forward like any other (SparseGPT's joint sparsification and quantization); group ranges are
//! fit with the pruned weights at 0.
//!
//! Numerics: the Hessian is accumulated from f32 products into f64; the factorisation and the
//! whole column loop run in f64 (the reference runs them in f32; f64 removes the dependence on
//! summation order, so that codes agree with an f64 reference except at exact ties). The upper
//! factor of `H⁻¹` is computed without forming `H⁻¹`: with `R` the reversal of the columns,
//! `R·H·R = L·Lᵀ` gives `H = V·Vᵀ` with `V = R·L·R` upper, hence `U = V⁻¹`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::QuantError;
use crate::rtn::{QuantConfig, Quantized};

/// GPTQ's settings (the defaults are the reference's: damp 0.01, blocks of 128, no act-order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GptqConfig {
    pub quant: QuantConfig,
    /// Dampening as a fraction of the mean diagonal of `H` (`damp_percent`).
    pub damp: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Quantize columns by decreasing `H_ii` (`desc_act`).
    pub act_order: bool,
    /// Fit every group on the original weights first (`static_groups`).
    pub static_groups: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        Self { quant: QuantConfig::default(), damp: 0.01, block_size: 128, act_order: false, static_groups: false }
    }
}

impl GptqConfig {
    /// Checks the settings against a row width.
    pub fn validate(&self, in_features: usize) -> Result<(), QuantError> {
        self.quant.validate(in_features)?;
        if !(self.damp.is_finite() && self.damp > 0.0 && self.damp <= 1.0) {
            return Err(QuantError::Config(format!("damp {}: expected a fraction in (0, 1]", self.damp)));
        }
        if self.block_size == 0 {
            return Err(QuantError::Config("the GPTQ block size must be positive".into()));
        }
        Ok(())
    }
}

/// The Hessian of one layer input, accumulated over calibration tokens.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Input features.
    pub n: usize,
    /// `Σ x xᵀ`, `[n, n]` row-major, in its blocks on and above the diagonal only (the rest
    /// stays zero); [`Self::matrix`] is the whole symmetric matrix.
    pub sum: Vec<f64>,
    /// Tokens accumulated (padding excluded).
    pub tokens: u64,
}

/// Rows and columns per block of [`Hessian::add_inputs`]'s products.
const GRAM_BLOCK: usize = 128;

impl Hessian {
    pub fn new(n: usize) -> Self {
        Self { n, sum: vec![0.0; n * n], tokens: 0 }
    }

    /// Adds the products of a batch of inputs `x` (`[rows, n]` row-major; rows of padding must be
    /// zero) holding `tokens` real tokens: `XᵀX` in f32 (each entry one f32 dot product over the
    /// batch's rows, as a matrix multiply computes it), added into the f64 sum. Only the blocks on
    /// and above the diagonal are computed (the Hessian is symmetric: half the products of a
    /// full `XᵀX`), in parallel; [`Self::matrix`] mirrors them.
    pub fn add_inputs(&mut self, x: &[f32], tokens: u64) {
        let n = self.n;
        assert_eq!(x.len() % n.max(1), 0, "inputs are [rows, {n}]");
        let rows = x.len() / n.max(1);
        let starts: Vec<usize> = (0..n).step_by(GRAM_BLOCK).collect();
        let pairs: Vec<(usize, usize)> = (0..starts.len()).flat_map(|i| (i..starts.len()).map(move |j| (i, j))).collect();
        let blocks: Vec<(usize, usize, Vec<f32>)> = pairs
            .into_par_iter()
            .map(|(bi, bj)| {
                let (i0, j0) = (starts[bi], starts[bj]);
                let (ni, nj) = (GRAM_BLOCK.min(n - i0), GRAM_BLOCK.min(n - j0));
                let mut c = vec![0.0f32; ni * nj];
                // SAFETY: `c` is [ni, nj] row-major; the left operand is Xᵀ[i0.., :] (element (a, t)
                // at x[t·n + i0 + a]), the right one X[:, j0..] (element (t, b) at x[t·n + j0 + b]),
                // both inside `x` ([rows, n]).
                unsafe {
                    gemm::gemm(
                        ni,
                        nj,
                        rows,
                        c.as_mut_ptr(),
                        1,
                        nj as isize,
                        false,
                        x.as_ptr().add(i0),
                        n as isize,
                        1,
                        x.as_ptr().add(j0),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                (i0, j0, c)
            })
            .collect();
        for (i0, j0, c) in blocks {
            let nj = c.len() / GRAM_BLOCK.min(n - i0);
            for (a, row) in c.chunks(nj).enumerate() {
                let dst = &mut self.sum[(i0 + a) * n + j0..(i0 + a) * n + j0 + nj];
                dst.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
        }
        self.tokens += tokens;
    }

    /// `H = 2/N · Σ x xᵀ`.
    pub fn matrix(&self) -> Vec<f64> {
        let f = 2.0 / self.tokens.max(1) as f64;
        let mut h: Vec<f64> = self.sum.iter().map(|v| v * f).collect();
        // Below-diagonal blocks were never accumulated: mirror the upper triangle.
        let n = self.n;
        for r in 0..n {
            for c in 0..r {
                h[r * n + c] = h[c * n + r];
            }
        }
        h
    }
}

/// A matrix quantized by GPTQ.
#[derive(Debug, Clone)]
pub struct GptqQuantized {
    /// The codes, scales and zero points, in storage order: column `j` of `quantized` is input
    /// `perm[j]` of the layer when `perm` is set (act-order), else input `j`.
    pub quantized: Quantized,
    /// The act-order permutation, when the groups follow it (act-order without static groups).
    pub perm: Option<Vec<usize>>,
    /// Inputs that never saw a non-zero activation.
    pub dead: usize,
    /// GPTQ's own loss, `Σ (w - q)² / U_jj² / 2`.
    pub loss: f64,
}

impl GptqQuantized {
    /// The dequantized weight `[out, in]` in the layer's input order.
    pub fn dequantize(&self) -> Vec<f32> {
        let d = self.quantized.dequantize();
        match &self.perm {
            None => d,
            Some(perm) => unpermute_columns(&d, self.quantized.in_features, perm),
        }
    }
}

/// `out[:, perm[j]] = m[:, j]` for a row-major matrix of `n` columns.
pub fn unpermute_columns<T: Copy + Default>(m: &[T], n: usize, perm: &[usize]) -> Vec<T> {
    let mut out = vec![T::default(); m.len()];
    for (o, r) in out.chunks_mut(n).zip(m.chunks(n)) {
        for (j, &p) in perm.iter().enumerate() {
            o[p] = r[j];
        }
    }
    out
}

/// Scale and zero point of one group in f64 (the convention of [`crate::rtn::group_params`]).
fn group_params(values: impl Iterator<Item = f64>, maxq: u32) -> (f64, u8) {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (lo, hi) = if lo == 0.0 && hi == 0.0 { (-1.0, 1.0) } else { (lo, hi) };
    let scale = half::f16::from_f64((hi - lo) / maxq as f64).to_f64();
    let zero = (-lo / scale).round_ties_even().clamp(0.0, maxq as f64);
    (scale, zero as u8)
}

fn quantize_value(w: f64, scale: f64, zero: u8, maxq: u32) -> u8 {
    ((w / scale).round_ties_even() + zero as f64).clamp(0.0, maxq as f64) as u8
}

/// Sum of products with 8 independent accumulators (vectorises).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Columns per panel of the blocked factorisations.
const FACTOR_BLOCK: usize = 64;
/// Rows per parallel task of their matrix products.
const FACTOR_ROWS: usize = 128;

/// `C[m, k] (stride ldc) = alpha·C + beta·A·B` for row-major `A` (`[m, p]`, rows `lda` apart)
/// and `B` given by its element strides; rows of `C` split between cores.
///
/// # Safety
/// Every extent must lie inside its allocation; `C` must not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows_f64(
    m: usize,
    k: usize,
    p: usize,
    c: *mut f64,
    ldc: usize,
    read_c: bool,
    a: *const f64,
    lda: usize,
    b: *const f64,
    b_cs: isize,
    b_rs: isize,
    beta: f64,
) {
    if m == 0 || k == 0 || p == 0 {
        return;
    }
    let (c, a, b) = (c as usize, a as usize, b as usize);
    (0..m.div_ceil(FACTOR_ROWS)).into_par_iter().for_each(|chunk| {
        let r0 = chunk * FACTOR_ROWS;
        let rows = FACTOR_ROWS.min(m - r0);
        // SAFETY: the caller's extents; chunks of rows of `C` are disjoint.
        unsafe {
            gemm::gemm(
                rows,
                k,
                p,
                (c as *mut f64).add(r0 * ldc),
                1,
                ldc as isize,
                read_c,
                (a as *const f64).add(r0 * lda),
                1,
                lda as isize,
                b as *const f64,
                b_cs,
                b_rs,
                1.0,
                beta,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// The lower Cholesky factor of a symmetric positive-definite `[n, n]` matrix (in place,
/// blocked: panels of [`FACTOR_BLOCK`] columns, each first updated by one matrix product with
/// the columns before it); `Err(j)` at the first pivot that is not positive.
fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n);
    for k0 in (0..n).step_by(FACTOR_BLOCK) {
        let kb = FACTOR_BLOCK.min(n - k0);
        // A[k0.., k0..k0+kb] -= A[k0.., ..k0] · A[k0..k0+kb, ..k0]ᵀ
        let base = a.as_mut_ptr();
        // SAFETY: all three extents lie inside `a`; the destination's columns (k0..k0+kb) and
        // the sources' columns (..k0) do not overlap.
        unsafe {
            gemm_rows_f64(n - k0, kb, k0, base.add(k0 * n + k0), n, true, base.add(k0 * n), n, base.add(k0 * n), n as isize, 1, -1.0);
        }
        for j in k0..k0 + kb {
            let (head, tail) = a.split_at_mut((j + 1) * n);
            let row_j = &mut head[j * n..];
            let d = row_j[j] - dot(&row_j[k0..j], &row_j[k0..j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(j);
            }
            let d = d.sqrt();
            row_j[j] = d;
            let row_j = &*row_j;
            let work = |row_i: &mut [f64]| row_i[j] = (row_i[j] - dot(&row_i[k0..j], &row_j[k0..j])) / d;
            if (n - j) * (j - k0) > 1 << 14 {
                tail.par_chunks_mut(n).for_each(work);
            } else {
                tail.chunks_mut(n).for_each(work);
            }
        }
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// `L⁻¹` of a lower-triangular `[n, n]` matrix as strips of [`FACTOR_BLOCK`] columns: strip `s`
/// holds rows `s·B..n` of columns `s·B..s·B+B` (`[n - s·B, B']` row-major). Each strip is an
/// independent forward substitution, one matrix product per block of rows.
fn lower_inverse_strips(l: &[f64], n: usize) -> Vec<Vec<f64>> {
    (0..n.div_ceil(FACTOR_BLOCK))
        .into_par_iter()
        .map(|s| {
            let j0 = s * FACTOR_BLOCK;
            let jb = FACTOR_BLOCK.min(n - j0);
            let mut strip = vec![0.0f64; (n - j0) * jb];
            for i0 in (j0..n).step_by(FACTOR_BLOCK) {
                let ib = FACTOR_BLOCK.min(n - i0);
                let base = strip.as_mut_ptr();
                // strip[I] = -L[I, j0..i0] · strip[j0..i0]
                // SAFETY: the destination (rows i0-j0.., of `strip`) and the right operand
                // (rows ..i0-j0) are disjoint; the left operand lies inside `l`.
                unsafe {
                    if i0 > j0 {
                        gemm::gemm(
                            ib,
                            jb,
                            i0 - j0,
                            base.add((i0 - j0) * jb),
                            1,
                            jb as isize,
                            false,
                            l.as_ptr().add(i0 * n + j0),
                            1,
                            n as isize,
                            base,
                            1,
                            jb as isize,
                            0.0,
                            -1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                for i in i0..i0 + ib {
                    let (done, rest) = strip.split_at_mut((i - j0) * jb);
                    let row = &mut rest[..jb];
                    if i < j0 + jb {
                        row[i - j0] += 1.0;
                    }
                    for t in i0.max(j0)..i {
                        let lt = l[i * n + t];
                        let prev = &done[(t - j0) * jb..(t - j0 + 1) * jb];
                        row.iter_mut().zip(prev).for_each(|(x, &p)| *x -= lt * p);
                    }
                    let d = l[i * n + i];
                    row.iter_mut().for_each(|x| *x /= d);
                }
            }
            strip
        })
        .collect()
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ·U`), `Err(j)` if `H` is not positive
/// definite (pivot `j` in the reversed order).
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    // R·H·R = L·Lᵀ with R the reversal; then H⁻¹ = (R·L⁻¹·R)ᵀ·(R·L⁻¹·R).
    let mut l: Vec<f64> = (0..n * n).map(|k| h[(n - 1 - k / n) * n + (n - 1 - k % n)]).collect();
    cholesky_lower(&mut l, n).map_err(|j| n - 1 - j)?;
    // U = R·M·R with M = L⁻¹: U[n-1-i][n-1-j] = M[i][j].
    let mut u = vec![0.0f64; n * n];
    for (s, strip) in lower_inverse_strips(&l, n).into_iter().enumerate() {
        let j0 = s * FACTOR_BLOCK;
        let jb = FACTOR_BLOCK.min(n - j0);
        for (r, row) in strip.chunks(jb).enumerate() {
            let i = j0 + r;
            for (c, &v) in row.iter().enumerate().take((i - j0 + 1).min(jb)) {
                u[(n - 1 - i) * n + (n - 1 - (j0 + c))] = v;
            }
        }
    }
    Ok(u)
}

/// Rows handled together (the lazy update is a matrix product over them).
const ROW_CHUNK: usize = 16;

/// What GPTQ derives from a Hessian alone (shared by the projections that read one input):
/// the dead inputs, the act-order permutation and the upper Cholesky factor of the dampened,
/// permuted `H⁻¹`.
#[derive(Debug, Clone)]
pub struct Factored {
    pub n: usize,
    /// Inputs with `H_ii = 0`.
    pub dead: Vec<usize>,
    /// Quantization order (act-order), else `None`.
    pub perm: Option<Vec<usize>>,
    /// `[n, n]`, in quantization order.
    pub u: Vec<f64>,
}

impl Factored {
    /// Factors `h` (`[n, n]`, as [`Hessian::matrix`] gives it) with `cfg`'s dampening and
    /// act-order. `site` names the layer in errors.
    pub fn new(h: &[f64], n: usize, cfg: &GptqConfig, site: &str) -> Result<Self, QuantError> {
        if h.len() != n * n {
            return Err(QuantError::Config(format!("{site}: a {}-entry Hessian for {n} inputs", h.len())));
        }
        if let Some(k) = h.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::Gptq {
                site: site.into(),
                reason: format!("the Hessian holds a non-finite value at ({}, {})", k / n, k % n),
            });
        }
        let mut h = h.to_vec();
        let dead: Vec<usize> = (0..n).filter(|&i| h[i * n + i] == 0.0).collect();
        for &i in &dead {
            h[i * n + i] = 1.0;
        }
        let perm: Option<Vec<usize>> = cfg.act_order.then(|| {
            let mut p: Vec<usize> = (0..n).collect();
            p.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
            p
        });
        if let Some(p) = &perm {
            h = (0..n * n).map(|k| h[p[k / n] * n + p[k % n]]).collect();
        }
        let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        let damp = cfg.damp * mean_diag;
        for i in 0..n {
            h[i * n + i] += damp;
        }
        let u = inverse_cholesky_upper(&h, n).map_err(|j| QuantError::Gptq {
            site: site.into(),
            reason: format!("the Hessian is not positive definite after dampening {} (pivot {j}); raise --damp", cfg.damp),
        })?;
        Ok(Self { n, dead, perm, u })
    }
}

/// Quantizes a row-major `[out, in]` matrix with the Hessian `h` (`[in, in]`, as
/// [`Hessian::matrix`] gives it). `site` names the layer in errors.
pub fn gptq(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    h: &[f64],
    cfg: &GptqConfig,
    site: &str,
) -> Result<GptqQuantized, QuantError> {
    cfg.validate(in_features).map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
    gptq_factored(w, out_features, &Factored::new(h, in_features, cfg, site)?, cfg, site)
}

/// [`gptq`] with the Hessian already factored (by [`Factored::new`] with the same `cfg`).
pub fn gptq_factored(w: &[f32], out_features: usize, f: &Factored, cfg: &GptqConfig, site: &str) -> Result<GptqQuantized, QuantError> {
    let n = f.n;
    cfg.validate(n).map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
    if w.len() != out_features * n {
        return Err(QuantError::Config(format!("{site}: {} weights for a {out_features}x{n} layer", w.len())));
    }
    let maxq = cfg.quant.maxq();
    // Zeros of a sparse base, kept exactly.
    let sparse = w.contains(&0.0);
    let original: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut wd = original.clone();
    for &i in &f.dead {
        wd.chunks_mut(n).for_each(|r| r[i] = 0.0);
    }
    let dead = f.dead.len();
    let g = cfg.quant.group(n);
    let grouped = cfg.quant.group_size.is_some();
    let groups = n.div_ceil(g);
    // Static groups (and per-channel parameters): fit on the weights before any update, in the
    // original column order. Per-channel parameters use the weights before dead inputs are
    // zeroed, as the reference's first `find_params(W)` does.
    let fixed: Option<Vec<(f64, u8)>> = if !grouped {
        Some(original.chunks(n).map(|r| group_params(r.iter().copied(), maxq)).collect())
    } else if cfg.static_groups {
        Some(wd.chunks(n).flat_map(|r| r.chunks(g).map(|c| group_params(c.iter().copied(), maxq)).collect::<Vec<_>>()).collect())
    } else {
        None
    };
    let perm = f.perm.clone();
    if let Some(p) = &perm {
        wd = wd.chunks(n).flat_map(|r| p.iter().map(|&c| r[c]).collect::<Vec<_>>()).collect();
    }
    let keep: Option<Vec<bool>> = sparse.then(|| match &perm {
        Some(p) => w.chunks(n).flat_map(|r| p.iter().map(|&c| r[c] != 0.0).collect::<Vec<_>>()).collect(),
        None => w.iter().map(|&v| v != 0.0).collect(),
    });
    let u = &f.u;
    // The group of quantization position j, for static groups (original order).
    let static_group = |j: usize| perm.as_ref().map_or(j, |p| p[j]) / g;

    let mut q = vec![0u8; out_features * n];
    let mut scales = vec![0f32; out_features * groups];
    let mut zeros = vec![0u8; out_features * groups];
    let losses: Vec<f64> = wd
        .par_chunks_mut(ROW_CHUNK * n)
        .zip(q.par_chunks_mut(ROW_CHUNK * n))
        .zip(scales.par_chunks_mut(ROW_CHUNK * groups).zip(zeros.par_chunks_mut(ROW_CHUNK * groups)))
        .enumerate()
        .map(|(chunk, ((wc, qc), (sc, zc)))| {
            let rows = wc.len() / n;
            let r0 = chunk * ROW_CHUNK;
            let keep = keep.as_ref().map(|k| &k[r0 * n..(r0 + rows) * n]);
            let mut params: Vec<(f64, u8)> = vec![(1.0, 0); rows];
            let mut loss = 0.0;
            let mut w1 = vec![0.0f64; rows * cfg.block_size];
            let mut err = vec![0.0f64; rows * cfg.block_size];
            for i1 in (0..n).step_by(cfg.block_size) {
                let i2 = (i1 + cfg.block_size).min(n);
                let count = i2 - i1;
                for r in 0..rows {
                    w1[r * count..(r + 1) * count].copy_from_slice(&wc[r * n + i1..r * n + i2]);
                }
                for i in 0..count {
                    let col = i1 + i;
                    for (r, p) in params.iter_mut().enumerate() {
                        *p = match &fixed {
                            Some(f) if !grouped => f[r0 + r],
                            Some(f) => f[(r0 + r) * groups + static_group(col)],
                            None if col % g == 0 => {
                                let end = (col + g).min(n);
                                let vals = (col..end).map(|c| match keep {
                                    Some(k) if !k[r * n + c] => 0.0,
                                    _ => wc[r * n + c],
                                });
                                let fit = group_params(vals, maxq);
                                sc[r * groups + col / g] = fit.0 as f32;
                                zc[r * groups + col / g] = fit.1;
                                fit
                            }
                            None => *p,
                        };
                    }
                    let d = u[col * n + col];
                    let urow = &u[col * n + col..col * n + i2];
                    for (r, &(scale, zero)) in params.iter().enumerate() {
                        let row = &mut w1[r * count..(r + 1) * count];
                        let wv = row[i];
                        let code = match keep {
                            Some(k) if !k[r * n + col] => zero,
                            _ => quantize_value(wv, scale, zero, maxq),
                        };
                        qc[r * n + col] = code;
                        let deq = scale * (code as f64 - zero as f64);
                        let e = (wv - deq) / d;
                        loss += (wv - deq) * (wv - deq) / (d * d) / 2.0;
                        err[r * count + i] = e;
                        row[i..].iter_mut().zip(urow).for_each(|(x, &uv)| *x -= e * uv);
                    }
                }
                if i2 < n {
                    // W[:, i2..] -= Err · U[i1..i2, i2..]
                    // SAFETY: the extents below lie inside `wc`, `err` and `u`, and `wc` is not aliased.
                    unsafe {
                        gemm::gemm(
                            rows,
                            n - i2,
                            count,
                            wc.as_mut_ptr().add(i2),
                            1,
                            n as isize,
                            true,
                            err.as_ptr(),
                            1,
                            count as isize,
                            u.as_ptr().add(i1 * n + i2),
                            1,
                            n as isize,
                            1.0,
                            -1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            if let Some(f) = &fixed {
                for r in 0..rows {
                    for k in 0..groups {
                        let (s, z) = if grouped { f[(r0 + r) * groups + k] } else { f[r0 + r] };
                        sc[r * groups + k] = s as f32;
                        zc[r * groups + k] = z;
                    }
                }
            }
            loss
        })
        .collect();
    let loss = losses.iter().sum();
    let mut quantized = Quantized { out_features, in_features: n, config: cfg.quant, q, scales, zeros };
    // Static groups follow the original order: put the codes back in it.
    let perm = match perm {
        Some(p) if cfg.static_groups || !grouped => {
            quantized.q = unpermute_columns(&quantized.q, n, &p);
            None
        }
        p => p,
    };
    Ok(GptqQuantized { quantized, perm, dead, loss })
}

/// `Σ_r (w_r - ŵ_r)ᵀ · H · (w_r - ŵ_r)`: the layer's squared reconstruction error
/// `‖W·X - Ŵ·X‖²` up to the factor `2/N` of `H`. A report, not part of the algorithm: the
/// product `Δ·H` runs in f32 (one matrix product per chunk of rows), the final sums in f64
/// (relative error about 1e-6).
pub fn reconstruction_error(w: &[f32], w_hat: &[f32], h: &[f64], n: usize) -> f64 {
    const ROWS: usize = 32;
    let h32: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    w.par_chunks(ROWS * n)
        .zip(w_hat.par_chunks(ROWS * n))
        .map(|(a, b)| {
            let rows = a.len() / n;
            let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let mut dh = vec![0.0f32; rows * n];
            // SAFETY: `dh` is [rows, n], `d` is [rows, n] and `h32` is [n, n], all row-major.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    n,
                    dh.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    d.as_ptr(),
                    1,
                    n as isize,
                    h32.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            dh.iter().zip(&d).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::quantize;

    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    #[test]
    fn blocked_upper_gram_is_the_whole_symmetric_product() {
        // n not a multiple of the block (a ragged last block), two batches, one padded row.
        let (n, rows) = (GRAM_BLOCK * 2 + 37, 50);
        let mut r = lcg(7);
        let mut h = Hessian::new(n);
        let mut exact = vec![0.0f64; n * n];
        for batch in 0..2 {
            let mut x: Vec<f32> = (0..rows * n).map(|_| r() as f32).collect();
            if batch == 1 {
                x[..n].fill(0.0);
            }
            for t in 0..rows {
                for a in 0..n {
                    for b in 0..n {
                        exact[a * n + b] += x[t * n + a] as f64 * x[t * n + b] as f64;
                    }
                }
            }
            h.add_inputs(&x, if batch == 1 { rows as u64 - 1 } else { rows as u64 });
        }
        assert_eq!(h.tokens, 2 * rows as u64 - 1);
        let m = h.matrix();
        let f = 2.0 / h.tokens as f64;
        for a in 0..n {
            for b in 0..n {
                let want = exact[a * n + b] * f;
                assert!((m[a * n + b] - want).abs() <= 1e-5 * (1.0 + want.abs()), "({a}, {b}): {} vs {want}", m[a * n + b]);
                assert_eq!(m[a * n + b], m[b * n + a], "({a}, {b}) is not symmetric");
            }
        }
    }

    /// `X: [tokens, n]` with correlated features, and `H = 2/N XᵀX`.
    fn hessian(n: usize, tokens: usize, seed: u64) -> Vec<f64> {
        let mut r = lcg(seed);
        let base: Vec<f64> = (0..tokens * 4).map(|_| r()).collect();
        let x: Vec<f64> = (0..tokens * n).map(|k| base[(k / n) * 4 + k % 4] * (1.0 + (k % n) as f64 / n as f64) + 0.3 * r()).collect();
        let mut h = vec![0.0; n * n];
        for t in 0..tokens {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += 2.0 * x[t * n + i] * x[t * n + j] / tokens as f64;
                }
            }
        }
        h
    }

    #[test]
    fn inverse_cholesky_is_the_upper_factor_of_the_inverse() {
        // One panel, and several with a partial last one (the blocked paths).
        for n in [37, 2 * FACTOR_BLOCK + 22] {
            let mut h = hessian(n, 2 * n + 6, 3);
            (0..n).for_each(|i| h[i * n + i] += 0.01);
            let u = inverse_cholesky_upper(&h, n).unwrap();
            // Upper triangular with a positive diagonal, and H · (Uᵀ U) = I.
            for a in 0..n {
                assert!(u[a * n + a] > 0.0);
                for b in 0..a {
                    assert_eq!(u[a * n + b], 0.0);
                }
            }
            let hinv: Vec<f64> = (0..n * n).map(|k| (0..n).map(|m| u[m * n + k / n] * u[m * n + k % n]).sum()).collect();
            for a in 0..n {
                for b in 0..n {
                    let got: f64 = (0..n).map(|k| h[a * n + k] * hinv[k * n + b]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((got - want).abs() < 1e-8, "n {n} ({a}, {b}): {got}");
                }
            }
        }
        let mut bad = vec![0.0; 4];
        bad[0] = 1.0;
        assert!(inverse_cholesky_upper(&bad, 2).is_err(), "a singular matrix is refused");
    }

    #[test]
    fn with_uncorrelated_inputs_gptq_is_round_to_nearest() {
        // H diagonal: U is diagonal, no error is fed forward, every column rounds to nearest.
        let (o, n) = (8, 32);
        let mut r = lcg(1);
        let w: Vec<f32> = (0..o * n).map(|_| r() as f32).collect();
        let h: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 + (k % n) as f64 } else { 0.0 }).collect();
        for group_size in [Some(8), None] {
            let quant = QuantConfig { bits: 4, group_size };
            let g = gptq(&w, o, n, &h, &GptqConfig { quant, ..Default::default() }, "t").unwrap();
            assert_eq!(g.quantized, quantize(&w, o, n, quant).unwrap());
        }
    }

    #[test]
    fn error_feedback_beats_rounding_and_keeps_zeros() {
        let (o, n) = (24, 64);
        let h = hessian(n, 200, 5);
        let mut r = lcg(2);
        let mut w: Vec<f32> = (0..o * n).map(|_| r() as f32).collect();
        for cfg in [
            GptqConfig { quant: QuantConfig { bits: 4, group_size: Some(16) }, block_size: 24, ..Default::default() },
            GptqConfig { quant: QuantConfig { bits: 3, group_size: None }, act_order: true, ..Default::default() },
            GptqConfig { quant: QuantConfig { bits: 4, group_size: Some(16) }, act_order: true, ..Default::default() },
            GptqConfig { quant: QuantConfig { bits: 2, group_size: Some(32) }, act_order: true, static_groups: true, ..Default::default() },
        ] {
            let rtn = quantize(&w, o, n, cfg.quant).unwrap().dequantize();
            let g = gptq(&w, o, n, &h, &cfg, "t").unwrap();
            assert_eq!(g.perm.is_some(), cfg.act_order && !cfg.static_groups && cfg.quant.group_size.is_some());
            let deq = g.dequantize();
            let (eg, er) = (reconstruction_error(&w, &deq, &h, n), reconstruction_error(&w, &rtn, &h, n));
            assert!(eg < 0.8 * er, "{cfg:?}: GPTQ {eg} vs RTN {er}");
        }
        // Half the weights pruned: those stay exactly zero.
        w.iter_mut().enumerate().filter(|(k, _)| k % 2 == 0).for_each(|(_, v)| *v = 0.0);
        let g = gptq(
            &w,
            o,
            n,
            &h,
            &GptqConfig { act_order: true, quant: QuantConfig { bits: 4, group_size: Some(16) }, ..Default::default() },
            "t",
        )
        .unwrap();
        let deq = g.dequantize();
        assert!(w.iter().zip(&deq).all(|(a, b)| *a != 0.0 || *b == 0.0), "a pruned weight came back");
    }

    #[test]
    fn dead_inputs_and_bad_hessians() {
        let (o, n) = (16, 16);
        let mut h = hessian(n, 50, 9);
        for k in 0..n {
            h[3 * n + k] = 0.0;
            h[k * n + 3] = 0.0;
        }
        let w: Vec<f32> = (0..o * n).map(|k| (k as f32 * 0.37).sin()).collect();
        let cfg = GptqConfig { quant: QuantConfig { bits: 4, group_size: Some(8) }, ..Default::default() };
        let g = gptq(&w, o, n, &h, &cfg, "t").unwrap();
        assert_eq!(g.dead, 1);
        assert!(g.dequantize().chunks(n).all(|r| r[3] == 0.0), "a dead input's weights are zeroed");
        h[0] = f64::NAN;
        let e = gptq(&w, o, n, &h, &cfg, "layers.0.q").unwrap_err().to_string();
        assert!(e.contains("layers.0.q") && e.contains("non-finite"), "{e}");
        // Indefinite: a negative eigenvalue that dampening by 1% cannot lift.
        let neg: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { if k == 0 { -50.0 } else { 1.0 } } else { 0.0 }).collect();
        let e = gptq(&w, o, n, &neg, &cfg, "layers.1.down").unwrap_err().to_string();
        assert!(e.contains("layers.1.down") && e.contains("positive definite"), "{e}");
    }
}
