//! `secateur nas`: train a weight-sharing super-network (optionally after importance
//! reordering), search it on the validation split (loss against parameters), extract the front
//! into standalone checkpoints and measure them on the test split.

use burn::module::{AutodiffModule, Module};
use secateur_models::extract::extract;
use secateur_models::weights::{save_new, write_atomic};
use secateur_models::{Cpu, CpuAutodiff, DenseLm, Family, PositionKind, TextTokenizer};
use secateur_search::nsga2::Nsga2;
use secateur_search::{Evaluator, Problem, Variable};
use secateur_supernet::data::{self, Example};
use secateur_supernet::eval::{accuracy, AnswerKind};
use secateur_supernet::nas::{structure_cost, train_supernet, validation_loss, Sampler, SamplerKind, StructureChoice, StructureSpace};
use secateur_supernet::reorder::{descending, importance, reorder};
use secateur_supernet::train::Strategy;
use serde_json::json;

use crate::shears::{load_task, materialize_base, train_config, ShearsArgs};
use crate::CliError;

/// Options of `secateur nas`.
#[derive(Debug, Clone, clap::Args)]
pub struct NasArgs {
    /// sandwich, random, grid-params or calibrate-mag.
    #[arg(long, default_value = "sandwich")]
    pub strategy: String,
    /// Reorder neurons, head groups and blocks by importance before training.
    #[arg(long)]
    pub importance: bool,
    /// LoNAS: freeze the base and train LoRA adapters (rank: the first of `--ranks`) whose
    /// output rows and input columns are sliced with the weights.
    #[arg(long)]
    pub lora: bool,
    /// Parameter bins of the grid samplers (the paper's K).
    #[arg(long, default_value_t = 22)]
    pub bins: usize,
    /// Sub-networks evaluated by the search.
    #[arg(long, default_value_t = 16)]
    pub budget: usize,
    #[command(flatten)]
    pub common: ShearsArgs,
}

struct SpaceProblem<'a> {
    vars: Vec<Variable>,
    space: &'a StructureSpace,
    model: &'a DenseLm<Cpu>,
    val: &'a [Example],
    pad: u32,
}

fn choice(space: &StructureSpace, x: &[f64]) -> StructureChoice {
    space.choice(&x.iter().map(|v| *v as usize).collect::<Vec<_>>())
}

/// `a` when every entry is `a`, else the entries joined with `/`.
fn compact(values: impl Iterator<Item = usize>) -> String {
    let v: Vec<usize> = values.collect();
    if v.iter().all(|x| *x == v[0]) { v[0].to_string() } else { v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("/") }
}

impl Problem for SpaceProblem<'_> {
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
        vec!["validation loss".into(), "parameters".into()]
    }
    fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String> {
        let s = self.space.structure(&choice(self.space, x));
        let loss = validation_loss(self.model, &s, self.val, self.pad, 32).map_err(|e| e.to_string())?;
        Ok(vec![loss, structure_cost(self.model.spec(), &s, 0).0 as f64])
    }
}

fn io(path: &std::path::Path, e: impl std::fmt::Display) -> CliError {
    CliError::Input { path: path.to_path_buf(), reason: e.to_string() }
}

/// Runs the NAS pipeline; returns the markdown table of the extracted front.
pub fn run(args: NasArgs) -> Result<String, CliError> {
    let kind = match args.strategy.as_str() {
        "sandwich" => SamplerKind::Sandwich,
        "random" => SamplerKind::Random,
        "grid-params" => SamplerKind::GridParams,
        "calibrate-mag" => SamplerKind::CalibrateMag,
        other => return Err(CliError::Usage(format!("unknown strategy {other:?} (sandwich, random, grid-params, calibrate-mag)"))),
    };
    let a = &args.common;
    let out = a.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let base_dir = materialize_base(a, &out)?;
    let device = Default::default();
    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let task = load_task(a)?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base_dir.join("config.json")).map_err(|e| io(&base_dir, e))?).map_err(|e| io(&base_dir, e))?;
    let mut model = DenseLm::<CpuAutodiff>::load(&base_dir, &device)?;
    let spec = model.spec().clone();
    let eos = spec.eos_token_ids.first().copied();
    let pad = eos.unwrap_or(0);
    let tokenize = |r: &data::Record| data::tokenize(r, &tok, eos, a.cutoff, a.train_on_inputs);
    let train: Vec<Example> = task.train.iter().map(tokenize).collect::<Result<_, _>>().map_err(|e| io(&out, e))?;
    let val: Vec<Example> = task.val.iter().map(tokenize).collect::<Result<_, _>>().map_err(|e| io(&out, e))?;
    let mut block_order = None;
    if args.importance {
        let docs = task.calibration_docs.iter().map(|d| tok.encode(d)).collect::<Result<Vec<_>, _>>()?;
        let calib = secateur_sparsity::sample_calibration(&docs, a.calibration_samples.min(64), 64, a.seed);
        let imp = importance(&model, &calib, 8).map_err(|e| io(&out, e))?;
        let alibi = matches!(spec.position, PositionKind::Alibi { .. });
        model = reorder(model, &imp, !alibi).map_err(|e| io(&out, e))?;
        block_order = Some(descending(&imp.blocks));
        eprintln!("nas: reordered by importance; block order {:?}", block_order.as_ref().expect("set"));
    }
    let mut space = StructureSpace::preset(&spec, block_order);
    if spec.family == Family::Bloom {
        space.widths.truncate(1);
    }
    if spec.family != Family::Llama || matches!(spec.position, PositionKind::Alibi { .. }) {
        space.groups.truncate(1);
    }
    let sampler = Sampler::new(kind, space.clone(), &model, args.bins, a.seed);
    let cfg = train_config(a, Strategy::Nls);
    // The trained super-network as a dense model: with LoNAS, adapters merged at full size (a
    // sliced merged weight is the sliced weight plus the sliced adapter: the same sub-network).
    let (trained, report) = if args.lora {
        let (ranks, alpha) = crate::shears::ranks_and_alpha(a);
        let targets = a.targets.as_deref().map(secateur_elastic_lora::SearchSpace::parse_targets).transpose()?;
        let lspace = secateur_elastic_lora::SearchSpace::preset(&spec, targets.as_deref(), &ranks[..1])?;
        let lcfg = secateur_elastic_lora::LoraConfig { alpha, seed: a.seed, ..Default::default() };
        let (adapted, _) = secateur_elastic_lora::attach(model.no_grad(), &lspace, &lcfg, &device)?;
        let (t, r) = train_supernet(adapted, &sampler, None, &train, &cfg, pad, None).map_err(|e| io(&out, e))?;
        (secateur_elastic_lora::peft::merge(t.valid()), r)
    } else {
        let (t, r) = train_supernet(model, &sampler, None, &train, &cfg, pad, None).map_err(|e| io(&out, e))?;
        (t.valid(), r)
    };
    eprintln!("nas: {} steps in {:.1}s, grid of {}", report.steps, report.seconds, report.grid_size);

    let problem = SpaceProblem {
        vars: space.variables().into_iter().map(|n| Variable::Choice { n }).collect(),
        space: &space,
        model: &trained,
        val: &val,
        pad,
    };
    let mut ev = Evaluator::new(&problem);
    let result = Nsga2::new(8, a.seed).run(&mut ev, args.budget).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut front = result.front.clone();
    front.sort_by(|x, y| x.f.as_ref().map_or(0.0, |f| f[1]).total_cmp(&y.f.as_ref().map_or(0.0, |f| f[1])));
    secateur_search::report::write_outputs(&out.join("search"), &problem.objective_names(), &ev.history, &front).map_err(|e| CliError::Usage(e.to_string()))?;

    let mut rows = Vec::new();
    let mut table = format!(
        "NAS `{}`{}{}: {} training steps in {:.0}s; front of {} sub-networks (validation loss vs parameters), test accuracy of the extracted models:\n\n| Sub-network | Blocks | MLP width | KV groups | Parameters | MACs/token (ctx 128) | Val loss | Test accuracy |\n|---|---|---|---|---|---|---|---|\n",
        args.strategy,
        if args.lora { " (LoNAS: LoRA on the frozen base)" } else { "" },
        if args.importance { " with importance reordering" } else { "" },
        report.steps,
        report.seconds,
        front.len()
    );
    for (i, e) in front.iter().enumerate() {
        let s = space.structure(&choice(&space, &e.x));
        let (small, cfg) = extract(&trained, &s, &config)?;
        let dir = out.join(format!("front-{}", i + 1));
        save_new(&small, &cfg, &dir)?;
        std::fs::copy(base_dir.join("tokenizer.json"), dir.join("tokenizer.json")).map_err(|e| io(&dir, e))?;
        let acc = accuracy(&small, &tok, &task.test, AnswerKind::Math, a.max_new_tokens, 64, &device).map_err(|e| io(&dir, e))?;
        let (params, macs) = structure_cost(&spec, &s, 128);
        let loss = e.f.as_ref().map_or(f64::NAN, |f| f[0]);
        table += &format!(
            "| front-{} | {} | {} | {} | {} | {} | {:.4} | {:.1}% |\n",
            i + 1,
            s.layers.len(),
            compact(s.layers.iter().map(|l| l.mlp_width)),
            compact(s.layers.iter().map(|l| l.kv_groups)),
            params,
            macs,
            loss,
            acc.accuracy * 100.0
        );
        rows.push(json!({"dir": dir, "structure": s, "parameters": params, "macs": macs, "validation_loss": loss, "test_accuracy": acc.accuracy}));
    }
    let report_json = json!({"strategy": args.strategy, "lora": args.lora, "importance": args.importance, "train": report, "front": rows});
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report_json).expect("JSON").as_bytes())?;
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    Ok(table)
}
