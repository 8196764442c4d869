//! The super-adapter training loop (fixed LoRA, NLS, sandwich), with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use secateur_elastic_lora::{Adapted, RankControl, SubnetConfig, stable_param};
use secateur_models::generate::token_tensor;
use secateur_models::weights::{Checkpoint, Dtype, RawTensor, write_safetensors};
use secateur_models::{CausalLm, Projection};
use secateur_runs::{Progress, StepCheckpoints};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::{Batch, Example};

/// Which sub-adapters each optimizer step trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Plain LoRA: always the maximal adapter.
    Fixed,
    /// Neural Low-rank adapter Search: one sub-adapter per step, each group's rank drawn
    /// uniformly and independently.
    Nls,
    /// Sandwich rule: maximal, `random` random and minimal sub-adapters per step, gradients summed.
    Sandwich { random: usize },
}

/// Training hyper-parameters. Optimizer values are PyTorch's AdamW defaults unless set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub strategy: Strategy,
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward pass (gradients accumulate over `batch_size / micro_batch_size`).
    pub micro_batch_size: usize,
    pub lr: f64,
    /// Linear warm-up steps, then cosine decay to 0.
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm (PyTorch's `clip_grad_norm_`); `None` disables.
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: never).
    pub checkpoint_every: usize,
    /// Stop after this many steps (to simulate a killed run in tests; `None`: run to the end).
    pub stop_after: Option<usize>,
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Nls,
            epochs: 1,
            batch_size: 16,
            micro_batch_size: 4,
            lr: 3e-4,
            warmup_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            seed: 0,
            checkpoint_every: 0,
            stop_after: None,
            progress: false,
        }
    }
}

impl TrainConfig {
    /// Checks every setting (before any work starts): positive epochs and batch sizes that
    /// divide, a finite positive learning rate of at most 1, finite optimizer values.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 || self.micro_batch_size == 0 || !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(format!(
                "batch size {} must be a positive multiple of the micro-batch size {}",
                self.batch_size, self.micro_batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return bad(format!("learning rate {} must be a number in (0, 1]", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {} must be finite and non-negative", self.weight_decay));
        }
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2) && self.eps.is_finite() && self.eps > 0.0) {
            return bad("AdamW needs betas in [0, 1) and a positive eps".into());
        }
        if let Some(m) = self.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return bad(format!("max gradient norm {m} must be finite and positive"));
        }
        if let Strategy::Sandwich { random } = self.strategy
            && random > 64
        {
            return bad(format!("sandwich with {random} random sub-networks per step"));
        }
        Ok(())
    }
}

/// Stops training with an error naming the step when its loss is not finite.
pub(crate) fn check_loss(step: usize, loss: f64) -> Result<(), TrainError> {
    if loss.is_finite() { Ok(()) } else { Err(TrainError::Diverged { step: step + 1, loss }) }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainReport {
    pub steps: usize,
    pub total_steps: usize,
    /// Mean loss per target token of each step (summed over the sandwich's sub-adapters).
    pub losses: Vec<f64>,
    /// The sub-adapter of each step (the first one for the sandwich rule).
    pub configs: Vec<SubnetConfig>,
    pub seconds: f64,
    pub trainable_params: usize,
    /// Step a resumed run started from.
    pub resumed_from: Option<usize>,
}

/// The learning rate before step `step` (0-based): linear warm-up, then cosine decay to 0.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1);
    let progress = (step - cfg.warmup_steps) as f64 / span as f64;
    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The sub-adapters trained at `step`.
pub fn step_configs(cfg: &TrainConfig, ranks: &RankControl, step: usize) -> Vec<SubnetConfig> {
    let space = &ranks.space;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut random = || SubnetConfig(space.groups.iter().map(|g| rng.random_range(0..g.choices.len())).collect());
    match cfg.strategy {
        Strategy::Fixed => vec![space.maximal()],
        Strategy::Nls => vec![random()],
        Strategy::Sandwich { random: k } => {
            let mut v = vec![space.maximal()];
            v.extend((0..k).map(|_| random()));
            v.push(space.minimal());
            v
        }
    }
}

/// Cross-entropy of next-token predictions, summed over target tokens and divided by `norm`.
pub fn lm_loss<B: Backend>(logits: Tensor<B, 3>, batch: &Batch, norm: f64) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let n = b * (s - 1);
    let logp = log_softmax(logits.narrow(1, 0, s - 1).reshape([n, v]), 1);
    let targets: Vec<i64> = batch.targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let weights = Tensor::<B, 2>::from_data(TensorData::new(batch.weights.clone(), [n, 1]), &device);
    (logp.gather(1, targets) * weights).sum().neg().div_scalar(norm)
}

/// burn's AdamW with every value set from `cfg` (burn's own defaults differ from PyTorch's).
pub fn adamw(cfg: &TrainConfig) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(cfg.beta1 as f32)
        .with_beta_2(cfg.beta2 as f32)
        .with_epsilon(cfg.eps as f32)
        .with_weight_decay(cfg.weight_decay as f32)
}

/// Sum of squared gradients of the visited parameters.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sq: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sq += g.powi_scalar(2).sum().into_scalar().elem::<f64>();
        }
    }
}

/// Scales every visited gradient.
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Clips the global L2 norm of all gradients to `max` (like PyTorch's `clip_grad_norm_`, which
/// scales by `max / (norm + 1e-6)` when the norm exceeds `max`). Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams, max: f64) -> f64 {
    let mut norm = GradNorm { grads, sq: 0.0 };
    model.visit(&mut norm);
    let total = norm.sq.sqrt();
    let coef = max / (total + 1e-6);
    if coef < 1.0 {
        model.visit(&mut GradScale { grads, factor: coef });
    }
    total
}

#[derive(Serialize, Deserialize)]
struct State {
    step: usize,
    report: TrainReport,
}

/// The examples of each optimizer step: shuffled once per epoch from (seed, epoch), so a step's
/// batch depends only on (seed, step) and a resumed run sees the batches the whole run would.
pub(crate) struct Schedule<'a> {
    examples: &'a [Example],
    batch_size: usize,
    seed: u64,
    order: Vec<usize>,
    epoch: usize,
}

impl<'a> Schedule<'a> {
    pub(crate) fn new(examples: &'a [Example], batch_size: usize, seed: u64) -> Self {
        Self { examples, batch_size, seed, order: Vec::new(), epoch: usize::MAX }
    }

    pub(crate) fn steps_per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.batch_size)
    }

    /// The examples of step `step`.
    pub(crate) fn batch(&mut self, step: usize) -> Vec<&'a Example> {
        let per_epoch = self.steps_per_epoch();
        let epoch = step / per_epoch;
        if epoch != self.epoch {
            self.order = (0..self.examples.len()).collect();
            self.order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64)));
            self.epoch = epoch;
        }
        let at = (step % per_epoch) * self.batch_size;
        self.order[at..(at + self.batch_size).min(self.order.len())].iter().map(|&i| &self.examples[i]).collect()
    }
}

/// Progress over `total` steps labelled `label` (hidden unless `show`), starting at `start`.
pub(crate) fn step_bar(label: &str, total: usize, start: usize, show: bool) -> Progress {
    Progress::new(label, "steps", total, start, show)
}

/// Trains the adapters of `model` (its base must be frozen) on `examples`.
///
/// With `checkpoint_dir`, a checkpoint (adapter weights, AdamW state, progress) is written every
/// `checkpoint_every` steps and at the end; when the directory already holds one, training
/// resumes from it. Sub-adapters and data order are functions of (seed, step), so a resumed run
/// takes exactly the steps the uninterrupted run would have taken.
pub fn train<B: AutodiffBackend, P: Projection<B> + Adapted<B>>(
    mut model: CausalLm<B, P>,
    ranks: &RankControl,
    examples: &[Example],
    cfg: &TrainConfig,
    pad: u32,
    checkpoint_dir: Option<&Path>,
) -> Result<(CausalLm<B, P>, TrainReport), TrainError>
where
    CausalLm<B, P>: AutodiffModule<B>,
{
    if examples.is_empty() {
        return Err(TrainError::Config("no training examples".into()));
    }
    cfg.validate()?;
    let device = model.embed.val().device();
    let steps_per_epoch = examples.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut optim = adamw(cfg).init::<B, CausalLm<B, P>>();
    let mut report = TrainReport { total_steps: total, trainable_params: trainable_params(&model), ..Default::default() };
    let mut start = 0;
    let checkpoints = checkpoint_dir.map(StepCheckpoints::new);
    if let Some(c) = &checkpoints
        && let Some((_, sub, state)) = c.latest::<State>()?
    {
        c.clean()?;
        model = load_adapters(model, &sub.join("adapters.safetensors"), &device)?;
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(sub.join("optimizer"), &device)
            .map_err(|e| checkpoint_err(&sub.join("optimizer.bin"), e))?;
        optim = optim.load_record(record);
        start = state.step;
        report = state.report;
        report.resumed_from = Some(start);
    }
    let bar = step_bar("training", total, start, cfg.progress);
    let clock = Instant::now();
    let seconds_before = report.seconds;
    let end = cfg.stop_after.map_or(total, |s| s.min(total));
    let mut schedule = Schedule::new(examples, cfg.batch_size, cfg.seed);
    for step in start..end {
        let chosen = schedule.batch(step);
        let micro: Vec<Batch> = chosen.chunks(cfg.micro_batch_size).map(|c| Batch::new(c, pad)).collect();
        let tokens: usize = micro.iter().map(Batch::target_tokens).sum();
        let configs = step_configs(cfg, ranks, step);
        let mut accumulator = GradientsAccumulator::new();
        let mut step_loss = 0.0;
        for config in &configs {
            ranks.apply(config)?;
            for batch in &micro {
                let logits = model.forward(token_tensor::<B>(&batch.ids, &device), &batch.mask)?;
                let loss = lm_loss(logits, batch, tokens.max(1) as f64);
                step_loss += loss.clone().into_scalar().elem::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
        }
        let mut grads = accumulator.grads();
        if let Some(max) = cfg.max_grad_norm {
            clip_global_norm(&model, &mut grads, max);
        }
        check_loss(step, step_loss)?;
        model = optim.step(lr_at(cfg, step, total), model, grads);
        report.losses.push(step_loss);
        report.configs.push(configs[0].clone());
        report.steps = step + 1;
        bar.set_message(format!("loss {step_loss:.4}"));
        bar.inc(1);
        let last = step + 1 == end;
        if let Some(c) = &checkpoints
            && ((cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) || last)
        {
            report.seconds = seconds_before + clock.elapsed().as_secs_f64();
            save_checkpoint(c, &model, &optim, step + 1, &report)?;
        }
    }
    bar.finish();
    report.seconds = seconds_before + clock.elapsed().as_secs_f64();
    ranks.apply(&ranks.space.maximal())?;
    Ok((model, report))
}

/// Number of adapter parameters at the maximal ranks.
pub fn trainable_params<B: Backend, P: Projection<B> + Adapted<B>>(model: &CausalLm<B, P>) -> usize {
    model
        .projections()
        .into_iter()
        .filter_map(|(_, p)| p.adapter().map(|a| a.a.val().dims().iter().product::<usize>() + a.b.val().dims().iter().product::<usize>()))
        .sum()
}

/// A checkpoint that cannot be loaded, named, with the recorder's nested message reduced to one
/// plain line.
pub(crate) fn checkpoint_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    let text = e.to_string();
    let reason = if text.contains("UnexpectedEof") || text.contains("failed to fill whole buffer") {
        "the file is truncated".to_string()
    } else {
        let head = text.split("The internal data format").next().unwrap_or(&text);
        let plain: String = head.chars().filter(|c| !matches!(c, '\\' | '"')).collect();
        plain.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("cannot be loaded ({reason}); remove the run directory or rerun with --force"),
    }
}

/// The adapters of the finished training run checkpointed in `dir` (its last step directory).
pub fn final_adapters(dir: &Path) -> Result<PathBuf, TrainError> {
    match StepCheckpoints::new(dir).latest::<State>()? {
        Some((_, sub, state)) if state.report.steps == state.report.total_steps => Ok(sub.join("adapters.safetensors")),
        Some((step, _, state)) => Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("training stopped at step {step} of {}: finish it with --resume first", state.report.total_steps),
        }),
        None => {
            Err(TrainError::Checkpoint { path: dir.to_path_buf(), reason: "no trained adapters: run the training to the end first".into() })
        }
    }
}

/// Saves adapters, optimizer state and progress as one all-or-nothing step checkpoint.
fn save_checkpoint<B: AutodiffBackend, P: Projection<B> + Adapted<B>, O: Optimizer<CausalLm<B, P>, B>>(
    checkpoints: &StepCheckpoints,
    model: &CausalLm<B, P>,
    optim: &O,
    step: usize,
    report: &TrainReport,
) -> Result<(), TrainError>
where
    CausalLm<B, P>: AutodiffModule<B>,
{
    let state = State { step, report: report.clone() };
    checkpoints.save(step, &state, |dir: &Path| {
        save_adapters(model, &dir.join("adapters.safetensors"))?;
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(optim.to_record(), dir.join("optimizer"))
            .map_err(|e| TrainError::Checkpoint { path: dir.join("optimizer.bin"), reason: e.to_string() })
    })
}

/// Writes the full (maximal-rank) adapter factors, named `<site>.lora_A` / `<site>.lora_B`.
pub fn save_adapters<B: Backend, P: Projection<B> + Adapted<B>>(model: &CausalLm<B, P>, path: &Path) -> Result<(), TrainError> {
    let mut tensors: Vec<RawTensor> = Vec::new();
    for (site, p) in model.projections() {
        if let Some(ad) = p.adapter() {
            for (name, t) in [("lora_A", ad.a.val()), ("lora_B", ad.b.val())] {
                let shape = t.dims().to_vec();
                let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32");
                tensors.push((format!("{site}.{name}"), Dtype::F32, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
            }
        }
    }
    write_safetensors(path, &tensors, None)?;
    Ok(())
}

/// Loads adapter factors written by [`save_adapters`] into a model with the same adapters.
pub fn load_adapters<B: Backend, P: Projection<B> + Adapted<B>>(
    model: CausalLm<B, P>,
    path: &Path,
    device: &B::Device,
) -> Result<CausalLm<B, P>, TrainError> {
    let ckpt = Checkpoint::from_files(&[path.to_path_buf()])?;
    let loaded = model.map_projections(|site, mut p: P| {
        if let Some(ad) = p.adapter_mut() {
            let load = |name: &str, shape: [usize; 2]| -> Result<Param<Tensor<B, 2>>, TrainError> {
                let v = ckpt.read_f32(&format!("{site}.{name}"), &shape)?;
                let t = Tensor::from_data(TensorData::new(v, shape), device);
                Ok(stable_param(site, name, t))
            };
            ad.a = load("lora_A", ad.a.val().dims())?;
            ad.b = load("lora_B", ad.b.val().dims())?;
        }
        Ok::<_, TrainError>(p)
    })?;
    Ok(loaded)
}

/// Full-parameter causal-LM training of a dense model (for pretraining small models from
/// scratch): `steps` AdamW steps over batches of `batch_size` sequences drawn in a seeded
/// order, with `cfg`'s learning-rate schedule, betas, eps, weight decay and clipping.
pub fn pretrain<B: AutodiffBackend>(
    mut model: secateur_models::DenseLm<B>,
    seqs: &[Vec<u32>],
    steps: usize,
    cfg: &TrainConfig,
) -> Result<(secateur_models::DenseLm<B>, Vec<f64>), TrainError> {
    if seqs.is_empty() || steps == 0 {
        return Err(TrainError::Config("no sequences or no steps".into()));
    }
    cfg.validate()?;
    let device = model.embed.val().device();
    let mut optim = adamw(cfg).init::<B, secateur_models::DenseLm<B>>();
    let bar = step_bar("pretraining", steps, 0, cfg.progress);
    let examples: Vec<Example> = seqs.iter().map(|s| Example { ids: s.clone(), target: vec![true; s.len()] }).collect();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut losses = Vec::with_capacity(steps);
    let per_epoch = examples.len().div_ceil(cfg.batch_size);
    for step in 0..steps {
        if step % per_epoch == 0 {
            order.shuffle(&mut StdRng::seed_from_u64(cfg.seed.wrapping_add((step / per_epoch) as u64)));
        }
        let at = (step % per_epoch) * cfg.batch_size;
        let chosen: Vec<&Example> = order[at..(at + cfg.batch_size).min(order.len())].iter().map(|&i| &examples[i]).collect();
        let batch = Batch::new(&chosen, 0);
        let logits = model.forward(token_tensor::<B>(&batch.ids, &device), &batch.mask)?;
        let loss = lm_loss(logits, &batch, batch.target_tokens().max(1) as f64);
        let value = loss.clone().into_scalar().elem::<f64>();
        check_loss(step, value)?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(max) = cfg.max_grad_norm {
            clip_global_norm(&model, &mut grads, max);
        }
        model = optim.step(lr_at(cfg, step, steps), model, grads);
        losses.push(value);
        bar.set_message(format!("loss {value:.3}"));
        bar.inc(1);
    }
    bar.finish();
    Ok((model, losses))
}
