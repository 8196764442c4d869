//! ggml's storage types: block sizes, dequantization to f32 of F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1 and the K-quants Q2_K-Q6_K, and quantization to F32, F16, BF16, Q8_0, Q4_0 and Q4_1.
//!
//! Every formula follows the `gguf` Python package's `gguf/quants.py` (which mirrors
//! `ggml-quants.c`) operation for operation in f32, so results are bit-identical to it
//! (`crates/models/tests/gguf.rs` checks every type on generated blocks).

use half::{bf16, f16};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor type.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// The type of a ggml type id (`None` for ids secateur does not know, e.g. the IQ types).
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    /// The name ggml and the `gguf` package give the type (`"Q4_K"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            I8 => 1,
            F16 | BF16 | I16 => 2,
            F32 | I32 => 4,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }

    /// Bytes of `n` elements (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `ty` to f32 (an error when the type is not one secateur reads or
/// the bytes are not whole blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let ts = ty.type_size();
    if !bytes.len().is_multiple_of(ts) {
        return Err(format!("{} bytes are not whole {ty:?} blocks of {ts} bytes", bytes.len()));
    }
    let n = bytes.len() / ts * ty.block_size();
    let mut out = vec![0f32; n];
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(ty.block_size()));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::F64 => blocks.for_each(|(b, y)| y[0] = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = d * ((q & 0xF) as i8 - 8) as f32;
                y[j + 16] = d * ((q >> 4) as i8 - 8) as f32;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = d * (q & 0xF) as f32 + m;
                y[j + 16] = d * (q >> 4) as f32 + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for i in 0..32 {
                let ql = if i < 16 { b[6 + i] & 0xF } else { b[6 + i - 16] >> 4 };
                let q = (ql | ((((qh >> i) & 1) as u8) << 4)) as i8 - 16;
                y[i] = d * q as f32;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for i in 0..32 {
                let ql = if i < 16 { b[8 + i] & 0xF } else { b[8 + i - 16] >> 4 };
                let q = ql | ((((qh >> i) & 1) as u8) << 4);
                y[i] = d * q as f32 + m;
            }
        }),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| {
            let (scales, qs) = (&b[..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (i, y) in y.iter_mut().enumerate() {
                let (h, s, j) = (i / 128, (i / 32) % 4, i % 32);
                let q = (qs[h * 32 + j] >> (2 * s)) & 3;
                let sc = scales[i / 16];
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                *y = dl * q as f32 - ml;
            }
        }),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| {
            let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            let scale = |k: usize| -> f32 {
                let low = if k < 8 { sc[k] & 0xF } else { sc[k - 8] >> 4 };
                let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
                ((low | (high << 4)) as i8 - 32) as f32
            };
            for (i, y) in y.iter_mut().enumerate() {
                let (h, s, j) = (i / 128, (i / 32) % 4, i % 32);
                let ql = ((qs[h * 32 + j] >> (2 * s)) & 3) as i8;
                let hbit = ((hmask[j] >> (i / 32)) & 1) ^ 1;
                let q = ql - ((hbit << 2) as i8);
                let dl = d * scale(i / 16);
                *y = dl * q as f32;
            }
        }),
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            blocks.for_each(|(b, y)| {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, m) = k_scale_min(&b[4..16]);
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for (i, y) in y.iter_mut().enumerate() {
                    let (sub, j) = (i / 32, i % 32);
                    let (c, s) = (sub / 2, sub % 2);
                    let mut q = (qs[c * 32 + j] >> (4 * s)) & 0xF;
                    if five {
                        q |= ((qh[j] >> sub) & 1) << 4;
                    }
                    let dl = d * sc[sub] as f32;
                    let dm = dmin * m[sub] as f32;
                    *y = dl * q as f32 - dm;
                }
            })
        }
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (i, y) in y.iter_mut().enumerate() {
                let h = i / 128;
                let (s_l, j_l) = ((i % 128) / 64, i % 64);
                let (s_h, j_h) = ((i % 128) / 32, i % 32);
                let low = (ql[h * 64 + j_l] >> (4 * s_l)) & 0xF;
                let high = (qh[h * 32 + j_h] >> (2 * s_h)) & 3;
                let q = (low | (high << 4)) as i8 - 32;
                let dl = d * (scales[i / 16] as i8) as f32;
                *y = dl * q as f32;
            }
        }),
        other => return Err(format!("ggml type {other:?} cannot be read (secateur reads F32, F16, BF16, F64, Q4_0-Q8_0 and Q2_K-Q6_K)")),
    }
    Ok(out)
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (`get_scale_min` in quants.py).
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        m[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        m[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, m)
}

/// Quantizes f32 values (a whole number of blocks) to `ty`, as `gguf.quants.quantize` does.
/// Writable types: F32, F16, BF16, Q8_0, Q4_0, Q4_1.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, String> {
    let bs = ty.block_size();
    if !values.len().is_multiple_of(bs) {
        return Err(format!("{} values are not whole {ty:?} blocks of {bs}", values.len()));
    }
    let mut out = Vec::with_capacity(ty.bytes_for(values.len()));
    let inv = |d: f32| if d == 0.0 { 0.0 } else { 1.0 / d };
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16_round(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for x in values.chunks_exact(32) {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = inv(d);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| ((v * id).round() as i8) as u8));
            }
        }
        GgmlType::Q4_0 => {
            for x in values.chunks_exact(32) {
                let max = signed_absmax(x);
                let d = max / -8.0;
                let id = inv(d);
                let q = |v: f32| ((v * id + 8.5).trunc().clamp(0.0, 15.0)) as u8;
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for x in values.chunks_exact(32) {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let d = (max - min) / 15.0;
                let id = inv(d);
                let q = |v: f32| (((v - min) * id + 0.5).trunc().clamp(0.0, 15.0)) as u8;
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
        }
        other => return Err(format!("secateur does not write ggml type {other:?} (it writes F32, F16, BF16, Q8_0, Q4_0, Q4_1)")),
    }
    Ok(out)
}

/// The element of largest magnitude, with its sign (the first one on ties, as numpy's argmax).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// f32 to bf16 bits with round-to-nearest-even and quiet NaNs (ggml's `ggml_compute_fp32_to_bf16`).
fn bf16_round(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n & 0xffff_0000) >> 16) as u16 | 64;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1) as u64)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(GgmlType::Q4_K.bytes_for(512), 288);
        assert_eq!(GgmlType::from_id(30), Some(GgmlType::BF16));
        for id in 0..40 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
    }

    #[test]
    fn q8_0_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(q.len(), 68);
        let y = dequantize(GgmlType::Q8_0, &q).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.01, "{a} vs {b}");
        }
    }

    #[test]
    fn partial_blocks_are_refused() {
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 17]).is_err());
        assert!(quantize(GgmlType::Q4_1, &[0.0; 31]).is_err());
        assert!(dequantize(GgmlType::Q8_K, &[0u8; 292]).is_err());
    }
}
