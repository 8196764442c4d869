//! `secateur shears`: Wanda sparsity, then NLS super-adapter training, sub-adapter evaluation,
//! and a report shaped like the Shears paper's ablation (its Tables 4 and 6).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use secateur_elastic_lora::peft::export_peft;
use secateur_elastic_lora::{attach, AdaptedLm, LoraConfig, RankControl, Scaling, SearchSpace, SubnetConfig};
use secateur_models::weights::write_atomic;
use secateur_models::{Cpu, CpuAutodiff, DenseLm, TextTokenizer};
use secateur_sparsity::{prune, sample_calibration, Pattern, PruneConfig, ScoreMethod};
use secateur_supernet::data::{self, Example, Record};
use secateur_supernet::eval::{accuracy, AnswerKind};
use secateur_supernet::toy;
use secateur_supernet::train::{train, Strategy, TrainConfig};
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
    /// Continue a killed run in `--out` from its checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// Run directory.
    #[arg(long, default_value = "runs/shears")]
    pub out: PathBuf,
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
    CliError::Input {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The splits of a run's task.
pub struct Task {
    pub train: Vec<Record>,
    pub test: Vec<Record>,
    pub val: Vec<Record>,
    pub calibration_docs: Vec<String>,
}

/// The splits a run with `args` uses (regenerated or re-split identically from the seed).
pub fn load_task(args: &ShearsArgs) -> Result<Task, CliError> {
    match &args.dataset {
        None => {
            let (train, val, test) = toy::arithmetic_task(2000, args.val_size, args.test_size, 0);
            Ok(Task { train, val, test, calibration_docs: toy::corpus(512, 1) })
        }
        Some(path) => {
            let records = data::read_records(path).map_err(|e| err(path, e))?;
            let (rest, test) = data::split(&records, args.test_size, args.seed);
            let (train, val) = data::split(&rest, args.val_size, args.seed.wrapping_add(1));
            if train.is_empty() {
                return Err(err(path, "no records left for training after the validation and test splits"));
            }
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
            std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
            for (name, bytes) in [("config.json", TINY_CONFIG), ("model.safetensors", TINY_WEIGHTS), ("tokenizer.json", TINY_TOKENIZER)] {
                write_atomic(&d.join(name), bytes)?;
            }
            Ok(d)
        }
    }
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
    let cfg = PruneConfig {
        method: ScoreMethod::Wanda,
        pattern: Pattern::Unstructured { ratio: args.sparsity },
        batch_size: 8,
        progress: true,
    };
    let docs = task.calibration_docs.iter().map(|d| tok.encode(d)).collect::<Result<Vec<_>, _>>()?;
    let seq_len = if args.model.is_none() { 64 } else { dense.spec().max_position_embeddings.unwrap_or(2048).min(2048) };
    let calibration = sample_calibration(&docs, args.calibration_samples, seq_len, args.seed);
    let clock = Instant::now();
    let pruned = prune(dense, &calibration, &cfg)?;
    let seconds = clock.elapsed().as_secs_f64();
    let report = secateur_sparsity::checkpoint::write_pruned(base_dir, wanda_dir, &pruned.model, &pruned.masks, &cfg)?;
    let sparsity = report["total_sparsity"].as_f64().unwrap_or(0.0);
    let nonzero = report["nonzero_parameters"].as_u64().unwrap_or(0) as usize;
    eprintln!("wanda: sparsity {sparsity:.3} in {seconds:.1}s");
    Ok((pruned.model, sparsity, nonzero, seconds))
}

/// Runs the whole pipeline and writes `report.json` and `report.md` into the run directory.
pub fn run(args: ShearsArgs) -> Result<String, CliError> {
    let total_clock = Instant::now();
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| err(&out, e))?;
    let started = out.join("run.json");
    if started.is_file() && !args.resume {
        return Err(CliError::Usage(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    let base_dir = materialize_base(&args, &out)?;
    let (ranks, alpha) = ranks_and_alpha(&args);
    write_atomic(&started, serde_json::to_string_pretty(&json!({
        "base": base_dir, "ranks": ranks, "alpha": alpha, "args": args,
    })).expect("JSON").as_bytes())?;

    let device = Default::default();
    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let task = load_task(&args)?;
    eprintln!(
        "shears: {} train / {} validation / {} test examples",
        task.train.len(),
        task.val.len(),
        task.test.len()
    );
    let mut rows = Vec::new();

    // 1. The dense base, untuned.
    let dense = DenseLm::<Cpu>::load(&base_dir, &device)?;
    let spec = dense.spec().clone();
    let dense_params = dense.num_params();
    let acc = accuracy(&dense, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device).map_err(|e| err(&base_dir, e))?;
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
    let acc = accuracy(&pruned, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device).map_err(|e| err(&wanda_dir, e))?;
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
    let targets = args.targets.as_deref().map(SearchSpace::parse_targets).transpose()?;
    let space = SearchSpace::preset(&spec, targets.as_deref(), &ranks)?;
    space.to_file(&out.join("search_space.json"))?;
    let eos = spec.eos_token_ids.first().copied();
    let examples: Vec<Example> = task
        .train
        .iter()
        .map(|r| data::tokenize(r, &tok, eos, args.cutoff, args.train_on_inputs))
        .collect::<Result<_, _>>()
        .map_err(|e| err(&out, e))?;
    let pad = eos.unwrap_or(0);
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let train_cfg = |strategy| train_config(&args, strategy);
    let mut adapters: Vec<(String, AdaptedLm<Cpu>, RankControl, f64, usize)> = Vec::new();
    for (label, strategy) in [("lora", Strategy::Fixed), ("nls", Strategy::Nls)] {
        let sparse = DenseLm::<CpuAutodiff>::load(&wanda_dir, &device)?.no_grad();
        let (model, ctl) = attach(sparse, &space, &lora_cfg, &device)?;
        let ckpt = out.join(format!("train-{label}"));
        let (model, report) = train(model, &ctl, &examples, &train_cfg(strategy), pad, Some(&ckpt)).map_err(|e| err(&ckpt, e))?;
        eprintln!("{label}: {} steps in {:.1}s, final loss {:.4}", report.steps, report.seconds, report.losses.last().copied().unwrap_or(f64::NAN));
        write_atomic(&ckpt.join("report.json"), serde_json::to_string(&report).expect("JSON").as_bytes())?;
        adapters.push((label.to_string(), model.valid(), ctl, report.seconds, report.trainable_params));
    }
    let mut evaluate = |name: String, model: &AdaptedLm<Cpu>, ctl: &RankControl, config: &SubnetConfig, seconds: f64, trainable: usize| -> Result<(), CliError> {
        ctl.apply(config)?;
        let ranks = ctl.space.ranks(config)?;
        let active = secateur_elastic_lora::adapter_params(&model.sites(), &ctl.ranks());
        let acc = accuracy(model, &tok, &task.test, AnswerKind::Math, args.max_new_tokens, 64, &device).map_err(|e| err(&out, e))?;
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
    export_peft(nls, &out.join("nls-heuristic-adapter"), &wanda_dir.to_string_lossy())?;

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

/// Loads `dir/wanda`, `dir/search_space.json` and the NLS adapters of `dir/train-nls`.
pub fn load_run(dir: &Path) -> Result<LoadedRun, CliError> {
    let run_json = dir.join("run.json");
    let text = std::fs::read_to_string(&run_json).map_err(|e| err(&run_json, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&run_json, e))?;
    let args: ShearsArgs = serde_json::from_value(v["args"].clone()).map_err(|e| err(&run_json, format!("field `args`: {e}")))?;
    let alpha = v["alpha"].as_f64().ok_or_else(|| err(&run_json, "field `alpha` missing"))?;
    let base_dir = PathBuf::from(v["base"].as_str().ok_or_else(|| err(&run_json, "field `base` missing"))?);
    let adapters = dir.join("train-nls/adapters.safetensors");
    if !adapters.is_file() {
        return Err(err(&adapters, "no trained NLS super-adapter: run `secateur shears` to the end first"));
    }
    let device = Default::default();
    let tokenizer = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let space = SearchSpace::from_file(&dir.join("search_space.json"))?;
    let sparse = DenseLm::<Cpu>::load(&dir.join("wanda"), &device)?;
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let (model, ranks) = attach(sparse, &space, &lora_cfg, &device)?;
    let model = secateur_supernet::train::load_adapters(model, &adapters, &device).map_err(|e| err(&adapters, e))?;
    let task = load_task(&args)?;
    Ok(LoadedRun { args, tokenizer, task, model, ranks })
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
