//! A bf16 matrix multiply for CPUs with AVX-512 BF16 (`vdpbf16ps`): `x · Wᵀ` with `x` and the
//! weight rounded to bf16 (round to nearest even) and products accumulated in f32, as
//! PyTorch's CPU autocast does. One `vdpbf16ps` does 32 multiply-adds where an f32 FMA does
//! 16, so at the same instruction rate it doubles a compute-bound matmul's throughput.
//!
//! The weight is packed once ([`Bf16Weight::pack`]) into panels of [`NR`] output columns whose
//! pairs of inputs sit side by side (the operand layout `vdpbf16ps` reads); the activations are
//! packed per call into panels of [`MR`] rows. The micro-kernel keeps an `MR x NR` block of
//! f32 accumulators in 24 registers. Panels of columns are shared between cores
//! ([`crate::par`]). [`matmul_reference`] is the same arithmetic in scalar code (used where the
//! instructions are absent, and to test the kernel).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use burn::module::ParamId;

/// Rows of the activations per micro-kernel call.
pub const MR: usize = 12;
/// Output columns per packed weight panel (two 16-lane registers).
pub const NR: usize = 32;

/// f32 to bf16, round to nearest even (NaN kept quiet).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 to f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A weight `[out, in]` packed for [`matmul`]: panels of [`NR`] outputs, each `[in/2][NR][2]`
/// bf16 (the last panel and an odd input padded with zeros).
#[derive(Debug, Clone)]
pub struct Bf16Weight {
    /// Output features (rows of the original weight).
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    packed: Vec<u16>,
}

impl Bf16Weight {
    /// Packs a row-major `[out, in]` f32 weight.
    pub fn pack(w: &[f32], out_features: usize, in_features: usize) -> Self {
        assert_eq!(w.len(), out_features * in_features, "weight of {out_features} x {in_features}");
        let (kp, panels) = (in_features.div_ceil(2), out_features.div_ceil(NR));
        let mut packed = vec![0u16; panels * kp * NR * 2];
        for (panel, dst) in packed.chunks_mut(kp * NR * 2).enumerate() {
            for c in 0..NR {
                let j = panel * NR + c;
                if j >= out_features {
                    break;
                }
                let row = &w[j * in_features..(j + 1) * in_features];
                for (k, &v) in row.iter().enumerate() {
                    // pair p = k / 2, half (16 columns) c / 16, lane c % 16, element k % 2
                    dst[((k / 2) * 2 + c / 16) * 32 + (c % 16) * 2 + k % 2] = to_bf16(v);
                }
            }
        }
        Self { out_features, in_features, packed }
    }

    fn value(&self, j: usize, k: usize) -> f32 {
        let kp = self.in_features.div_ceil(2);
        let (panel, c) = (j / NR, j % NR);
        from_bf16(self.packed[panel * kp * NR * 2 + ((k / 2) * 2 + c / 16) * 32 + (c % 16) * 2 + k % 2])
    }
}

/// Whether this CPU runs the AVX-512 BF16 kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x · Wᵀ` for `x: [m, in]` row-major, in bf16 with f32 accumulation: `[m, out]`.
pub fn matmul(x: &[f32], m: usize, w: &Bf16Weight) -> Vec<f32> {
    assert_eq!(x.len(), m * w.in_features, "activations of {m} x {}", w.in_features);
    if !available() {
        return matmul_reference(x, m, w);
    }
    let (k, n) = (w.in_features, w.out_features);
    let kp = k.div_ceil(2);
    // Activations: panels of MR rows, `[kp][MR]` pairs of bf16 (zeros past the end).
    let row_panels = m.div_ceil(MR);
    let mut a = vec![0u32; row_panels * kp * MR];
    for (r, row) in x.chunks_exact(k).enumerate() {
        let base = (r / MR) * kp * MR + r % MR;
        for p in 0..kp {
            let lo = to_bf16(row[2 * p]) as u32;
            let hi = if 2 * p + 1 < k { to_bf16(row[2 * p + 1]) as u32 } else { 0 };
            a[base + p * MR] = lo | (hi << 16);
        }
    }
    // Tasks are groups of column panels; each writes its columns of every output row.
    let panels = n.div_ceil(NR);
    let per_task = panels.div_ceil(32).max(1);
    let mut y = vec![0f32; m * n];
    let out = SendPtr(y.as_mut_ptr());
    crate::par::par_for(panels.div_ceil(per_task), &|t| {
        for panel in t * per_task..((t + 1) * per_task).min(panels) {
            let b = &w.packed[panel * kp * NR * 2..(panel + 1) * kp * NR * 2];
            let (j0, cols) = (panel * NR, NR.min(n - panel * NR));
            for rp in 0..row_panels {
                let rows = MR.min(m - rp * MR);
                // SAFETY: `available()` checked the instructions; `a` and `b` hold `kp` pairs of
                // MR rows and NR columns; this task alone writes columns `j0..j0 + cols` of
                // rows `rp·MR..rp·MR + rows` of `y`, which outlives the call.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    kernel(&a[rp * kp * MR..(rp + 1) * kp * MR], b, kp, out.get().add(rp * MR * n + j0), n, rows, cols)
                };
            }
        }
    });
    y
}

/// A pointer that tasks writing disjoint parts of one buffer share.
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes while the buffer is alive (see `matmul`).
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(a: &[u32], b: &[u16], kp: usize, c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kp {
        // SAFETY: `b` holds `kp` pairs of 2 x 32 bf16.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let ptr = b.as_ptr().add(p * 64);
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(ptr as *const __m512i)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(ptr.add(32) as *const __m512i)),
            )
        };
        let ap = &a[p * MR..(p + 1) * MR];
        for r in 0..MR {
            // SAFETY: a bit cast between same-size vector types.
            let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(ap[r] as i32)) };
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    let lanes = |n: usize| if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 };
    let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
    for (r, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: the caller owns `cols` outputs at `c + r·ldc` for `r < rows`; masked lanes
        // are not touched.
        unsafe {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc[1]);
        }
    }
}

/// [`matmul`] in scalar code: each product of bf16-rounded values summed in f32 in input
/// order, pairs added first (as `vdpbf16ps` does).
pub fn matmul_reference(x: &[f32], m: usize, w: &Bf16Weight) -> Vec<f32> {
    let (k, n) = (w.in_features, w.out_features);
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr: Vec<f32> = x[r * k..(r + 1) * k].iter().map(|&v| from_bf16(to_bf16(v))).collect();
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k.div_ceil(2) {
                let lo = xr[2 * p] * w.value(j, 2 * p);
                let hi = if 2 * p + 1 < k { xr[2 * p + 1] * w.value(j, 2 * p + 1) } else { 0.0 };
                s += lo + hi;
            }
            y[r * n + j] = s;
        }
    }
    y
}

/// Whether inference projections run in bf16 ([`set_inference`]).
static INFERENCE: AtomicBool = AtomicBool::new(false);

/// Packed weights by parameter (and the number of input columns used, for a narrowed head).
type Cache = Mutex<HashMap<(ParamId, usize), Arc<Bf16Weight>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Turns bf16 inference on or off for this process: the projections and the LM head of every
/// forward pass on the CPU backend outside autodiff ([`crate::host::enabled`]) then multiply in
/// bf16 with f32 accumulation (norms, attention, softmax and residuals stay f32), as PyTorch's
/// CPU autocast does. Each weight is packed on first use and kept, keyed by its parameter id:
/// weights must not change while it is on (calling this again drops the packed copies).
/// Errors when the CPU has no AVX-512 BF16.
pub fn set_inference(on: bool) -> Result<(), &'static str> {
    if on && !available() {
        return Err("this CPU has no AVX-512 BF16 (avx512_bf16): bf16 inference needs it");
    }
    cache().lock().expect("bf16 cache").clear();
    INFERENCE.store(on, Ordering::SeqCst);
    Ok(())
}

/// Whether [`set_inference`] turned bf16 inference on.
pub fn inference() -> bool {
    INFERENCE.load(Ordering::Relaxed)
}

/// The packed copy of parameter `id` narrowed to `cols` inputs, made by `pack` on first use.
pub fn packed(id: ParamId, cols: usize, pack: impl FnOnce() -> Bf16Weight) -> Arc<Bf16Weight> {
    if let Some(w) = cache().lock().expect("bf16 cache").get(&(id, cols)) {
        return w.clone();
    }
    let w = Arc::new(pack());
    cache().lock().expect("bf16 cache").insert((id, cols), w.clone());
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn the_kernel_equals_f64_products_of_the_rounded_values() {
        // Odd sizes: a partial row panel, a partial column panel, an odd number of inputs.
        let (m, k, n) = (29, 77, 45);
        let mut s = 12345u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let packed = Bf16Weight::pack(&w, n, k);
        let got = matmul(&x, m, &packed);
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|t| r(x[i * k + t]) * r(w[j * k + t])).sum();
                worst = worst.max((got[i * n + j] as f64 - exact).abs());
            }
        }
        // Products of bf16 values are exact in f32; only the f32 sum order rounds.
        assert!(worst < 1e-5, "max |diff| {worst:e}");
        let reference = matmul_reference(&x, m, &packed);
        let d = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "kernel vs scalar {d:e}");
    }
}
