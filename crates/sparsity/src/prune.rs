//! Block-by-block pruning of a model's projections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::{Module, Param};
use burn::prelude::*;
use secateur_models::{AttnContext, Block, Dense, DenseLm, Projection, Site, SiteKind};
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

/// Accumulated squared input norms per projection kind of the block being calibrated.
struct Stats {
    /// 1 at real tokens, 0 at padding, of the batch being run.
    rows: Option<Vec<f32>>,
    sq: HashMap<SiteKind, Vec<f64>>,
}

/// A dense projection that adds the squared L2 norm of each input feature (over real tokens) to
/// the shared statistics.
#[derive(Module, Debug)]
struct Recorder<B: Backend> {
    inner: Dense<B>,
    #[module(skip)]
    kind: SiteKind,
    #[module(skip)]
    stats: Arc<Mutex<Stats>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stats")
    }
}

impl<B: Backend> Projection<B> for Recorder<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, i] = x.dims();
        let mut stats = self.stats.lock().expect("calibration statistics");
        let x2 = x.clone().reshape([b * s, i]);
        let sq = x2.clone() * x2;
        let sq = match &stats.rows {
            Some(rows) => sq * Tensor::<B, 2>::from_data(TensorData::new(rows.clone(), [b * s, 1]), &x.device()),
            None => sq,
        };
        let sums: Vec<f32> = sq.sum_dim(0).into_data().convert::<f32>().to_vec().expect("f32 statistics");
        let acc = stats.sq.entry(self.kind).or_insert_with(|| vec![0.0; i]);
        acc.iter_mut().zip(&sums).for_each(|(a, s)| *a += *s as f64);
        drop(stats);
        self.inner.forward(x)
    }
}

struct Batch<B: Backend> {
    hidden: Tensor<B, 3>,
    ctx: AttnContext<B>,
    rows: Vec<f32>,
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
    let mut batches: Vec<Batch<B>> = if wanda { embed_batches(&model, calibration, cfg.batch_size) } else { Vec::new() };

    let bar = secateur_runs::Progress::new("pruning", "blocks", spec.num_layers, 0, cfg.progress);
    let secateur_models::CausalLm { embed, embed_norm, blocks, final_norm, lm_head, head_q8, spec: model_spec } = model;
    let mut pruned_blocks = Vec::with_capacity(blocks.len());
    let mut masks = Vec::new();
    for (layer, block) in blocks.into_iter().enumerate() {
        let sq = if wanda { calibrate_block(block.clone(), layer, &batches)? } else { HashMap::new() };
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
        for batch in &mut batches {
            batch.hidden = block.forward(batch.hidden.clone(), &batch.ctx, None);
        }
        pruned_blocks.push(block);
        bar.inc(1);
    }
    bar.finish();
    Ok(PruneOutcome {
        model: secateur_models::CausalLm { embed, embed_norm, blocks: pruned_blocks, final_norm, lm_head, head_q8, spec: model_spec },
        masks,
    })
}

/// Right-padded calibration batches, embedded, with their attention contexts and token weights.
fn embed_batches<B: Backend>(model: &DenseLm<B>, calibration: &[Vec<u32>], batch_size: usize) -> Vec<Batch<B>> {
    let device = model.device();
    calibration
        .chunks(batch_size.max(1))
        .map(|chunk| {
            let (ids, mask) = secateur_models::generate::right_pad(chunk, 0);
            let rows: Vec<f32> = mask.iter().flatten().map(|&m| if m { 1.0 } else { 0.0 }).collect();
            Batch {
                hidden: model.embed_tokens(secateur_models::generate::token_tensor::<B>(&ids, &device)),
                ctx: AttnContext::for_batch(model.spec.clone(), &mask, &device),
                rows,
            }
        })
        .collect()
}

/// The squared L2 norm of every input feature of every projection over the real tokens of
/// `calibration`, on the dense model (each block sees the dense blocks before it). This is the
/// activation statistic behind Wanda and behind importance reordering.
pub fn input_norms<B: Backend>(
    model: &DenseLm<B>,
    calibration: &[Vec<u32>],
    batch_size: usize,
) -> Result<HashMap<Site, Vec<f64>>, SparsityError> {
    let mut batches = embed_batches(model, calibration, batch_size);
    let mut out = HashMap::new();
    for (layer, block) in model.blocks.iter().enumerate() {
        for (kind, sq) in calibrate_block(block.clone(), layer, &batches)? {
            out.insert(Site::new(layer, kind), sq);
        }
        for batch in &mut batches {
            batch.hidden = block.forward(batch.hidden.clone(), &batch.ctx, None);
        }
    }
    Ok(out)
}

/// Squared input norms of every projection of a dense block over all calibration batches.
fn calibrate_block<B: Backend>(
    block: Block<B, Dense<B>>,
    layer: usize,
    batches: &[Batch<B>],
) -> Result<HashMap<SiteKind, Vec<f64>>, SparsityError> {
    let stats = Arc::new(Mutex::new(Stats { rows: None, sq: HashMap::new() }));
    let recording = block.map_projections(layer, &mut |site: Site, inner| {
        Ok::<_, SparsityError>(Recorder { inner, kind: site.kind, stats: stats.clone() })
    })?;
    for batch in batches {
        stats.lock().expect("statistics").rows = Some(batch.rows.clone());
        let _ = recording.forward(batch.hidden.clone(), &batch.ctx, None);
    }
    drop(recording);
    let stats = Arc::try_unwrap(stats)
        .map_err(|_| SparsityError::Config("calibration statistics still shared".into()))?
        .into_inner()
        .expect("statistics");
    Ok(stats.sq)
}
