//! SQFT's mergeable adapters on compressed bases.
//!
//! - SparsePEFT: the adapter's update is masked by the base's sparsity mask `M = (W != 0)`, a
//!   constant: `W_m = W + s·(B·A) ⊙ M`, so merging keeps the base's zeros exactly.
//! - QA-SparsePEFT: with the frozen per-group scales `s_q` and zero points `z` of the quantized
//!   base, the forward pass uses the fake-quantized merged weight
//!   `W~ = s_q·(clamp(round(W_m / s_q) + z, 0, 2^n - 1) - z)` with a straight-through gradient
//!   (`W_m + (W~ - W_m).detach()`); merging writes an INT-n model with the same scales and zeros
//!   whose forward equals the fake-quantized forward.
//!
//! Both build the dense `[out, in]` update in the forward pass: masking (and quantizing) act on
//! the merged weight, which low-rank factors alone cannot express. Scales and zero points are
//! held expanded to `[out, in]` for element-wise ops (twice the weight's memory, for training).

use burn::module::{Module, Param};
use burn::prelude::*;
use secateur_models::{CausalLm, Dense, DenseLm, Projection};
use secateur_quant::QuantLinear;
use secateur_quant::pack::Packed;
use secateur_quant::rtn::{QuantConfig, Quantized};

use crate::LoraError;
use crate::lora::{Adapted, AdapterFactory, LoraAdapter, LoraConfig, RankControl};
use crate::space::SearchSpace;

/// Frozen quantization parameters of a weight, expanded to its shape.
#[derive(Module, Debug)]
pub struct FakeQuant<B: Backend> {
    pub scales: Param<Tensor<B, 2>>,
    pub zeros: Param<Tensor<B, 2>>,
    pub maxq: f64,
    #[module(skip)]
    pub config: QuantConfig,
}

/// A frozen (sparse, possibly quantized) weight plus an elastic adapter whose update is masked
/// by the weight's sparsity.
#[derive(Module, Debug)]
pub struct SparsePeftLinear<B: Backend> {
    /// `[out, in]`; for QA-SparsePEFT the dequantized quantized base.
    pub weight: Param<Tensor<B, 2>>,
    /// 1 where the base weight is non-zero.
    pub mask: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub adapter: Option<LoraAdapter<B>>,
    pub quant: Option<FakeQuant<B>>,
}

impl<B: Backend> SparsePeftLinear<B> {
    /// `W + s·(B·A) ⊙ M` at the active rank (no STE, no quantization).
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        match &self.adapter {
            Some(ad) if ad.active_rank() > 0 => self.weight.val() + ad.delta_weight() * self.mask.val(),
            _ => self.weight.val(),
        }
    }

    /// The weight the forward pass uses: merged, then fake-quantized with a straight-through
    /// gradient when the base is quantized.
    pub fn effective_weight(&self) -> Tensor<B, 2> {
        let wm = self.merged_weight();
        match &self.quant {
            None => wm,
            Some(fq) => {
                let (s, z) = (fq.scales.val(), fq.zeros.val());
                let q = (wm.clone() / s.clone()).round().add(z.clone()).clamp(0.0, fq.maxq);
                let wt = (q - z) * s;
                wm.clone() + (wt - wm).detach()
            }
        }
    }
}

impl<B: Backend> Projection<B> for SparsePeftLinear<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        secateur_models::nn::linear(x, self.effective_weight(), self.bias.as_ref().map(|b| b.val()))
    }
}

impl<B: Backend> Adapted<B> for SparsePeftLinear<B> {
    fn adapter(&self) -> Option<&LoraAdapter<B>> {
        self.adapter.as_ref()
    }
    fn adapter_mut(&mut self) -> Option<&mut LoraAdapter<B>> {
        self.adapter.as_mut()
    }
}

/// A model with SparsePEFT / QA-SparsePEFT projections.
pub type SparsePeftLm<B> = CausalLm<B, SparsePeftLinear<B>>;

fn to_vec<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// Wraps every projection of a (sparse) dense model: mask from its zeros, adapters on the sites
/// of `space` (as [`crate::attach`] does), and with `quant`, the base quantized to INT-n
/// (round-to-nearest, as `secateur-quant`) and held dequantized with its frozen scales and zeros.
pub fn attach_sparse_peft<B: Backend>(
    model: DenseLm<B>,
    space: &SearchSpace,
    cfg: &LoraConfig,
    quant: Option<QuantConfig>,
    device: &B::Device,
) -> Result<(SparsePeftLm<B>, RankControl), LoraError> {
    attach_sparse_peft_on(model, space, cfg, quant.map(BaseQuant::Rtn), device)
}

/// How the base of QA-SparsePEFT is quantized.
#[derive(Debug, Clone, Copy)]
pub enum BaseQuant<'a> {
    /// Round-to-nearest of the sparse weights with these bits and groups.
    Rtn(QuantConfig),
    /// Given codes, scales and zero points per site (e.g. GPTQ's, contiguous groups): the base
    /// becomes their dequantized weights, whose fake quantization gives the same codes back.
    Given(&'a std::collections::HashMap<secateur_models::Site, Quantized>),
}

/// [`attach_sparse_peft`] with the base's quantization chosen by [`BaseQuant`]. The sparsity
/// mask always comes from `model`'s zeros.
pub fn attach_sparse_peft_on<B: Backend>(
    model: DenseLm<B>,
    space: &SearchSpace,
    cfg: &LoraConfig,
    quant: Option<BaseQuant<'_>>,
    device: &B::Device,
) -> Result<(SparsePeftLm<B>, RankControl), LoraError> {
    space.validate_for(&model.sites())?;
    let mut adapters = AdapterFactory::new(space, cfg);
    let model = model.map_projections(|site, dense: Dense<B>| {
        let [o, i] = dense.shape();
        let w = to_vec(dense.weight.val());
        let mask: Vec<f32> = w.iter().map(|v| if *v != 0.0 { 1.0 } else { 0.0 }).collect();
        let (weight, fq) = match quant {
            None => (w, None),
            Some(how) => {
                let q = match how {
                    BaseQuant::Rtn(qc) => secateur_quant::quantize(&w, o, i, qc).map_err(|e| LoraError::Config(format!("{site}: {e}")))?,
                    BaseQuant::Given(given) => match given.get(&site) {
                        Some(q) if q.out_features == o && q.in_features == i => q.clone(),
                        _ => return Err(LoraError::Config(format!("{site}: no quantized weights of shape {o}x{i} given"))),
                    },
                };
                let qc = q.config;
                let g = qc.group(i);
                let groups = q.groups();
                let expand = |v: &[f32]| -> Vec<f32> { (0..o * i).map(|k| v[(k / i) * groups + (k % i) / g]).collect() };
                let zeros: Vec<f32> = q.zeros.iter().map(|&z| z as f32).collect();
                let fq = FakeQuant {
                    scales: Param::from_tensor(Tensor::from_data(TensorData::new(expand(&q.scales), [o, i]), device))
                        .set_require_grad(false),
                    zeros: Param::from_tensor(Tensor::from_data(TensorData::new(expand(&zeros), [o, i]), device)).set_require_grad(false),
                    maxq: qc.maxq() as f64,
                    config: qc,
                };
                (q.dequantize(), Some(fq))
            }
        };
        let adapter = adapters.make(site, [o, i], device);
        Ok::<_, LoraError>(SparsePeftLinear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(weight, [o, i]), device)).set_require_grad(false),
            mask: Param::from_tensor(Tensor::from_data(TensorData::new(mask, [o, i]), device)).set_require_grad(false),
            bias: dense.bias.map(|b| b.set_require_grad(false)),
            adapter,
            quant: fq,
        })
    })?;
    Ok((model, RankControl::from_cells(space.clone(), adapters.cells)))
}

/// SparsePEFT merge: `W + s·(B·A) ⊙ M` at the active ranks, a dense model with the base's zeros.
pub fn merge_sparse<B: Backend>(model: SparsePeftLm<B>) -> DenseLm<B> {
    let merged: Result<DenseLm<B>, std::convert::Infallible> =
        model.map_projections(|_, p: SparsePeftLinear<B>| Ok(Dense { weight: Param::from_tensor(p.merged_weight()), bias: p.bias }));
    match merged {
        Ok(m) => m,
        Err(never) => match never {},
    }
}

/// QA-SparsePEFT merge: the merged weight quantized with the base's frozen scales and zero
/// points, packed into an INT-n model whose forward equals the fake-quantized forward.
pub fn merge_quantized<B: Backend>(model: SparsePeftLm<B>) -> Result<secateur_quant::QuantLm<B>, LoraError> {
    model.map_projections(|site, p: SparsePeftLinear<B>| {
        let fq = p.quant.as_ref().ok_or_else(|| LoraError::Config(format!("{site}: the base is not quantized")))?;
        let [o, i] = p.weight.val().dims();
        let cfg = fq.config;
        let g = cfg.group(i);
        let groups = i.div_ceil(g);
        let (s_full, z_full) = (to_vec(fq.scales.val()), to_vec(fq.zeros.val()));
        let mut scales = vec![0f32; o * groups];
        let mut zeros = vec![0u8; o * groups];
        for r in 0..o {
            for k in 0..groups {
                scales[r * groups + k] = s_full[r * i + k * g];
                zeros[r * groups + k] = z_full[r * i + k * g] as u8;
            }
        }
        let base = Quantized { out_features: o, in_features: i, config: cfg, q: vec![0; o * i], scales, zeros };
        let q = base.requantize(&to_vec(p.merged_weight()));
        let packed = Packed::pack(&q).map_err(|e| LoraError::Config(format!("{site}: {e}")))?;
        Ok(QuantLinear::new(packed, p.bias.map(|b| b.val())))
    })
}
