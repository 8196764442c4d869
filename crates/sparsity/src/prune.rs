//! Block-by-block pruning of a model's projections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::{Module, Param};
use burn::prelude::*;
use secateur_models::{AttnContext, Block, CausalLm, Dense, DenseLm, Projection, Site, SiteKind};
use serde::Serialize;

use crate::SparsityError;
use crate::mask::{Pattern, ScoreMethod, scores, select_mask};

/// What to prune and how.
#[derive(Debug, Clone, Serialize)]
pub struct PruneConfig {
    pub method: ScoreMethod,
    pub pattern: Pattern,
    /// Calibration sequences per forward batch.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// The keep-mask of one site (`true` = kept), row-major `[out, in]`.
#[derive(Debug, Clone)]
pub struct SiteMask {
    pub site: Site,
    pub shape: [usize; 2],
    pub keep: Vec<bool>,
}

impl SiteMask {
    /// Fraction of zeroed weights.
    pub fn sparsity(&self) -> f64 {
        self.keep.iter().filter(|k| !**k).count() as f64 / self.keep.len() as f64
    }
}

/// A pruned model with its masks.
pub struct PruneOutcome<B: Backend> {
    pub model: DenseLm<B>,
    pub masks: Vec<SiteMask>,
}

/// What a calibration pass is shown: the input of every projection of the block being
/// calibrated, once per projection and batch, in forward order (projections that share an input,
/// such as q, k and v, each see it).
pub trait InputObserver<B: Backend>: Send {
    /// `x`: `[tokens, in]` inputs of the projection `kind`; `rows`: `[tokens, 1]`, 1 at real
    /// tokens and 0 at padding.
    fn observe(&mut self, kind: SiteKind, x: Tensor<B, 2>, rows: Tensor<B, 2>);
}

/// Wanda's statistic: the squared L2 norm of each input feature over the real tokens, per kind.
#[derive(Default)]
struct SquaredNorms {
    sq: HashMap<SiteKind, Vec<f64>>,
}

impl<B: Backend> InputObserver<B> for SquaredNorms {
    fn observe(&mut self, kind: SiteKind, x: Tensor<B, 2>, rows: Tensor<B, 2>) {
        let i = x.dims()[1];
        let sq = x.clone() * x * rows;
        let sums: Vec<f32> = sq.sum_dim(0).into_data().convert::<f32>().to_vec().expect("f32 statistics");
        let acc = self.sq.entry(kind).or_insert_with(|| vec![0.0; i]);
        acc.iter_mut().zip(&sums).for_each(|(a, s)| *a += *s as f64);
    }
}

/// An observer behind a lock, seen without its type by the recorders.
trait Slot<B: Backend>: Send + Sync {
    fn observe(&self, kind: SiteKind, x: Tensor<B, 2>, rows: Tensor<B, 2>);
}

impl<B: Backend, O: InputObserver<B>> Slot<B> for Mutex<O> {
    fn observe(&self, kind: SiteKind, x: Tensor<B, 2>, rows: Tensor<B, 2>) {
        self.lock().expect("calibration observer").observe(kind, x, rows);
    }
}

/// The batch's token weights and the observer, shared by the recorders of one block.
struct Shared<B: Backend> {
    rows: Mutex<Option<Tensor<B, 2>>>,
    observer: Arc<dyn Slot<B>>,
}

impl<B: Backend> std::fmt::Debug for Shared<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

/// [`Shared`] with its backend erased (a field that names the backend cannot be skipped by
/// burn's `Module` derive).
#[derive(Clone)]
struct Erased(Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Erased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

/// A dense projection that shows its input to the block's observer.
#[derive(Module, Debug)]
struct Recorder<B: Backend> {
    inner: Dense<B>,
    #[module(skip)]
    kind: SiteKind,
    #[module(skip)]
    shared: Erased,
}

impl<B: Backend> Projection<B> for Recorder<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, i] = x.dims();
        let shared = self.shared.0.downcast_ref::<Shared<B>>().expect("the recorder's own backend");
        let rows = shared.rows.lock().expect("calibration rows").clone().expect("rows set before the forward");
        shared.observer.observe(self.kind, x.clone().reshape([b * s, i]), rows);
        if self.kind == SiteKind::Down {
            // The last projection of every block feeds only the block's output, which a
            // calibration pass discards: skip its product.
            let out = self.inner.weight.dims()[0];
            return Tensor::zeros([b, s, out], &x.device());
        }
        self.inner.forward(x)
    }
}

/// One right-padded calibration batch on its way through the blocks.
struct Batch<B: Backend> {
    hidden: Tensor<B, 3>,
    ctx: AttnContext<B>,
    /// `[tokens, 1]`: 1 at real tokens, 0 at padding.
    rows: Tensor<B, 2>,
}

/// Calibration sequences on their way through a model block by block, as Wanda and GPTQ
/// calibrate: the hidden states entering the next block, batch by batch (right-padded, with
/// their attention contexts and the weights of the real tokens).
pub struct CalibrationBatches<B: Backend> {
    batches: Vec<Batch<B>>,
}

impl<B: Backend> CalibrationBatches<B> {
    /// Embeds `calibration` in batches of `batch_size` sequences.
    pub fn embed<P: Projection<B>>(model: &CausalLm<B, P>, calibration: &[Vec<u32>], batch_size: usize) -> Self {
        let device = model.device();
        let batches = calibration
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let (ids, mask) = secateur_models::generate::right_pad(chunk, 0);
                let rows: Vec<f32> = mask.iter().flatten().map(|&m| if m { 1.0 } else { 0.0 }).collect();
                let n = rows.len();
                Batch {
                    hidden: model.embed_tokens(secateur_models::generate::token_tensor::<B>(&ids, &device)),
                    ctx: AttnContext::for_batch(model.spec.clone(), &mask, &device),
                    rows: Tensor::from_data(TensorData::new(rows, [n, 1]), &device),
                }
            })
            .collect();
        Self { batches }
    }

    /// Runs every batch through `block`, showing each projection's input to `observer`; the
    /// hidden states are left as they were (the block's output is discarded, so the down
    /// projection's product is not computed).
    pub fn observe<O: InputObserver<B> + 'static>(&self, block: Block<B, Dense<B>>, layer: usize, observer: O) -> Result<O, SparsityError> {
        let typed = Arc::new(Mutex::new(observer));
        let shared = Arc::new(Shared { rows: Mutex::new(None), observer: typed.clone() as Arc<dyn Slot<B>> });
        let recording = block.map_projections(layer, &mut |site: Site, inner| {
            Ok::<_, SparsityError>(Recorder { inner, kind: site.kind, shared: Erased(shared.clone()) })
        })?;
        for batch in &self.batches {
            *shared.rows.lock().expect("calibration rows") = Some(batch.rows.clone());
            let _ = recording.forward(batch.hidden.clone(), &batch.ctx, None);
        }
        drop((recording, shared));
        let typed = Arc::try_unwrap(typed).map_err(|_| SparsityError::Config("calibration observer still shared".into()))?;
        Ok(typed.into_inner().expect("calibration observer"))
    }

    /// Replaces the hidden states by the output of `block` (the next block's input).
    pub fn advance<P: Projection<B>>(&mut self, block: &Block<B, P>) {
        for batch in &mut self.batches {
            batch.hidden = block.forward(batch.hidden.clone(), &batch.ctx, None);
        }
    }
}

/// Prunes every projection inside the decoder blocks (not the embedding or the LM head).
///
/// Wanda statistics of block `l` are collected on the dense block `l` whose inputs are the
/// outputs of the pruned blocks `0..l`; magnitude pruning needs no calibration data.
pub fn prune<B: Backend>(model: DenseLm<B>, calibration: &[Vec<u32>], cfg: &PruneConfig) -> Result<PruneOutcome<B>, SparsityError> {
    for (site, [_, inp]) in model.sites() {
        cfg.pattern.validate(inp).map_err(|e| SparsityError::Config(format!("{site}: {e}")))?;
    }
    let wanda = cfg.method == ScoreMethod::Wanda;
    if wanda && calibration.iter().all(Vec::is_empty) {
        return Err(SparsityError::Config("Wanda needs calibration sequences".into()));
    }
    let vocab = model.spec().vocab_size;
    if let Some(t) = calibration.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(SparsityError::Config(format!("calibration token id {t} is outside the vocabulary of {vocab}")));
    }
    let device = model.device();
    let spec = model.spec.clone();
    let mut batches = CalibrationBatches::embed(&model, if wanda { calibration } else { &[] }, cfg.batch_size);

    let bar = secateur_runs::Progress::new("pruning", "blocks", spec.num_layers, 0, cfg.progress);
    let secateur_models::CausalLm { embed, embed_norm, blocks, final_norm, lm_head, head_q8, spec: model_spec } = model;
    let mut pruned_blocks = Vec::with_capacity(blocks.len());
    let mut masks = Vec::new();
    for (layer, block) in blocks.into_iter().enumerate() {
        let sq = if wanda { batches.observe(block.clone(), layer, SquaredNorms::default())?.sq } else { HashMap::new() };
        let block = block.map_projections(layer, &mut |site, dense: Dense<B>| {
            let [out, inp] = dense.shape();
            let w: Vec<f32> = dense.weight.val().into_data().convert::<f32>().to_vec().expect("f32 weight");
            let s = scores(&w, inp, sq.get(&site.kind).map(Vec::as_slice));
            let keep = select_mask(&s, inp, cfg.pattern);
            let pruned: Vec<f32> = w.iter().zip(&keep).map(|(w, k)| if *k { *w } else { 0.0 }).collect();
            masks.push(SiteMask { site, shape: [out, inp], keep });
            let weight = Tensor::from_data(TensorData::new(pruned, [out, inp]), &device);
            Ok::<_, SparsityError>(Dense { weight: Param::from_tensor(weight), bias: dense.bias })
        })?;
        batches.advance(&block);
        pruned_blocks.push(block);
        bar.inc(1);
    }
    bar.finish();
    Ok(PruneOutcome {
        model: secateur_models::CausalLm { embed, embed_norm, blocks: pruned_blocks, final_norm, lm_head, head_q8, spec: model_spec },
        masks,
    })
}

/// The squared L2 norm of every input feature of every projection over the real tokens of
/// `calibration`, on the dense model (each block sees the dense blocks before it). This is the
/// activation statistic behind Wanda and behind importance reordering.
pub fn input_norms<B: Backend>(
    model: &DenseLm<B>,
    calibration: &[Vec<u32>],
    batch_size: usize,
) -> Result<HashMap<Site, Vec<f64>>, SparsityError> {
    let mut batches = CalibrationBatches::embed(model, calibration, batch_size);
    let mut out = HashMap::new();
    for (layer, block) in model.blocks.iter().enumerate() {
        for (kind, sq) in batches.observe(block.clone(), layer, SquaredNorms::default())?.sq {
            out.insert(Site::new(layer, kind), sq);
        }
        batches.advance(block);
    }
    Ok(out)
}
