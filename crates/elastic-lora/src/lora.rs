//! The elastic LoRA projection and its attachment to a model.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use secateur_models::{CausalLm, Dense, Projection, Site};
use serde::{Deserialize, Serialize};

use crate::LoraError;
use crate::space::{SearchSpace, SubnetConfig};

/// How the adapter output is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// `alpha / r_max` for every active rank (the reference code's choice; PEFT computes it once).
    #[default]
    MaxRank,
    /// `alpha / r` for the active rank `r`.
    ActiveRank,
}

/// LoRA factors with a maximal rank; the active rank is shared with a [`RankControl`].
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[r_max, in]`.
    pub a: Param<Tensor<B, 2>>,
    /// `[out, r_max]`.
    pub b: Param<Tensor<B, 2>>,
    pub alpha: f64,
    #[module(skip)]
    pub scaling: Scaling,
    #[module(skip)]
    pub rank: Arc<AtomicUsize>,
}

impl<B: Backend> LoraAdapter<B> {
    /// The maximal rank.
    pub fn max_rank(&self) -> usize {
        self.a.val().dims()[0]
    }

    /// The active rank.
    pub fn active_rank(&self) -> usize {
        self.rank.load(Ordering::Relaxed).min(self.max_rank())
    }

    /// The scale `s` of the adapter output at rank `r`.
    pub fn scale_at(&self, r: usize) -> f64 {
        match self.scaling {
            Scaling::MaxRank => self.alpha / self.max_rank() as f64,
            Scaling::ActiveRank => self.alpha / r.max(1) as f64,
        }
    }

    /// `(A[:r], B[:, :r])` at the active rank.
    pub fn active_factors(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let r = self.active_rank();
        (self.a.val().narrow(0, 0, r), self.b.val().narrow(1, 0, r))
    }

    /// `s·(x·A[:r]ᵀ)·B[:, :r]ᵀ` for `x: [batch, seq, in]`; never builds the dense `B·A`.
    pub fn delta(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let r = self.active_rank();
        let (a, b) = self.active_factors();
        let low = secateur_models::nn::linear(x, a, None);
        secateur_models::nn::linear(low, b, None).mul_scalar(self.scale_at(r))
    }

    /// The dense update `s·B[:, :r]·A[:r]` `[out, in]` at the active rank (for merging).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let (a, b) = self.active_factors();
        b.matmul(a).mul_scalar(self.scale_at(self.active_rank()))
    }
}

/// A frozen base projection plus an optional elastic LoRA adapter.
#[derive(Module, Debug)]
pub struct ElasticLoraLinear<B: Backend, P: Module<B>> {
    pub base: P,
    pub adapter: Option<LoraAdapter<B>>,
}

impl<B: Backend, P: Projection<B>> Projection<B> for ElasticLoraLinear<B, P> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.adapter {
            Some(ad) if ad.active_rank() > 0 => self.base.forward(x.clone()) + ad.delta(x),
            _ => self.base.forward(x),
        }
    }
}

/// Projections that may carry an elastic adapter (what training and export work on).
pub trait Adapted<B: Backend> {
    fn adapter(&self) -> Option<&LoraAdapter<B>>;
    fn adapter_mut(&mut self) -> Option<&mut LoraAdapter<B>>;
}

/// A plain projection carries none (full-parameter training trains the weights themselves).
impl<B: Backend> Adapted<B> for Dense<B> {
    fn adapter(&self) -> Option<&LoraAdapter<B>> {
        None
    }
    fn adapter_mut(&mut self) -> Option<&mut LoraAdapter<B>> {
        None
    }
}

impl<B: Backend, P: Module<B>> Adapted<B> for ElasticLoraLinear<B, P> {
    fn adapter(&self) -> Option<&LoraAdapter<B>> {
        self.adapter.as_ref()
    }
    fn adapter_mut(&mut self) -> Option<&mut LoraAdapter<B>> {
        self.adapter.as_mut()
    }
}

/// A model whose projections carry elastic adapters.
pub type AdaptedLm<B, P = Dense<B>> = CausalLm<B, ElasticLoraLinear<B, P>>;

/// Adapter hyper-parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraConfig {
    pub alpha: f64,
    pub scaling: Scaling,
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { alpha: 64.0, scaling: Scaling::MaxRank, seed: 0 }
    }
}

/// Sets the active ranks of an adapted model, group by group.
#[derive(Debug, Clone)]
pub struct RankControl {
    pub space: SearchSpace,
    cells: HashMap<Site, Arc<AtomicUsize>>,
}

impl RankControl {
    /// A control over the given rank cells (one per adapted site).
    pub fn from_cells(space: SearchSpace, cells: HashMap<Site, Arc<AtomicUsize>>) -> Self {
        Self { space, cells }
    }

    /// Activates a sub-adapter: every site of group `g` gets rank `choices[config[g]]`.
    pub fn apply(&self, config: &SubnetConfig) -> Result<(), LoraError> {
        let ranks = self.space.ranks(config)?;
        for (g, group) in self.space.groups.iter().enumerate() {
            for site in &group.sites {
                self.cells[site].store(ranks[g], Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The active rank of every adapted site.
    pub fn ranks(&self) -> HashMap<Site, usize> {
        self.cells.iter().map(|(s, c)| (*s, c.load(Ordering::Relaxed))).collect()
    }
}

/// Makes the adapters of a search space's sites, site by site, and collects their rank cells.
pub(crate) struct AdapterFactory<'a> {
    max_rank: HashMap<Site, usize>,
    cfg: &'a LoraConfig,
    pub(crate) cells: HashMap<Site, Arc<AtomicUsize>>,
}

impl<'a> AdapterFactory<'a> {
    pub(crate) fn new(space: &SearchSpace, cfg: &'a LoraConfig) -> Self {
        let max_rank = space
            .groups
            .iter()
            .flat_map(|g| {
                let r = g.choices.iter().copied().max().unwrap_or(0);
                g.sites.iter().map(move |s| (*s, r))
            })
            .collect();
        Self { max_rank, cfg, cells: HashMap::new() }
    }

    /// The adapter of `site` (`[out, in]`), at its maximal rank, or `None` outside the space:
    /// A Kaiming-uniform with bound `1/sqrt(in)` and B zero, as PEFT initialises them.
    pub(crate) fn make<B: Backend>(&mut self, site: Site, [out, inp]: [usize; 2], device: &B::Device) -> Option<LoraAdapter<B>> {
        let r = *self.max_rank.get(&site)?;
        let cell = Arc::new(AtomicUsize::new(r));
        self.cells.insert(site, cell.clone());
        Some(LoraAdapter {
            a: stable_param(site, "lora_A", kaiming_uniform(site, self.cfg.seed, [r, inp], device)),
            b: stable_param(site, "lora_B", Tensor::zeros([out, r], device)),
            alpha: self.cfg.alpha,
            scaling: self.cfg.scaling,
            rank: cell,
        })
    }
}

/// Wraps every projection of `model` in an [`ElasticLoraLinear`]; the sites of `space` get an
/// adapter of rank `max(choices)` (A Kaiming-uniform with bound `1/sqrt(in)`, B zero, as PEFT),
/// the others none. The base projections are frozen. The maximal sub-adapter is active.
pub fn attach<B: Backend, P: Projection<B>>(
    model: CausalLm<B, P>,
    space: &SearchSpace,
    cfg: &LoraConfig,
    device: &B::Device,
) -> Result<(AdaptedLm<B, P>, RankControl), LoraError> {
    space.validate_for(&model.sites())?;
    let mut adapters = AdapterFactory::new(space, cfg);
    let shapes: HashMap<Site, [usize; 2]> = model.sites().into_iter().collect();
    let adapted = model.map_projections(|site, base: P| {
        let adapter = adapters.make(site, shapes[&site], device);
        Ok::<_, LoraError>(ElasticLoraLinear { base: base.no_grad(), adapter })
    })?;
    let cells = adapters.cells;
    Ok((adapted, RankControl { space: space.clone(), cells }))
}

fn site_hash(site: Site, name: &str) -> u64 {
    // FNV-1a of the canonical name.
    let key = format!("{site}.{name}");
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// LoRA's A initialisation, PEFT's Kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in)), `[r, in]`.
/// Drawn on the host from a generator seeded by (seed, site), so the values do not depend on
/// the backend's global random state or on other threads.
pub fn kaiming_uniform<B: Backend>(site: Site, seed: u64, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    use rand::{Rng, SeedableRng};
    let bound = 1.0 / (shape[1] as f64).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ site_hash(site, "lora_A"));
    let v: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.random_range(-bound..bound) as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A trainable parameter whose id depends only on its site and name, so that optimizer state
/// saved in a checkpoint finds its parameters again after a restart.
pub fn stable_param<B: Backend>(site: Site, name: &str, tensor: Tensor<B, 2>) -> Param<Tensor<B, 2>> {
    Param::initialized(ParamId::from(site_hash(site, name)), tensor.require_grad())
}

/// Number of trainable adapter parameters at the given ranks (`r·(in + out)` per site).
pub fn adapter_params(shapes: &[(Site, [usize; 2])], ranks: &HashMap<Site, usize>) -> usize {
    shapes.iter().filter_map(|(s, [o, i])| ranks.get(s).map(|r| r * (o + i))).sum()
}

/// LoNAS (Mode B): the adapter's output rows follow the sliced weight's rows, and its A's input
/// columns follow the sliced input, so a sub-network of the super-network slices adapters too.
impl<B: Backend, P: secateur_models::Sliceable<B>> secateur_models::Sliceable<B> for ElasticLoraLinear<B, P> {
    fn forward_slice(&self, x: Tensor<B, 3>, start: usize, len: usize, cols: usize) -> Tensor<B, 3> {
        let base = self.base.forward_slice(x.clone(), start, len, cols);
        match &self.adapter {
            Some(ad) if ad.active_rank() > 0 => {
                let r = ad.active_rank();
                let (a, b) = ad.active_factors();
                // A's columns follow the sliced input, B's rows the sliced output.
                let a = secateur_models::nn::slice_weight(a, 0, r, cols);
                let b = secateur_models::nn::slice_weight(b, start, len, r);
                let low = secateur_models::nn::linear(x, a, None);
                base + secateur_models::nn::linear(low, b, None).mul_scalar(ad.scale_at(r))
            }
            _ => base,
        }
    }
}
