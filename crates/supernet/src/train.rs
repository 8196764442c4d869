//! The super-adapter training loop (fixed LoRA, NLS, sandwich), with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
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
use secateur_models::{CausalLm, Projection, SubnetStructure};
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
    /// Total optimizer steps (default: `epochs` passes over the examples).
    #[serde(default)]
    pub steps: Option<usize>,
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
            steps: None,
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
        if self.epochs == 0 || self.steps == Some(0) {
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
    rank_configs(cfg.strategy, cfg.seed, ranks, step)
}

fn rank_configs(strategy: Strategy, seed: u64, ranks: &RankControl, step: usize) -> Vec<SubnetConfig> {
    let space = &ranks.space;
    let mut rng = StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut random = || SubnetConfig(space.groups.iter().map(|g| rng.random_range(0..g.choices.len())).collect());
    match strategy {
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

/// What one sub-network of a training step activates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Activation {
    /// Adapter ranks (elastic LoRA), applied before the forward pass.
    pub ranks: Option<SubnetConfig>,
    /// The structural sub-network (NAS); `None` runs the whole model.
    pub structure: Option<SubnetStructure>,
}

/// Decides which sub-network(s) each optimizer step of [`fit`] trains, and runs them.
pub trait StepSource<B: Backend, P: Projection<B>> {
    /// The progress bar's label.
    fn label(&self) -> &'static str;
    /// The sub-networks of step `step` (0-based); their gradients are summed. A function of the
    /// step alone, so that a resumed run takes the steps of an uninterrupted one.
    fn activations(&self, step: usize) -> Vec<Activation>;
    /// Logits `[batch, seq, vocab]` of `model` on `batch` with `a` active.
    fn forward(&self, model: &CausalLm<B, P>, a: &Activation, batch: &Batch) -> Result<Tensor<B, 3>, TrainError>;
    /// Called when training ends (restores the maximal ranks).
    fn finish(&self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The token ids of `batch` on the model's device.
pub fn batch_ids<B: Backend, P: Projection<B>>(model: &CausalLm<B, P>, batch: &Batch) -> Tensor<B, 2, Int> {
    token_tensor::<B>(&batch.ids, &model.device())
}

/// Adapter training: per step the sub-adapter(s) of a [`Strategy`] (fixed LoRA, NLS, sandwich).
pub struct AdapterSteps<'a> {
    pub strategy: Strategy,
    pub ranks: &'a RankControl,
    pub seed: u64,
}

impl<B: Backend, P: Projection<B>> StepSource<B, P> for AdapterSteps<'_> {
    fn label(&self) -> &'static str {
        "training"
    }
    fn activations(&self, step: usize) -> Vec<Activation> {
        rank_configs(self.strategy, self.seed, self.ranks, step)
            .into_iter()
            .map(|c| Activation { ranks: Some(c), structure: None })
            .collect()
    }
    fn forward(&self, model: &CausalLm<B, P>, a: &Activation, batch: &Batch) -> Result<Tensor<B, 3>, TrainError> {
        if let Some(r) = &a.ranks {
            self.ranks.apply(r)?;
        }
        Ok(model.forward(batch_ids(model, batch), &batch.mask)?)
    }
    fn finish(&self) -> Result<(), TrainError> {
        Ok(self.ranks.apply(&self.ranks.space.maximal())?)
    }
}

/// Full-parameter training of the whole model (pretraining, full fine-tuning).
pub struct FullSteps;

impl<B: Backend, P: Projection<B>> StepSource<B, P> for FullSteps {
    fn label(&self) -> &'static str {
        "training"
    }
    fn activations(&self, _: usize) -> Vec<Activation> {
        vec![Activation::default()]
    }
    fn forward(&self, model: &CausalLm<B, P>, _: &Activation, batch: &Batch) -> Result<Tensor<B, 3>, TrainError> {
        Ok(model.forward(batch_ids(model, batch), &batch.mask)?)
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

/// Trains the adapters of `model` (its base must be frozen) on `examples` with `cfg.strategy`:
/// [`fit`] with [`AdapterSteps`].
pub fn train<B: AutodiffBackend, P: Projection<B> + Adapted<B>>(
    model: CausalLm<B, P>,
    ranks: &RankControl,
    examples: &[Example],
    cfg: &TrainConfig,
    pad: u32,
    checkpoint_dir: Option<&Path>,
) -> Result<(CausalLm<B, P>, TrainReport), TrainError>
where
    CausalLm<B, P>: AutodiffModule<B>,
{
    fit(model, &AdapterSteps { strategy: cfg.strategy, ranks, seed: cfg.seed }, examples, cfg, pad, checkpoint_dir)
}

/// The training loop of secateur: every optimizer step runs the step source's sub-networks
/// forward and backward over the step's micro-batches (gradients accumulated, the loss
/// normalised by the step's target tokens), clips the global gradient norm and takes an AdamW
/// step under linear warm-up and cosine decay. Every parameter that requires gradients learns:
/// the adapters when the base is frozen, all weights otherwise.
///
/// With `checkpoint_dir`, a checkpoint is written every `cfg.checkpoint_every` steps and at the
/// end ([`StepCheckpoints`]: `step-N/` holds the trained parameters, `adapters.safetensors` when
/// the model has adapters and `model.bin` otherwise, and the AdamW state `optimizer.bin`;
/// `state.json` names it). A directory that holds one is resumed from: data order and
/// sub-networks are functions of (seed, step), so a resumed run takes exactly the steps the
/// uninterrupted run would have taken. `cfg.stop_after` stops early (to test resumption).
pub fn fit<B: AutodiffBackend, P: Projection<B> + Adapted<B>, S: StepSource<B, P>>(
    mut model: CausalLm<B, P>,
    source: &S,
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
    let device = model.device();
    let total = cfg.steps.unwrap_or_else(|| examples.len().div_ceil(cfg.batch_size) * cfg.epochs);
    let mut optim = adamw(cfg).init::<B, CausalLm<B, P>>();
    let adapter_params = trainable_params(&model);
    let payload = if adapter_params > 0 { Payload::Adapters } else { Payload::Model };
    let trainable = if adapter_params > 0 { adapter_params } else { model.num_params() };
    let mut report = TrainReport { total_steps: total, trainable_params: trainable, ..Default::default() };
    let mut start = 0;
    let checkpoints = checkpoint_dir.map(StepCheckpoints::new);
    if let Some(c) = &checkpoints
        && let Some((_, sub, state)) = c.latest::<State>()?
    {
        c.clean()?;
        model = payload.load(model, &sub, &device)?;
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(sub.join("optimizer"), &device)
            .map_err(|e| checkpoint_err(&sub.join("optimizer.bin"), e))?;
        optim = optim.load_record(record);
        start = state.step;
        report = state.report;
        report.resumed_from = Some(start);
    }
    let bar = step_bar(source.label(), total, start, cfg.progress);
    let clock = Instant::now();
    let seconds_before = report.seconds;
    let end = cfg.stop_after.map_or(total, |s| s.min(total));
    let mut schedule = Schedule::new(examples, cfg.batch_size, cfg.seed);
    for step in start..end {
        let chosen = schedule.batch(step);
        let micro: Vec<Batch> = chosen.chunks(cfg.micro_batch_size).map(|c| Batch::new(c, pad)).collect();
        let tokens: usize = micro.iter().map(Batch::target_tokens).sum();
        let activations = source.activations(step);
        let mut accumulator = GradientsAccumulator::new();
        let mut step_loss = 0.0;
        for a in &activations {
            for batch in &micro {
                let logits = source.forward(&model, a, batch)?;
                let loss = lm_loss(logits, batch, tokens.max(1) as f64);
                step_loss += loss.clone().into_scalar().elem::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
        }
        check_loss(step, step_loss)?;
        let mut grads = accumulator.grads();
        if let Some(max) = cfg.max_grad_norm {
            clip_global_norm(&model, &mut grads, max);
        }
        model = optim.step(lr_at(cfg, step, total), model, grads);
        report.losses.push(step_loss);
        if let Some(r) = &activations[0].ranks {
            report.configs.push(r.clone());
        }
        report.steps = step + 1;
        bar.set_message(format!("loss {step_loss:.4}"));
        bar.inc(1);
        if let Some(c) = &checkpoints
            && ((cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) || step + 1 == end)
        {
            report.seconds = seconds_before + clock.elapsed().as_secs_f64();
            let state = State { step: step + 1, report: report.clone() };
            c.save(step + 1, &state, |dir: &Path| {
                payload.save(&model, dir)?;
                BinFileRecorder::<FullPrecisionSettings>::new()
                    .record(optim.to_record(), dir.join("optimizer"))
                    .map_err(|e| TrainError::Checkpoint { path: dir.join("optimizer.bin"), reason: write_reason(&e.to_string()) })
            })?;
        }
    }
    bar.finish();
    report.seconds = seconds_before + clock.elapsed().as_secs_f64();
    source.finish()?;
    Ok((model, report))
}

/// What a checkpoint holds of the model: the adapters (the base is frozen and re-made from the
/// run's inputs), or the whole model (full-parameter training).
#[derive(Clone, Copy)]
enum Payload {
    Adapters,
    Model,
}

impl Payload {
    fn save<B: Backend, P: Projection<B> + Adapted<B>>(self, model: &CausalLm<B, P>, dir: &Path) -> Result<(), TrainError> {
        match self {
            Payload::Adapters => save_adapters(model, &dir.join("adapters.safetensors")),
            Payload::Model => model
                .clone()
                .save_file(dir.join("model"), &BinFileRecorder::<FullPrecisionSettings>::new())
                .map_err(|e| TrainError::Checkpoint { path: dir.join("model.bin"), reason: e.to_string() }),
        }
    }

    fn load<B: Backend, P: Projection<B> + Adapted<B>>(
        self,
        model: CausalLm<B, P>,
        dir: &Path,
        device: &B::Device,
    ) -> Result<CausalLm<B, P>, TrainError> {
        match self {
            Payload::Adapters => load_adapters(model, &dir.join("adapters.safetensors"), device),
            Payload::Model => model
                .load_file(dir.join("model"), &BinFileRecorder::<FullPrecisionSettings>::new(), device)
                .map_err(|e| checkpoint_err(&dir.join("model.bin"), e)),
        }
    }
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
/// Why burn's recorder could not write a file, in plain words: it reports an I/O error as the
/// `Debug` text of `std::io::Error` (`Io { inner: Os { code: 28, kind: StorageFull, message:
/// "No space left on device" } }`); keep its message.
fn write_reason(text: &str) -> String {
    let message = text.split_once("message: \"").and_then(|(_, rest)| rest.split_once('"')).map(|(m, _)| m);
    format!("cannot write: {}", message.unwrap_or(text))
}

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
/// scratch): `steps` AdamW steps ([`fit`] with [`FullSteps`]) over batches of `batch_size`
/// sequences in a seeded order, every token a target. Returns the model and each step's loss.
pub fn pretrain<B: AutodiffBackend>(
    model: secateur_models::DenseLm<B>,
    seqs: &[Vec<u32>],
    steps: usize,
    cfg: &TrainConfig,
) -> Result<(secateur_models::DenseLm<B>, Vec<f64>), TrainError> {
    if seqs.is_empty() || steps == 0 {
        return Err(TrainError::Config("no sequences or no steps".into()));
    }
    let examples: Vec<Example> = seqs.iter().map(|s| Example { ids: s.clone(), target: vec![true; s.len()] }).collect();
    let (model, report) = fit(model, &FullSteps, &examples, &TrainConfig { steps: Some(steps), ..cfg.clone() }, 0, None)?;
    Ok((model, report.losses))
}
