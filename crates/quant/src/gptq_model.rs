//! GPTQ through a whole model, block by block, as the reference's sequential loop does it: the
//! Hessians of block `l` are collected on the still dense block `l`, whose inputs are the
//! outputs of the already quantized blocks `0..l`; the block is then quantized and run again
//! to produce the next block's inputs.
//!
//! Projections that share an input (q, k and v; gate and up) share one Hessian. Memory: the
//! calibration hidden states (`tokens x hidden` f32) and one block's Hessians in f64 (for a
//! 135M LLaMA: 3 of 576² and one of 1536², about 27 MB).

use std::collections::HashMap;

use burn::module::Param;
use burn::prelude::*;
use secateur_models::{Block, CausalLm, Dense, DenseLm, Site, SiteKind};
use secateur_sparsity::{CalibrationBatches, InputObserver};
use serde::Serialize;

use crate::QuantError;
use crate::gptq::{Factored, GptqConfig, Hessian, gptq_factored, reconstruction_error};
use crate::linear::{QuantLinear, QuantLm};
use crate::pack::Packed;
use crate::rtn::quantize;

/// What GPTQ did to one projection.
#[derive(Debug, Clone, Serialize)]
pub struct GptqSiteReport {
    pub site: String,
    /// Calibration tokens behind its Hessian.
    pub tokens: u64,
    /// Inputs never active on the calibration data.
    pub dead: usize,
    /// Exact zeros of the input weight (kept).
    pub zeros: usize,
    /// `‖W·X - Ŵ·X‖² / N` (with `H = 2/N·XᵀX`: half of `Σ ΔᵀHΔ`) for GPTQ ...
    pub gptq_error: f64,
    /// ... and for round-to-nearest with the same bits and groups.
    pub rtn_error: f64,
}

/// A model quantized by GPTQ, with a report per projection.
pub struct GptqOutcome<B: Backend> {
    pub model: QuantLm<B>,
    pub sites: Vec<GptqSiteReport>,
}

/// Which projections read the same input: q, k, v (or fused qkv); o; gate and up; down.
fn input_of(kind: SiteKind) -> usize {
    match kind {
        SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv => 0,
        SiteKind::O => 1,
        SiteKind::Gate | SiteKind::Up => 2,
        SiteKind::Down => 3,
    }
}

/// Accumulates `Σ x xᵀ` over real tokens, once per distinct input of a block.
struct HessianObserver {
    /// The first kind of every input in forward order (the one that records it).
    leaders: Vec<SiteKind>,
    hessians: HashMap<usize, Hessian>,
}

impl<B: Backend> InputObserver<B> for HessianObserver {
    fn observe(&mut self, kind: SiteKind, x: Tensor<B, 2>, rows: Tensor<B, 2>) {
        if !self.leaders.contains(&kind) {
            return;
        }
        let n = x.dims()[1];
        let weights = host(rows);
        let mut x = host(x);
        let mut tokens = 0u64;
        for (row, &w) in x.chunks_mut(n).zip(&weights) {
            if w == 0.0 {
                row.fill(0.0);
            } else {
                tokens += 1;
            }
        }
        self.hessians.entry(input_of(kind)).or_insert_with(|| Hessian::new(n)).add_inputs(&x, tokens);
    }
}

fn host(t: Tensor<impl Backend, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 weight")
}

/// Quantizes every projection of the decoder blocks with GPTQ on `calibration` (token-id
/// sequences, run in right-padded batches of `batch_size`; padding is excluded from the
/// Hessians). Embeddings, norms and the head stay f32 (the head gets its int8 decoding copy).
pub fn gptq_model<B: Backend>(
    model: DenseLm<B>,
    calibration: &[Vec<u32>],
    cfg: &GptqConfig,
    batch_size: usize,
    progress: bool,
) -> Result<GptqOutcome<B>, QuantError> {
    for (site, [_, inp]) in model.sites() {
        cfg.validate(inp).map_err(|e| QuantError::Config(format!("{site}: {e}")))?;
    }
    if calibration.iter().all(Vec::is_empty) {
        return Err(QuantError::Config("GPTQ needs calibration sequences (--calibration)".into()));
    }
    let vocab = model.spec().vocab_size;
    if let Some(t) = calibration.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(QuantError::Config(format!("calibration token id {t} is outside the vocabulary of {vocab}")));
    }
    let device = model.device();
    let mut batches = CalibrationBatches::embed(&model, calibration, batch_size);
    let bar = secateur_runs::Progress::new("GPTQ", "blocks", model.spec().num_layers, 0, progress);
    let CausalLm { embed, embed_norm, blocks, final_norm, lm_head, head_q8, spec } = model;
    let mut quant_blocks: Vec<Block<B, QuantLinear<B>>> = Vec::with_capacity(blocks.len());
    let mut sites = Vec::new();
    for (layer, block) in blocks.into_iter().enumerate() {
        let mut leaders = Vec::new();
        for (kind, _) in block.projections() {
            if !leaders.iter().any(|&k| input_of(k) == input_of(kind)) {
                leaders.push(kind);
            }
        }
        let observer = batches.observe(block.clone(), layer, HessianObserver { leaders, hessians: HashMap::new() })?;
        let mut packed: HashMap<SiteKind, Packed> = HashMap::new();
        // One factorisation per distinct input (q, k and v share theirs).
        let mut factored: HashMap<usize, (Vec<f64>, Factored)> = HashMap::new();
        let dequantized = block.map_projections(layer, &mut |site: Site, dense: Dense<B>| {
            let [o, i] = dense.shape();
            let name = site.to_string();
            let input = input_of(site.kind);
            let hess = observer
                .hessians
                .get(&input)
                .ok_or_else(|| QuantError::Gptq { site: name.clone(), reason: "no calibration input reached this projection".into() })?;
            if let std::collections::hash_map::Entry::Vacant(slot) = factored.entry(input) {
                let h = hess.matrix();
                let f = Factored::new(&h, i, cfg, &name)?;
                slot.insert((h, f));
            }
            let (h, f) = &factored[&input];
            let w = host(dense.weight.val());
            let g = gptq_factored(&w, o, f, cfg, &name)?;
            let deq = g.dequantize();
            let rtn = quantize(&w, o, i, cfg.quant)?.dequantize();
            sites.push(GptqSiteReport {
                site: name.clone(),
                tokens: hess.tokens,
                dead: g.dead,
                zeros: w.iter().filter(|v| **v == 0.0).count(),
                gptq_error: reconstruction_error(&w, &deq, h, i) / 2.0,
                rtn_error: reconstruction_error(&w, &rtn, h, i) / 2.0,
            });
            packed.insert(
                site.kind,
                Packed::pack_permuted(&g.quantized, g.perm.as_deref()).map_err(|e| QuantError::Config(format!("{name}: {e}")))?,
            );
            let weight = Tensor::from_data(TensorData::new(deq, [o, i]), &device);
            Ok::<_, QuantError>(Dense { weight: Param::from_tensor(weight), bias: dense.bias })
        })?;
        batches.advance(&dequantized);
        let quantized = dequantized.map_projections(layer, &mut |site: Site, dense: Dense<B>| {
            let p = packed.remove(&site.kind).expect("quantized above");
            QuantLinear::from_packed(p, dense.bias.map(|b| b.val())).map_err(|e| QuantError::Config(format!("{site}: {e}")))
        })?;
        quant_blocks.push(quantized);
        bar.inc(1);
    }
    bar.finish();
    let model = CausalLm { embed, embed_norm, blocks: quant_blocks, final_norm, lm_head, head_q8, spec };
    Ok(GptqOutcome { model: model.quantize_head(), sites })
}
