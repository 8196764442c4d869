//! `secateur shears`: Wanda sparsity, then NLS super-adapter training, sub-adapter evaluation,
//! and a report shaped like the Shears paper's ablation (its Tables 4 and 6).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use secateur_elastic_lora::peft::export_peft;
use secateur_elastic_lora::{AdaptedLm, LoraConfig, RankControl, Scaling, SearchSpace, SubnetConfig, attach};
use secateur_models::weights::write_atomic;
use secateur_models::{ArchSpec, Cpu, CpuAutodiff, DenseLm, TextTokenizer};
use secateur_runs::{Manifest, OpenMode, RunDir, StagedDir};
use secateur_sparsity::{Pattern, PruneConfig, ScoreMethod, prune, sample_calibration};
use secateur_supernet::data::{self, Example, Record};
use secateur_supernet::eval::{AnswerKind, accuracy};
use secateur_supernet::toy;
use secateur_supernet::train::{Strategy, TrainConfig, train};
use serde::Serialize;
use serde_json::json;

use crate::CliError;

/// The embedded default base model (`cargo xtask pretrain-tiny`).
const TINY_CONFIG: &[u8] = include_bytes!("../../../assets/tiny-llama/config.json");
const TINY_WEIGHTS: &[u8] = include_bytes!("../../../assets/tiny-llama/model.safetensors");
const TINY_TOKENIZER: &[u8] = include_bytes!("../../../assets/tiny-llama/tokenizer.json");

/// Options of a Shears run (saved in the run directory's `run.json`).
#[derive(Debug, Clone, clap::Args, Serialize, serde::Deserialize)]
pub struct ShearsArgs {
    /// Base checkpoint directory (default: the embedded tiny LLaMA).
    #[arg(long, requires = "dataset")]
    pub model: Option<PathBuf>,
    /// LLM-Adapters JSON/JSONL records (default: the embedded arithmetic word problems). Split
    /// into train, validation and test with `--val-size` and `--test-size`.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Descending rank choices of every group (default: 16,12,8 for the embedded model, else 32,24,16).
    #[arg(long, value_delimiter = ',')]
    pub ranks: Option<Vec<usize>>,
    /// Adapted projections, e.g. `q,k,v,up,down` (default: the family preset).
    #[arg(long)]
    pub targets: Option<String>,
    /// LoRA alpha (default: 2 x the largest rank).
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 16)]
    pub micro_batch_size: usize,
    /// Token cutoff of training examples.
    #[arg(long, default_value_t = 256)]
    pub cutoff: usize,
    /// Train on prompt and answer tokens (default: the answer only).
    #[arg(long)]
    pub train_on_inputs: bool,
    #[arg(long, default_value_t = 100)]
    pub val_size: usize,
    #[arg(long, default_value_t = 200)]
    pub test_size: usize,
    #[arg(long, default_value_t = 128)]
    pub calibration_samples: usize,
    #[arg(long, default_value_t = 40)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a training checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue a killed run in `--out` from its checkpoints (the arguments that change
    /// results must equal the recorded ones).
    #[arg(long)]
    pub resume: bool,
    /// Replace whatever `--out` holds (another run, other files), whole.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Run directory (default: `runs/<command>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments that do not change a run's results: a resumed run may give other values.
pub const NOT_RESULTS: &[&str] = &["out", "resume", "force", "checkpoint_every"];

/// Largest rank choice, learning rate and alpha accepted (larger ones are typos).
const MAX_ALPHA: f64 = 1e6;

impl ShearsArgs {
    /// The run directory: `--out`, else `runs/<command>`.
    pub fn out_dir(&self, command: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(command))
    }

    /// Checks every setting that needs no file, before any work starts.
    pub fn validate(&self) -> Result<(), CliError> {
        let usage = |m: String| Err(CliError::Usage(m));
        if !(self.sparsity.is_finite() && (0.0..1.0).contains(&self.sparsity)) {
            return usage(format!("--sparsity {}: must be in [0, 1)", self.sparsity));
        }
        if let Some(r) = &self.ranks
            && (r.is_empty() || r.contains(&0) || r.windows(2).any(|w| w[0] <= w[1]))
        {
            return usage(format!(
                "--ranks {r:?}: give positive ranks in strictly descending order, e.g. 32,24,16 (the first is the maximal rank)"
            ));
        }
        if let Some(t) = &self.targets
            && SearchSpace::parse_targets(t)?.is_empty()
        {
            return usage(format!("--targets {t:?}: name at least one projection, e.g. q,k,v,up,down"));
        }
        if let Some(a) = self.alpha
            && !(a.is_finite() && a > 0.0 && a <= MAX_ALPHA)
        {
            return usage(format!("--alpha {a}: must be a positive number of at most {MAX_ALPHA}"));
        }
        if self.cutoff < 2 {
            return usage(format!("--cutoff {}: an example needs at least 2 tokens", self.cutoff));
        }
        if self.val_size == 0 || self.test_size == 0 {
            return usage("--val-size and --test-size must be at least 1 (the search uses validation, the report test)".into());
        }
        if self.max_new_tokens == 0 {
            return usage("--max-new-tokens must be at least 1".into());
        }
        secateur_sparsity::check_calibration_size(self.calibration_samples, 64)?;
        train_config(self, Strategy::Fixed).validate()?;
        Ok(())
    }

    /// Checks the settings that need the base model's architecture (ranks against the adapted
    /// projections' widths, targets against its sites), before any work starts. Returns the
    /// LoRA search space.
    pub fn validate_for(&self, spec: &ArchSpec, ranks: &[usize]) -> Result<SearchSpace, CliError> {
        let targets = self.targets.as_deref().map(SearchSpace::parse_targets).transpose()?;
        let space = SearchSpace::preset(spec, targets.as_deref(), ranks)?;
        check_ranks_fit(spec, &space)?;
        Ok(space)
    }

    /// Opens the run directory of `command` with these arguments (and `extra`, the command's
    /// own), refusing to clobber anything (see [`RunDir::open`]).
    pub fn open_run(&self, command: &str, extra: serde_json::Value) -> Result<RunDir, CliError> {
        let mut args = serde_json::to_value(self).expect("JSON");
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        let inputs: Vec<&Path> = self.model.iter().chain(self.dataset.iter()).map(PathBuf::as_path).collect();
        let mode = OpenMode::from_flags(self.resume, self.force);
        Ok(RunDir::open(&self.out_dir(command), &Manifest::new(command, &args), NOT_RESULTS, mode, &inputs)?)
    }
}

/// Checks that no rank choice exceeds the smaller side of a projection it adapts.
pub fn check_ranks_fit(spec: &ArchSpec, space: &SearchSpace) -> Result<(), CliError> {
    for g in &space.groups {
        let max = g.choices.iter().copied().max().unwrap_or(0);
        for s in &g.sites {
            let [o, i] = spec.site_shape(s.layer, s.kind);
            if max > o.min(i) {
                return Err(CliError::Usage(format!(
                    "--ranks: rank {max} exceeds the width of {s} ({o} x {i}); the largest rank there is {}",
                    o.min(i)
                )));
            }
        }
    }
    Ok(())
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub accuracy: f64,
    pub correct: usize,
    pub total: usize,
    pub sparsity: f64,
    pub nonzero_params: usize,
    pub trainable_params: usize,
    pub adapter_ranks: Option<Vec<usize>>,
    pub train_seconds: Option<f64>,
}

fn err(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Input { path: path.to_path_buf(), reason: e.to_string() }
}

/// The splits of a run's task.
pub struct Task {
    pub train: Vec<Record>,
    pub test: Vec<Record>,
    pub val: Vec<Record>,
    pub calibration_docs: Vec<String>,
}

/// The splits a run with `args` uses (regenerated or re-split identically from the seed).
/// Every record needs the fields that training and evaluation read (`instruction`, `output`,
/// `answer`), and each split must keep at least one record.
pub fn load_task(args: &ShearsArgs) -> Result<Task, CliError> {
    match &args.dataset {
        None => {
            let (train, val, test) = toy::arithmetic_task(2000, args.val_size, args.test_size, 0);
            Ok(Task { train, val, test, calibration_docs: toy::corpus(512, 1) })
        }
        Some(path) => {
            let records = data::read_records(path)?;
            for (i, r) in records.iter().enumerate() {
                for (field, value) in [("instruction", &r.instruction), ("output", &r.output), ("answer", &r.answer)] {
                    if value.trim().is_empty() {
                        return Err(err(
                            path,
                            format!(
                                "record {} has no `{field}` (training needs `instruction` and `output`, exact-match evaluation `answer`)",
                                i + 1
                            ),
                        ));
                    }
                }
            }
            let n = records.len();
            if n <= args.val_size + args.test_size {
                let (v, t) = ((n / 10).max(1), (n / 5).max(1));
                return Err(err(
                    path,
                    format!(
                        "{n} records cannot be split into --val-size {} and --test-size {} with any left for training; size the splits to the data, e.g. --val-size {v} --test-size {t}",
                        args.val_size, args.test_size
                    ),
                ));
            }
            let (rest, test) = data::split(&records, args.test_size, args.seed);
            let (train, val) = data::split(&rest, args.val_size, args.seed.wrapping_add(1));
            let calibration_docs = train.iter().map(|r| format!("{}{}", data::alpaca_prompt(&r.instruction, &r.input), r.output)).collect();
            Ok(Task { train, val, test, calibration_docs })
        }
    }
}

/// Writes the embedded tiny model into `out/base` when no `--model` is given; returns the base.
pub fn materialize_base(args: &ShearsArgs, out: &Path) -> Result<PathBuf, CliError> {
    match &args.model {
        Some(d) => Ok(d.clone()),
        None => {
            let d = out.join("base");
            let staged = StagedDir::new(&d)?;
            for (name, bytes) in [("config.json", TINY_CONFIG), ("model.safetensors", TINY_WEIGHTS), ("tokenizer.json", TINY_TOKENIZER)] {
                write_atomic(&staged.path().join(name), bytes)?;
            }
            staged.publish()?;
            Ok(d)
        }
    }
}

/// The architecture of the run's base (the user's `--model`, or the embedded tiny model),
/// read from its config alone: settings are checked against it before any work.
pub fn base_spec(args: &ShearsArgs) -> Result<ArchSpec, CliError> {
    Ok(match &args.model {
        Some(m) => ArchSpec::from_config_file(&m.join("config.json"))?,
        None => {
            let path = Path::new("<embedded tiny-llama>/config.json");
            let value = serde_json::from_slice(TINY_CONFIG).map_err(|e| err(path, e))?;
            ArchSpec::from_config_value(path, value)?
        }
    })
}

/// Rank choices and alpha of a run (defaults depend on whether the base is the embedded one).
pub fn ranks_and_alpha(args: &ShearsArgs) -> (Vec<usize>, f64) {
    let ranks = args.ranks.clone().unwrap_or_else(|| if args.model.is_none() { vec![16, 12, 8] } else { vec![32, 24, 16] });
    let alpha = args.alpha.unwrap_or(2.0 * *ranks.iter().max().unwrap_or(&16) as f64);
    (ranks, alpha)
}

/// Training settings of a run.
pub fn train_config(args: &ShearsArgs, strategy: Strategy) -> TrainConfig {
    TrainConfig {
        strategy,
        epochs: args.epochs,
        batch_size: args.batch_size,
        micro_batch_size: args.micro_batch_size.min(args.batch_size),
        lr: args.lr,
        warmup_steps: 10,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        progress: true,
        ..Default::default()
    }
}

/// Wanda-prunes `dense` with calibration windows drawn from the task's calibration documents
/// and writes the sparse checkpoint to `wanda_dir`. Returns the pruned model, its sparsity, its
/// non-zero parameters and the pruning time.
pub fn wanda(
    args: &ShearsArgs,
    base_dir: &Path,
    wanda_dir: &Path,
    dense: DenseLm<Cpu>,
    tok: &TextTokenizer,
    task: &Task,
) -> Result<(DenseLm<Cpu>, f64, usize, f64), CliError> {
    let cfg =
        PruneConfig { method: ScoreMethod::Wanda, pattern: Pattern::Unstructured { ratio: args.sparsity }, batch_size: 8, progress: true };
    let docs = task.calibration_docs.iter().map(|d| tok.encode(d)).collect::<Result<Vec<_>, _>>()?;
    let seq_len = if args.model.is_none() { 64 } else { dense.spec().max_position_embeddings.unwrap_or(2048).min(2048) };
    let calibration = sample_calibration(&docs, args.calibration_samples, seq_len, args.seed);
    let clock = Instant::now();
    let pruned = prune(dense, &calibration, &cfg)?;
    let seconds = clock.elapsed().as_secs_f64();
    let staged = StagedDir::new(wanda_dir)?;
    let report = secateur_sparsity::checkpoint::write_pruned(base_dir, staged.path(), &pruned.model, &pruned.masks, &cfg)?;
    staged.publish()?;
    let sparsity = report["total_sparsity"].as_f64().unwrap_or(0.0);
    let nonzero = report["nonzero_parameters"].as_u64().unwrap_or(0) as usize;
    eprintln!("wanda: sparsity {sparsity:.3} in {seconds:.1}s");
    Ok((pruned.model, sparsity, nonzero, seconds))
}

/// Runs the whole pipeline and writes `report.json` and `report.md` into the run directory.
pub fn run(args: ShearsArgs) -> Result<String, CliError> {
    let total_clock = Instant::now();
    args.validate()?;
    let (ranks, alpha) = ranks_and_alpha(&args);
    let space = args.validate_for(&base_spec(&args)?, &ranks)?;
    let task = load_task(&args)?;
    let run_dir = args.open_run("shears", json!({}))?;
    let out = run_dir.path().to_path_buf();
    let base_dir = materialize_base(&args, &out)?;

    let device = Default::default();
    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    eprintln!("shears: {} train / {} validation / {} test examples", task.train.len(), task.val.len(), task.test.len());
    let mut rows = Vec::new();

    // 1. The dense base, untuned.
    let dense = DenseLm::<Cpu>::load(&base_dir, &device)?;
    let spec = dense.spec().clone();
    let dense_params = dense.num_params();
    let acc = accuracy(&dense, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device)?;
    eprintln!("dense base: accuracy {:.3}", acc.accuracy);
    rows.push(Row {
        name: "Dense base (no tuning)".into(),
        accuracy: acc.accuracy,
        correct: acc.correct,
        total: acc.total,
        sparsity: 0.0,
        nonzero_params: dense_params,
        trainable_params: 0,
        adapter_ranks: None,
        train_seconds: None,
    });

    // 2. Wanda.
    let wanda_dir = out.join("wanda");
    let (pruned, sparsity, nonzero, prune_seconds) = wanda(&args, &base_dir, &wanda_dir, dense, &tok, &task)?;
    let acc = accuracy(&pruned, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device)?;
    eprintln!("wanda: accuracy {:.3}", acc.accuracy);
    rows.push(Row {
        name: format!("Wanda {:.0}% (no tuning)", args.sparsity * 100.0),
        accuracy: acc.accuracy,
        correct: acc.correct,
        total: acc.total,
        sparsity,
        nonzero_params: nonzero,
        trainable_params: 0,
        adapter_ranks: None,
        train_seconds: None,
    });
    drop(pruned);

    // 3. Adapters on the sparse base: plain LoRA at the maximal rank, then NLS.
    space.to_file(&out.join("search_space.json"))?;
    let eos = spec.eos_token_ids.first().copied();
    let examples: Vec<Example> =
        task.train.iter().map(|r| data::tokenize(r, &tok, eos, args.cutoff, args.train_on_inputs)).collect::<Result<_, _>>()?;
    let pad = eos.unwrap_or(0);
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let train_cfg = |strategy| train_config(&args, strategy);
    let mut adapters: Vec<(String, AdaptedLm<Cpu>, RankControl, f64, usize)> = Vec::new();
    for (label, strategy) in [("lora", Strategy::Fixed), ("nls", Strategy::Nls)] {
        let sparse = DenseLm::<CpuAutodiff>::load(&wanda_dir, &device)?.no_grad();
        let (model, ctl) = attach(sparse, &space, &lora_cfg, &device)?;
        let ckpt = out.join(format!("train-{label}"));
        let (model, report) = train(model, &ctl, &examples, &train_cfg(strategy), pad, Some(&ckpt))?;
        eprintln!(
            "{label}: {} steps in {:.1}s, final loss {:.4}",
            report.steps,
            report.seconds,
            report.losses.last().copied().unwrap_or(f64::NAN)
        );
        write_atomic(&ckpt.join("report.json"), serde_json::to_string(&report).expect("JSON").as_bytes())?;
        adapters.push((label.to_string(), model.valid(), ctl, report.seconds, report.trainable_params));
    }
    let mut evaluate = |name: String,
                        model: &AdaptedLm<Cpu>,
                        ctl: &RankControl,
                        config: &SubnetConfig,
                        seconds: f64,
                        trainable: usize|
     -> Result<(), CliError> {
        ctl.apply(config)?;
        let ranks = ctl.space.ranks(config)?;
        let active = secateur_elastic_lora::adapter_params(&model.sites(), &ctl.ranks());
        let acc = accuracy(model, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device)?;
        eprintln!("{name}: accuracy {:.3}", acc.accuracy);
        rows.push(Row {
            name,
            accuracy: acc.accuracy,
            correct: acc.correct,
            total: acc.total,
            sparsity,
            nonzero_params: nonzero + active,
            trainable_params: trainable,
            adapter_ranks: Some(ranks),
            train_seconds: Some(seconds),
        });
        Ok(())
    };
    let pct = args.sparsity * 100.0;
    let (_, lora, lora_ctl, lora_s, lora_p) = &adapters[0];
    evaluate(format!("Wanda {pct:.0}% + LoRA (rank {})", ranks[0]), lora, lora_ctl, &space.maximal(), *lora_s, *lora_p)?;
    let (_, nls, nls_ctl, nls_s, nls_p) = &adapters[1];
    for (kind, config) in [("maximal", space.maximal()), ("heuristic", space.heuristic()), ("minimal", space.minimal())] {
        evaluate(format!("Wanda {pct:.0}% + NLS ({kind})"), nls, nls_ctl, &config, *nls_s, *nls_p)?;
    }
    // The heuristic sub-adapter in PEFT format, with its true ranks.
    nls_ctl.apply(&space.heuristic())?;
    let peft = StagedDir::new(&out.join("nls-heuristic-adapter"))?;
    export_peft(nls, peft.path(), &wanda_dir.to_string_lossy())?;
    peft.publish()?;

    let table = markdown(&rows);
    let report = json!({
        "base": base_dir,
        "dataset": args.dataset.as_ref().map_or("embedded arithmetic word problems".to_string(), |p| p.display().to_string()),
        "split": {"train": task.train.len(), "validation": task.val.len(), "test": task.test.len()},
        "search_space": {"groups": space.groups.len(), "ranks": ranks, "alpha": alpha},
        "prune_seconds": prune_seconds,
        "total_seconds": total_clock.elapsed().as_secs_f64(),
        "rows": rows,
    });
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report).expect("JSON").as_bytes())?;
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    Ok(table)
}

/// A finished Shears run, loaded for search: the NLS super-adapter on the sparse base.
pub struct LoadedRun {
    pub args: ShearsArgs,
    pub tokenizer: TextTokenizer,
    pub task: Task,
    pub model: AdaptedLm<Cpu>,
    pub ranks: RankControl,
}

/// Loads `dir/wanda`, `dir/search_space.json` and the NLS adapters of `dir/train-nls` of a
/// finished `secateur shears` run, holding the run directory's lock.
pub fn load_run(dir: &Path) -> Result<(RunDir, LoadedRun), CliError> {
    let (run_dir, manifest) = RunDir::attach(dir, "shears")?;
    let manifest_path = dir.join(secateur_runs::MANIFEST);
    let args: ShearsArgs = serde_json::from_value(manifest.args).map_err(|e| err(&manifest_path, format!("field `args`: {e}")))?;
    let (_, alpha) = ranks_and_alpha(&args);
    let base_dir = args.model.clone().unwrap_or_else(|| dir.join("base"));
    let adapters = secateur_supernet::train::final_adapters(&dir.join("train-nls"))?;
    let device = Default::default();
    let tokenizer = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let space = SearchSpace::from_file(&dir.join("search_space.json"))?;
    let sparse = DenseLm::<Cpu>::load(&dir.join("wanda"), &device)?;
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let (model, ranks) = attach(sparse, &space, &lora_cfg, &device)?;
    let model = secateur_supernet::train::load_adapters(model, &adapters, &device)?;
    let task = load_task(&args)?;
    Ok((run_dir, LoadedRun { args, tokenizer, task, model, ranks }))
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| Model | Accuracy | Sparsity | Non-zero params | Trainable params | Adapter ranks | Train time (s) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ranks = r.adapter_ranks.as_ref().map_or("-".to_string(), |v| {
            let mut u = v.clone();
            u.dedup();
            u.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("/")
        });
        s += &format!(
            "| {} | {:.1}% ({}/{}) | {:.1}% | {} | {} | {} | {} |\n",
            r.name,
            r.accuracy * 100.0,
            r.correct,
            r.total,
            r.sparsity * 100.0,
            r.nonzero_params,
            r.trainable_params,
            ranks,
            r.train_seconds.map_or("-".to_string(), |t| format!("{t:.0}")),
        );
    }
    s
}
