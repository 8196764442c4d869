//! Two-stage NAS and LoNAS: train a weight-sharing super-network (optionally after importance
//! reordering; optionally LoNAS: elastic LoRA on the frozen base), search it on the validation
//! split (loss against parameters, MACs or measured latency), extract the maximal, heuristic and
//! Pareto-front sub-networks into standalone checkpoints, and measure each one (test accuracy,
//! prefill and decoding latency against the maximal model, in the same run).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{AutodiffModule, Module};
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use secateur_elastic_lora::peft::merge;
use secateur_elastic_lora::{AdaptedLm, RankControl, SearchSpace, SubnetConfig};
use secateur_models::extract::extract;
use secateur_models::latency::{Latency, LatencySetup, measure, measure_many};
use secateur_models::weights::{COPIED_FILES, save_new, write_atomic};
use secateur_models::{ArchSpec, DenseLm, PositionKind, SubnetStructure, TextTokenizer};
use secateur_runs::StagedDir;
use secateur_search::nsga2::Nsga2;
use secateur_search::{Evaluator, Problem, Variable};
use secateur_supernet::data::{self, Example};
use secateur_supernet::eval::{AnswerKind, accuracy_as};
use secateur_supernet::nas::{Sampler, SamplerKind, StructureChoice, StructureSpace, structure_cost, train_supernet, validation_loss};
use secateur_supernet::reorder::{descending, importance, reorder};
use secateur_supernet::train::Strategy;
use serde::Serialize;
use serde_json::json;

use crate::config::{
    Evals, ShearsConfig, base_spec, check_ranks_fit, eval_columns, export_model, load_task, materialize_base, train_config,
};
use crate::{PipelineError, Reporter};

/// The super-network's sampler (the paper's strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NasStrategy {
    Sandwich,
    Random,
    GridParams,
    CalibrateMag,
}

/// The quality objective of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    Loss,
    Accuracy,
}

/// Options of a NAS / LoNAS run. `Default` gives the command line's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct NasConfig {
    #[arg(long, value_enum, default_value = "sandwich")]
    pub strategy: NasStrategy,
    /// Reorder embedding channels, neurons, head groups and blocks by importance before training.
    #[arg(long)]
    pub importance: bool,
    /// LoNAS: freeze the base and train elastic LoRA adapters whose output rows and input
    /// columns are sliced with the weights; ranks are sampled with the structure and searched
    /// with it. Default space: LoNAS's `[q,k,v]` and `[gate,up]` groups with ranks `[32, 28]`
    /// (`[16, 14]` on the embedded model); `--ranks` and `--targets` change it.
    #[arg(long)]
    pub lora: bool,
    /// One MLP width and one number of key/value groups per block (heterogeneous sub-networks).
    #[arg(long)]
    pub per_layer: bool,
    /// Keep the embedding (residual-stream) width fixed.
    #[arg(long)]
    pub fixed_embedding: bool,
    /// The quality objective of the search on the validation split: loss (mean next-token loss
    /// of the answer tokens, from the sliced super-network) or accuracy (1 - exact-match accuracy
    /// of the extracted sub-network's greedy answers: slower, generation per evaluation).
    #[arg(long, value_enum, default_value = "loss")]
    pub metric: Metric,
    /// The cost objective of the search: params, macs, or latency (measured decoding time per
    /// token of the extracted sub-network, on this machine).
    #[arg(long, value_enum, default_value = "params")]
    pub objective: Objective,
    /// Parameter bins of the grid samplers (the paper's K).
    #[arg(long, default_value_t = 22)]
    pub bins: usize,
    /// Sub-networks evaluated by the search.
    #[arg(long, default_value_t = 16)]
    pub budget: usize,
    #[command(flatten)]
    pub common: ShearsConfig,
}

impl Default for NasConfig {
    fn default() -> Self {
        crate::clap_defaults(&[])
    }
}

/// One measured sub-network of a NAS run.
#[derive(Debug, Clone, Serialize)]
pub struct NasRow {
    /// `maximal`, `heuristic`, or `nsga2-N` (the front, by ascending cost).
    pub name: String,
    /// Its standalone checkpoint.
    pub dir: PathBuf,
    pub structure: SubnetStructure,
    /// The LoRA ranks (LoNAS), merged into the checkpoint.
    pub ranks: Option<SubnetConfig>,
    pub parameters: usize,
    /// MACs per token at 128 keys.
    pub macs: usize,
    pub validation_loss: f64,
    pub test_accuracy: f64,
    pub latency: Latency,
    /// Against the maximal sub-network, timed in the same run.
    pub prefill_speedup: f64,
    pub decode_speedup: f64,
    /// The `--eval-task` metrics, keyed `TASK METRIC`.
    pub eval: BTreeMap<String, f64>,
}

/// What a NAS run measured.
#[derive(Debug, Clone, Serialize)]
pub struct NasResult {
    /// The run directory.
    pub dir: PathBuf,
    pub rows: Vec<NasRow>,
    /// The rows as a markdown table (also written to `report.md`).
    pub table: String,
}

/// The trained super-network, ready to evaluate any sub-network.
enum Trained<B: Backend> {
    /// Full fine-tuning: the weights themselves.
    Full(DenseLm<B>),
    /// LoNAS: the frozen base with elastic adapters and the control of their ranks.
    Lora(AdaptedLm<B>, RankControl),
}

impl<B: Backend> Trained<B> {
    fn rank_space(&self) -> Option<&SearchSpace> {
        match self {
            Trained::Full(_) => None,
            Trained::Lora(_, c) => Some(&c.space),
        }
    }

    fn loss(&self, s: &SubnetStructure, ranks: Option<&SubnetConfig>, val: &[Example], pad: u32) -> Result<f64, String> {
        match self {
            Trained::Full(m) => validation_loss(m, s, val, pad, 32),
            Trained::Lora(m, c) => {
                c.apply(ranks.unwrap_or(&c.space.maximal())).map_err(|e| e.to_string())?;
                validation_loss(m, s, val, pad, 32)
            }
        }
        .map_err(|e| e.to_string())
    }

    /// The standalone model of `s` and its config; with LoNAS, the adapters are merged at
    /// `ranks` first.
    fn extract(
        &self,
        s: &SubnetStructure,
        ranks: Option<&SubnetConfig>,
        config: &serde_json::Value,
    ) -> Result<(DenseLm<B>, serde_json::Value), PipelineError> {
        Ok(match self {
            Trained::Full(m) => extract(m, s, config)?,
            Trained::Lora(m, c) => {
                c.apply(ranks.unwrap_or(&c.space.maximal()))?;
                extract(&merge(m.clone()), s, config)?
            }
        })
    }

    fn spec(&self) -> &ArchSpec {
        match self {
            Trained::Full(m) => m.spec(),
            Trained::Lora(m, _) => m.spec(),
        }
    }
}

/// A point of the joint space: the structure, and with LoNAS the adapter ranks.
struct Candidate {
    choice: StructureChoice,
    ranks: Option<SubnetConfig>,
}

struct SpaceProblem<'a, B: Backend> {
    vars: Vec<Variable>,
    space: &'a StructureSpace,
    trained: &'a Trained<B>,
    device: &'a B::Device,
    config: &'a serde_json::Value,
    val: &'a [Example],
    pad: u32,
    objective: Objective,
    /// With the accuracy metric: the tokenizer, validation records and answer length.
    accuracy: Option<(&'a TextTokenizer, &'a data::PromptFormat, &'a [data::Record], usize)>,
}

/// The cost objective of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    Params,
    Macs,
    Latency,
}

impl Objective {
    fn name(self) -> &'static str {
        match self {
            Objective::Params => "parameters",
            Objective::Macs => "MACs per token",
            Objective::Latency => "decode ms per token",
        }
    }
}

/// How the search measures latency: short, so that every evaluation stays cheap.
const SEARCH_LATENCY: LatencySetup = LatencySetup { batch: 1, prompt: 8, new_tokens: 16, repeats: 3 };

impl<B: Backend> SpaceProblem<'_, B> {
    fn candidate(&self, x: &[f64]) -> Candidate {
        let x: Vec<usize> = x.iter().map(|v| *v as usize).collect();
        let n = self.space.variables().len();
        Candidate { choice: self.space.choice(&x[..n]), ranks: self.trained.rank_space().map(|_| SubnetConfig(x[n..].to_vec())) }
    }
}

impl<B: Backend> Problem for SpaceProblem<'_, B> {
    fn variables(&self) -> &[Variable] {
        &self.vars
    }
    fn n_objectives(&self) -> usize {
        2
    }
    fn parallel(&self) -> bool {
        false
    }
    fn objective_names(&self) -> Vec<String> {
        let quality = if self.accuracy.is_some() { "1 - validation accuracy" } else { "validation loss" };
        vec![quality.into(), self.objective.name().into()]
    }
    fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String> {
        let c = self.candidate(x);
        let s = self.space.structure(&c.choice);
        // The standalone sub-network, extracted once if an objective needs it.
        let small = if self.accuracy.is_some() || self.objective == Objective::Latency {
            Some(self.trained.extract(&s, c.ranks.as_ref(), self.config).map_err(|e| e.to_string())?.0)
        } else {
            None
        };
        let loss = match (self.accuracy, &small) {
            (Some((tok, format, records, max_new)), Some(small)) => {
                1.0 - accuracy_as(small, tok, format, records, AnswerKind::Math, max_new, 64, self.device)
                    .map_err(|e| e.to_string())?
                    .accuracy
            }
            _ => self.trained.loss(&s, c.ranks.as_ref(), self.val, self.pad)?,
        };
        let spec = self.trained.spec();
        let cost = match (self.objective, &small) {
            (Objective::Latency, Some(small)) => {
                measure(small, &SEARCH_LATENCY, self.device).map_err(|e| e.to_string())?.decode_ms_per_token
            }
            (Objective::Macs, _) => structure_cost(spec, &s, 128).1 as f64,
            _ => structure_cost(spec, &s, 0).0 as f64,
        };
        Ok(vec![loss, cost])
    }
}

fn io(path: &std::path::Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input { path: path.to_path_buf(), reason: e.to_string() }
}

/// `a` when every entry is `a`, else the entries joined with `/`.
fn compact(values: impl Iterator<Item = usize>) -> String {
    let v: Vec<usize> = values.collect();
    if v.iter().all(|x| *x == v[0]) { v[0].to_string() } else { v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("/") }
}

/// A value's clap name (`grid-params`).
fn kebab(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

/// The LoNAS adapter space: LoNAS's preset (`[q,k,v]` and `[gate,up]` groups) unless
/// `--targets` names the sites; ranks checked against the projections' widths.
fn lonas_space(a: &ShearsConfig, spec: &ArchSpec, ranks: &[usize]) -> Result<SearchSpace, PipelineError> {
    let space = match a.targets.as_deref() {
        Some(_) => return a.validate_for(spec, ranks),
        None => SearchSpace::lonas_preset(spec, ranks)?,
    };
    check_ranks_fit(spec, &space)?;
    Ok(space)
}

/// Runs NAS (or LoNAS with `lora`): optional importance reordering, super-network training with
/// the sampler, an NSGA-II search on the validation split, extraction of the maximal, heuristic
/// and front sub-networks into standalone checkpoints, and their test accuracy and latency
/// (timed round-robin in this process). Writes `report.json` and `report.md`.
pub fn nas<B: AutodiffBackend>(args: &NasConfig, device: &B::Device, reporter: &dyn Reporter) -> Result<NasResult, PipelineError> {
    let kind = match args.strategy {
        NasStrategy::Sandwich => SamplerKind::Sandwich,
        NasStrategy::Random => SamplerKind::Random,
        NasStrategy::GridParams => SamplerKind::GridParams,
        NasStrategy::CalibrateMag => SamplerKind::CalibrateMag,
    };
    let objective = args.objective;
    let a = &args.common;
    a.validate()?;
    if args.bins == 0 || args.budget == 0 {
        return Err(PipelineError::Usage(format!("--bins {} and --budget {}: both must be at least 1", args.bins, args.budget)));
    }
    let lonas_ranks = a.ranks.clone().unwrap_or_else(|| if a.model.is_none() { vec![16, 14] } else { vec![32, 28] });
    let base = base_spec(a)?;
    a.validate_export(&base)?;
    let lspace = if args.lora { Some(lonas_space(a, &base, &lonas_ranks)?) } else { None };
    let task = load_task(a)?;
    let extra = serde_json::json!({"strategy": args.strategy, "importance": args.importance, "lora": args.lora, "per_layer": args.per_layer, "fixed_embedding": args.fixed_embedding, "metric": kebab(&args.metric), "objective": args.objective, "bins": args.bins, "budget": args.budget});
    let run_dir = a.open_run("nas", extra)?;
    let out = run_dir.path().to_path_buf();
    let checkpoint = out.join("supernet-checkpoint");
    let base_dir = materialize_base(a, &out)?;
    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base_dir.join("config.json")).map_err(|e| io(&base_dir, e))?)
            .map_err(|e| io(&base_dir, e))?;
    let mut model = DenseLm::<B>::load(&base_dir, device)?;
    let spec = model.spec().clone();
    let evals = Evals::new(a, &base_dir, &spec, &tok, &task.format)?;
    let eos = spec.eos_token_ids.first().copied();
    let pad = eos.unwrap_or(0);
    let tokenize = |r: &data::Record| data::tokenize_as(r, &tok, &task.format, eos, a.cutoff, a.train_on_inputs);
    let train: Vec<Example> = task.train.iter().map(tokenize).collect::<Result<_, _>>()?;
    let val: Vec<Example> = task.val.iter().map(tokenize).collect::<Result<_, _>>()?;
    let mut block_order = None;
    if args.importance {
        let docs = task.calibration_docs.iter().map(|d| task.format.encode(&tok, d)).collect::<Result<Vec<_>, _>>()?;
        let calib = secateur_sparsity::sample_calibration(&docs, a.calibration_samples.min(64), 64, a.seed);
        let imp = importance(&model, &calib, 8)?;
        let alibi = matches!(spec.position, PositionKind::Alibi { .. });
        model = reorder(model, &imp, !alibi)?;
        block_order = Some(descending(&imp.blocks));
        reporter.line(&format!("nas: reordered by importance; block order {:?}", block_order.as_ref().expect("set")));
    }
    let mut space = StructureSpace::preset(&spec, block_order);
    space.per_layer = args.per_layer;
    if args.fixed_embedding {
        space.hiddens.truncate(1);
    }
    let sampler = Sampler::new(kind, space.clone(), &model, args.bins, a.seed);
    let mut cfg = train_config(a, Strategy::Nls, reporter.bars());
    cfg.checkpoint_every = a.checkpoint_every;
    let (trained, report) = if let Some(lspace) = lspace {
        let alpha = a.alpha.unwrap_or(2.0 * *lonas_ranks.iter().max().unwrap_or(&16) as f64);
        let lcfg = secateur_elastic_lora::LoraConfig { alpha, seed: a.seed, ..Default::default() };
        let (adapted, control) = secateur_elastic_lora::attach(model.no_grad(), &lspace, &lcfg, device)?;
        let (t, r) = train_supernet(adapted, &sampler, Some(&control), &train, &cfg, pad, Some(&checkpoint))?;
        (Trained::Lora(t.valid(), control), r)
    } else {
        let (t, r) = train_supernet(model, &sampler, None, &train, &cfg, pad, Some(&checkpoint))?;
        (Trained::Full(t.valid()), r)
    };
    reporter.line(&format!("nas: {} steps in {:.1}s, grid of {}", report.steps, report.seconds, sampler.grid.len()));

    let mut vars: Vec<Variable> = space.variables().into_iter().map(|n| Variable::Choice { n }).collect();
    if let Some(rs) = trained.rank_space() {
        vars.extend(rs.groups.iter().map(|g| Variable::Choice { n: g.choices.len() }));
    }
    let accuracy_metric = (args.metric == Metric::Accuracy).then_some((&tok, &task.format, task.val.as_slice(), a.max_new_tokens));
    let problem = SpaceProblem {
        vars,
        space: &space,
        trained: &trained,
        device,
        config: &config,
        val: &val,
        pad,
        objective,
        accuracy: accuracy_metric,
    };
    let mut ev = Evaluator::new(&problem);
    let result = Nsga2::new(8, a.seed).run(&mut ev, args.budget)?;
    let mut front = result.front.clone();
    front.sort_by(|x, y| x.f.as_ref().map_or(0.0, |f| f[1]).total_cmp(&y.f.as_ref().map_or(0.0, |f| f[1])));
    secateur_search::report::write_outputs(&out.join("search"), &problem.objective_names(), &ev.history, &front)?;

    // Maximal and heuristic sub-networks, then the front (as the LoNAS table lists them).
    let rank_space = trained.rank_space();
    let mut candidates = vec![
        ("maximal".to_string(), Candidate { choice: space.maximal(), ranks: rank_space.map(SearchSpace::maximal) }, None),
        ("heuristic".to_string(), Candidate { choice: space.heuristic(), ranks: rank_space.map(SearchSpace::heuristic) }, None),
    ];
    for (i, e) in front.iter().enumerate() {
        let loss = if problem.accuracy.is_none() { e.f.as_ref().map(|f| f[0]) } else { None };
        candidates.push((format!("nsga2-{}", i + 1), problem.candidate(&e.x), loss));
    }
    let timing = LatencySetup::default();
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    let mut table = format!(
        "NAS `{}`{}{}{}: {} training steps in {:.0}s; search: NSGA-II, {} evaluations ({} vs {}), front of {}. Latency: prefill {}x{} tokens, greedy decoding of {} tokens (batch 1, KV cache), median of {} rounds timing every sub-network in turn, this machine; speed-up against the maximal sub-network.\n\n",
        kebab(&args.strategy),
        if args.lora { " (LoNAS: elastic LoRA on the frozen base)" } else { "" },
        if args.importance { " with importance reordering" } else { "" },
        if args.per_layer { ", per-block widths" } else { "" },
        report.steps,
        report.seconds,
        ev.history.len(),
        problem.objective_names()[0],
        objective.name(),
        front.len(),
        timing.batch,
        timing.prompt,
        timing.new_tokens,
        timing.repeats
    );
    // Extract and save every sub-network, then time them all round-robin in this process.
    let mut extracted = Vec::new();
    for (name, c, _) in &candidates {
        let s = space.structure(&c.choice);
        let (small, small_cfg) = trained.extract(&s, c.ranks.as_ref(), &config)?;
        let dir = out.join(name);
        let staged = StagedDir::new(&dir)?;
        save_new(&small, &small_cfg, staged.path())?;
        // The tokenizer files beside the weights (save_new wrote config.json).
        for f in COPIED_FILES.iter().filter(|f| **f != "config.json") {
            let from = base_dir.join(f);
            if from.is_file() || *f == "tokenizer.json" {
                write_atomic(&staged.path().join(f), &std::fs::read(&from).map_err(|e| io(&from, e))?)?;
            }
        }
        staged.publish()?;
        extracted.push((s, small, dir));
    }
    let mut gguf = Vec::new();
    for (_, _, dir) in &extracted {
        gguf.extend(export_model::<B::InnerBackend>(a, &out, dir, device, reporter)?);
    }
    let latencies = measure_many(&extracted.iter().map(|e| &e.1).collect::<Vec<_>>(), &timing, device)?;
    let base = latencies[0];
    for (((name, c, front_loss), (s, small, dir)), lat) in candidates.iter().zip(&extracted).zip(latencies) {
        let loss = match front_loss {
            Some(l) => *l,
            None => trained.loss(s, c.ranks.as_ref(), &val, pad).map_err(|e| io(dir, e))?,
        };
        let acc = accuracy_as(small, &tok, &task.format, &task.test, AnswerKind::Math, a.max_new_tokens, 64, device)?;
        let eval = evals.run(small, &tok, device, reporter)?;
        let (params, macs) = structure_cost(&spec, s, 128);
        let ranks = match (&c.ranks, rank_space) {
            (Some(r), Some(rs)) => compact(rs.ranks(r)?.into_iter()),
            _ => "-".into(),
        };
        lines.push(format!(
            "| {name} | {} | {} | {} | {} | {ranks} | {params} | {macs} | {loss:.4} | {:.1}% | {:.2} | {:.0} | {:.2}x / {:.2}x |",
            s.layers.len(),
            s.hidden(&spec),
            compact(s.layers.iter().map(|l| l.mlp_width)),
            compact(s.layers.iter().map(|l| l.kv_groups)),
            acc.accuracy * 100.0,
            lat.prefill_ms,
            lat.decode_tokens_per_s(),
            base.prefill_ms / lat.prefill_ms,
            base.decode_ms_per_token / lat.decode_ms_per_token,
        ));
        rows.push(NasRow {
            name: name.clone(),
            dir: dir.clone(),
            structure: s.clone(),
            ranks: c.ranks.clone(),
            parameters: params,
            macs,
            validation_loss: loss,
            test_accuracy: acc.accuracy,
            latency: lat,
            prefill_speedup: base.prefill_ms / lat.prefill_ms,
            decode_speedup: base.decode_ms_per_token / lat.decode_ms_per_token,
            eval,
        });
    }
    let (header, rule, cells) = eval_columns(&rows.iter().map(|r| &r.eval).collect::<Vec<_>>());
    table += &format!(
        "| Sub-network | Blocks | Embedding | MLP width | KV groups | Ranks | Parameters | MACs/token (ctx 128) | Val loss | Test accuracy | Prefill ms | Decode tok/s | Speed-up (prefill / decode) |{header}\n|---|---|---|---|---|---|---|---|---|---|---|---|---|{rule}\n"
    );
    for (line, extra) in lines.iter().zip(cells) {
        table += &format!("{line}{extra}\n");
    }
    let report_json = json!({"strategy": kebab(&args.strategy), "lora": args.lora, "importance": args.importance, "per_layer": args.per_layer, "objective": objective.name(), "metric": kebab(&args.metric), "space": space, "latency_setup": timing, "grid_size": sampler.grid.len(), "train": report, "rows": rows, "gguf": gguf});
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report_json).expect("JSON").as_bytes())?;
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    Ok(NasResult { dir: out, rows, table })
}
