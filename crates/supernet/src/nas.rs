//! Two-stage NAS for LLM compression: a structural search space over blocks, MLP width and
//! key/value groups, its exact cost, the samplers that train the super-network (uniform, sandwich,
//! grid-params, calibrate-mag) and their step source for the training loop ([`fit`]).
//!
//! The space has an embedding width, a depth (the `d` most important blocks, in order), and MLP
//! widths and key/value groups either shared by the kept blocks (homogeneous: LLaMA sub-networks
//! then extract into a plain Hugging Face config) or chosen per block (heterogeneous, as LoNAS
//! searches; extraction writes the `secateur_subnet` config extension).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secateur_elastic_lora::{Adapted, RankControl, SearchSpace, SubnetConfig};
use secateur_models::generate::token_tensor;
use secateur_models::{ArchSpec, CausalLm, DenseLm, LayerStructure, SiteKind, Sliceable, SubnetStructure};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::{Batch, Example};
use crate::train::{Activation, StepSource, TrainConfig, TrainReport, batch_ids, fit, lm_loss};

/// Choices of the structural search space (each list descending; index 0 is the largest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StructureSpace {
    /// Residual-stream (embedding) widths.
    pub hiddens: Vec<usize>,
    pub widths: Vec<usize>,
    pub groups: Vec<usize>,
    pub depths: Vec<usize>,
    /// Blocks by descending importance: depth `d` keeps the first `d` of them, in model order.
    pub block_order: Vec<usize>,
    /// One MLP width and one number of key/value groups per block (heterogeneous sub-networks,
    /// as LoNAS searches them) instead of one shared by every block.
    pub per_layer: bool,
}

/// One point of a [`StructureSpace`]: indices into its choice lists. `widths` and `groups` hold
/// one index per block of the super-network when the space is per-layer (blocks not kept
/// ignore theirs), one otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StructureChoice {
    pub hidden: usize,
    pub depth: usize,
    pub widths: Vec<usize>,
    pub groups: Vec<usize>,
}

impl StructureSpace {
    /// A default space: embedding widths 100/87.5/75%, MLP widths 100/87.5/75/62.5/50%, every
    /// group count down to half, depth down to 75% of the blocks; `block_order` by importance
    /// (or model order); homogeneous.
    pub fn preset(spec: &ArchSpec, block_order: Option<Vec<usize>>) -> Self {
        let fractions = |n: usize, ks: &[usize]| {
            let mut v: Vec<usize> = ks.iter().map(|k| (n * k / 8).max(1)).collect();
            v.dedup();
            v
        };
        let groups: Vec<usize> = (spec.num_kv_heads.div_ceil(2)..=spec.num_kv_heads).rev().collect();
        let l = spec.num_layers;
        let depths: Vec<usize> = ((l * 3).div_ceil(4)..=l).rev().collect();
        Self {
            hiddens: fractions(spec.hidden_size, &[8, 7, 6]),
            widths: fractions(spec.intermediate_size, &[8, 7, 6, 5, 4]),
            groups,
            depths,
            block_order: block_order.unwrap_or_else(|| (0..l).collect()),
            per_layer: false,
        }
    }

    /// Number of per-block entries of a choice.
    fn slots(&self) -> usize {
        if self.per_layer { self.block_order.len() } else { 1 }
    }

    /// The number of options of each search variable: hidden, depth, then the width and group
    /// slots (see [`Self::choice`]).
    pub fn variables(&self) -> Vec<usize> {
        let n = self.slots();
        let mut v = vec![self.hiddens.len(), self.depths.len()];
        v.extend(std::iter::repeat_n(self.widths.len(), n));
        v.extend(std::iter::repeat_n(self.groups.len(), n));
        v
    }

    /// The choice of a variable vector laid out as [`Self::variables`].
    pub fn choice(&self, x: &[usize]) -> StructureChoice {
        let n = self.slots();
        StructureChoice { hidden: x[0], depth: x[1], widths: x[2..2 + n].to_vec(), groups: x[2 + n..2 + 2 * n].to_vec() }
    }

    /// The variable vector of a choice (the inverse of [`Self::choice`]).
    pub fn encode(&self, c: &StructureChoice) -> Vec<usize> {
        let mut v = vec![c.hidden, c.depth];
        v.extend(&c.widths);
        v.extend(&c.groups);
        v
    }

    pub fn maximal(&self) -> StructureChoice {
        self.choice(&vec![0; self.variables().len()])
    }

    pub fn minimal(&self) -> StructureChoice {
        self.choice(&self.variables().iter().map(|n| n - 1).collect::<Vec<_>>())
    }

    /// The heuristic sub-network (the middle of every choice list, index `n / 2`).
    pub fn heuristic(&self) -> StructureChoice {
        self.choice(&self.variables().iter().map(|n| n / 2).collect::<Vec<_>>())
    }

    pub fn random(&self, rng: &mut StdRng) -> StructureChoice {
        self.choice(&self.variables().iter().map(|&n| rng.random_range(0..n)).collect::<Vec<_>>())
    }

    /// The sub-network of a choice.
    pub fn structure(&self, c: &StructureChoice) -> SubnetStructure {
        let mut kept: Vec<usize> = self.block_order[..self.depths[c.depth]].to_vec();
        kept.sort_unstable();
        let slot = |layer: usize| if self.per_layer { layer } else { 0 };
        SubnetStructure {
            layers: kept
                .into_iter()
                .map(|layer| LayerStructure {
                    layer,
                    mlp_width: self.widths[c.widths[slot(layer)]],
                    kv_groups: self.groups[c.groups[slot(layer)]],
                })
                .collect(),
            hidden_size: (c.hidden > 0).then(|| self.hiddens[c.hidden]),
        }
    }
}

/// Exact cost of a sub-network per token at `context` keys: (parameters, MACs) of its
/// architecture, counted by [`secateur_models::cost`].
pub fn structure_cost(spec: &ArchSpec, s: &SubnetStructure, context: usize) -> (usize, usize) {
    let c = secateur_models::cost::cost(&s.spec(spec), &std::collections::HashMap::new(), context);
    (c.params, c.macs())
}

/// How the super-network's sub-networks are drawn during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// One uniformly random sub-network per step.
    Random,
    /// Maximal, `k` random and minimal per step, gradients accumulated (BigNAS).
    Sandwich,
    /// A fixed grid: the parameter range split into `K` bins, each filled by rejection sampling
    /// (up to 1000 tries); steps draw uniformly from the grid plus maximal and minimal.
    GridParams,
    /// As grid-params, but per bin the candidate with the largest total weight magnitude among
    /// about 50 sampled.
    CalibrateMag,
}

/// The sub-networks a training run draws from.
pub struct Sampler {
    pub kind: SamplerKind,
    pub space: StructureSpace,
    /// Random sub-networks per sandwich step.
    pub sandwich_random: usize,
    /// The grid of grid-params and calibrate-mag (with maximal and minimal).
    pub grid: Vec<StructureChoice>,
}

impl Sampler {
    /// Builds a sampler; grid kinds fill `bins` parameter bins (the paper's K = 22).
    pub fn new<B: Backend>(kind: SamplerKind, space: StructureSpace, model: &DenseLm<B>, bins: usize, seed: u64) -> Self {
        let spec = model.spec().clone();
        let mut grid = Vec::new();
        if matches!(kind, SamplerKind::GridParams | SamplerKind::CalibrateMag) {
            let cost = |c: &StructureChoice| structure_cost(&spec, &space.structure(c), 0).0 as f64;
            let (lo, hi) = (cost(&space.minimal()), cost(&space.maximal()));
            let mut rng = StdRng::seed_from_u64(seed);
            let magnitude = |c: &StructureChoice| structure_magnitude(model, &space.structure(c));
            for k in 0..bins.max(1) {
                let (a, b) = (lo + (hi - lo) * k as f64 / bins as f64, lo + (hi - lo) * (k + 1) as f64 / bins as f64);
                let inside = |c: &StructureChoice| {
                    let p = cost(c);
                    p >= a && (p < b || (k + 1 == bins && p <= b))
                };
                let pick = match kind {
                    SamplerKind::GridParams => (0..1000).map(|_| space.random(&mut rng)).find(inside),
                    _ => {
                        let cands: Vec<StructureChoice> = (0..1000).map(|_| space.random(&mut rng)).filter(inside).take(50).collect();
                        cands.into_iter().map(|c| (magnitude(&c), c)).max_by(|x, y| x.0.total_cmp(&y.0)).map(|(_, c)| c)
                    }
                };
                if let Some(c) = pick
                    && !grid.contains(&c)
                {
                    grid.push(c);
                }
            }
            for c in [space.maximal(), space.minimal()] {
                if !grid.contains(&c) {
                    grid.push(c);
                }
            }
        }
        Self { kind, space, sandwich_random: 2, grid }
    }

    /// The sub-networks of training step `step`.
    pub fn step(&self, seed: u64, step: usize) -> Vec<StructureChoice> {
        let mut rng = StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match self.kind {
            SamplerKind::Random => vec![self.space.random(&mut rng)],
            SamplerKind::Sandwich => {
                let mut v = vec![self.space.maximal()];
                v.extend((0..self.sandwich_random).map(|_| self.space.random(&mut rng)));
                v.push(self.space.minimal());
                v
            }
            SamplerKind::GridParams | SamplerKind::CalibrateMag => vec![self.grid[rng.random_range(0..self.grid.len())].clone()],
        }
    }
}

/// Total absolute weight of the projections a sub-network keeps (of the MLP and the attention
/// output: the slices the structure keeps).
pub fn structure_magnitude<B: Backend>(model: &DenseLm<B>, s: &SubnetStructure) -> f64 {
    let spec = model.spec();
    let (e, d) = (s.hidden(spec), spec.head_dim);
    let projections = model.projections();
    s.layers
        .iter()
        .map(|l| {
            let dims = spec.layer(l.layer);
            let q = l.kv_groups * (dims.num_heads / dims.num_kv_heads) * d;
            let sum = |kind: SiteKind, rows: usize, cols: usize| {
                projections
                    .iter()
                    .find(|(site, _)| site.layer == l.layer && site.kind == kind)
                    .map_or(0.0, |(_, p)| p.weight.val().narrow(0, 0, rows).narrow(1, 0, cols).abs().sum().into_scalar().elem::<f64>())
            };
            let mut m = sum(SiteKind::Up, l.mlp_width, e) + sum(SiteKind::Down, e, l.mlp_width);
            if spec.gated_mlp {
                m += sum(SiteKind::Gate, l.mlp_width, e);
            }
            m + sum(SiteKind::O, e, q)
        })
        .sum()
}

/// The elastic LoRA ranks of step `step`'s sub-networks (LoNAS with elastic ranks): with the
/// sandwich rule the maximal sub-network gets the maximal ranks and the minimal one the
/// minimal ranks; every other sub-network draws one rank per group uniformly.
pub fn step_ranks(kind: SamplerKind, space: &SearchSpace, seed: u64, step: usize, n: usize) -> Vec<SubnetConfig> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5BD1_E995 ^ (step as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    (0..n)
        .map(|i| match kind {
            SamplerKind::Sandwich if i == 0 => space.maximal(),
            SamplerKind::Sandwich if i + 1 == n => space.minimal(),
            _ => SubnetConfig(space.groups.iter().map(|g| rng.random_range(0..g.choices.len())).collect()),
        })
        .collect()
}

/// Super-network training: per step the sampler's sub-networks, each with (LoNAS with elastic
/// ranks) the adapter ranks of [`step_ranks`].
pub struct SupernetSteps<'a> {
    pub sampler: &'a Sampler,
    pub ranks: Option<&'a RankControl>,
    pub seed: u64,
}

impl<B: Backend, P: Sliceable<B>> StepSource<B, P> for SupernetSteps<'_> {
    fn label(&self) -> &'static str {
        "super-network"
    }
    fn activations(&self, step: usize) -> Vec<Activation> {
        let subnets = self.sampler.step(self.seed, step);
        let ranks = self.ranks.map(|r| step_ranks(self.sampler.kind, &r.space, self.seed, step, subnets.len()));
        subnets
            .iter()
            .enumerate()
            .map(|(i, c)| Activation { ranks: ranks.as_ref().map(|r| r[i].clone()), structure: Some(self.sampler.space.structure(c)) })
            .collect()
    }
    fn forward(&self, model: &CausalLm<B, P>, a: &Activation, batch: &Batch) -> Result<Tensor<B, 3>, TrainError> {
        if let (Some(control), Some(r)) = (self.ranks, &a.ranks) {
            control.apply(r)?;
        }
        Ok(match &a.structure {
            Some(s) => model.forward_subnet(batch_ids(model, batch), &batch.mask, s)?,
            None => model.forward(batch_ids(model, batch), &batch.mask)?,
        })
    }
    fn finish(&self) -> Result<(), TrainError> {
        if let Some(r) = self.ranks {
            r.apply(&r.space.maximal())?;
        }
        Ok(())
    }
}

/// Trains `model` as a super-network ([`fit`] with [`SupernetSteps`]): per optimizer step, the
/// sampler's sub-networks each run forward and backward on the step's batch (gradients
/// accumulated). Every trainable parameter learns: all of them for full fine-tuning, the
/// adapters only when the base is frozen (LoNAS). With `ranks` (LoNAS with elastic ranks), each
/// sub-network also activates the ranks of [`step_ranks`]. Checkpoints and resumption as in
/// [`fit`].
pub fn train_supernet<B: AutodiffBackend, P: Sliceable<B> + Adapted<B>>(
    model: CausalLm<B, P>,
    sampler: &Sampler,
    ranks: Option<&RankControl>,
    examples: &[Example],
    cfg: &TrainConfig,
    pad: u32,
    checkpoint_dir: Option<&Path>,
) -> Result<(CausalLm<B, P>, TrainReport), TrainError>
where
    CausalLm<B, P>: AutodiffModule<B>,
{
    fit(model, &SupernetSteps { sampler, ranks, seed: cfg.seed }, examples, cfg, pad, checkpoint_dir)
}

/// Mean next-token loss of a sub-network on `examples` (target tokens only).
pub fn validation_loss<B: Backend, P: Sliceable<B>>(
    model: &CausalLm<B, P>,
    s: &SubnetStructure,
    examples: &[Example],
    pad: u32,
    batch_size: usize,
) -> Result<f64, TrainError> {
    let device = model.device();
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::new(&refs, pad);
        let n = batch.target_tokens();
        let logits = model.forward_subnet(token_tensor::<B>(&batch.ids, &device), &batch.mask, s)?;
        total += lm_loss(logits, &batch, 1.0).into_scalar().elem::<f64>();
        count += n;
    }
    Ok(total / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ArchSpec {
        let cfg = serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2
        });
        ArchSpec::from_config_value(std::path::Path::new("config.json"), cfg).unwrap()
    }

    #[test]
    fn preset_choices_and_structures() {
        let space = StructureSpace::preset(&spec(), Some(vec![2, 0, 3, 1]));
        assert_eq!(space.hiddens, vec![8, 7, 6]);
        assert_eq!(space.widths, vec![16, 14, 12, 10, 8]);
        assert_eq!(space.groups, vec![2, 1]);
        assert_eq!(space.depths, vec![4, 3]);
        let s = space.structure(&space.minimal());
        // Depth 3 keeps the 3 most important blocks (2, 0, 3), in model order.
        assert_eq!(s.layers.iter().map(|l| l.layer).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert!(s.layers.iter().all(|l| l.mlp_width == 8 && l.kv_groups == 1));
        assert_eq!(s.hidden_size, Some(6));
        assert_eq!(space.structure(&space.maximal()), SubnetStructure::full(&spec()));
    }

    #[test]
    fn per_layer_choices() {
        let mut space = StructureSpace::preset(&spec(), None);
        space.per_layer = true;
        assert_eq!(space.variables(), vec![3, 2, 5, 5, 5, 5, 2, 2, 2, 2]);
        let x = [1, 0, 0, 1, 2, 3, 1, 0, 1, 0];
        let c = space.choice(&x);
        assert_eq!(space.encode(&c), x.to_vec());
        let s = space.structure(&c);
        assert_eq!(s.layers.iter().map(|l| (l.mlp_width, l.kv_groups)).collect::<Vec<_>>(), vec![(16, 1), (14, 2), (12, 1), (10, 2)]);
        assert_eq!(s.hidden_size, Some(7));
        assert_eq!(space.heuristic(), space.choice(&[1, 1, 2, 2, 2, 2, 1, 1, 1, 1]));
    }

    #[test]
    fn cost_by_hand() {
        let spec = spec();
        let s = SubnetStructure { layers: vec![LayerStructure { layer: 0, mlp_width: 8, kv_groups: 1 }], hidden_size: None };
        // embed 80 + head 80 + final norm 8; block: q 8x4... head_dim 2: q = 1*2*2 = 4, kv = 2:
        // attn 8*(4+4) + 4*8 = 96, mlp 3*8*8 = 192, norms 16.
        let (p, m) = structure_cost(&spec, &s, 10);
        assert_eq!(p, 80 + 80 + 8 + 96 + 192 + 16);
        assert_eq!(m, 80 + 96 + 192 + 2 * 2 * 2 * 10);
    }
}
