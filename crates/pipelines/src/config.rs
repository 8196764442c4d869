//! The settings shared by the Shears, SQFT and NAS pipelines, their checks, the task's splits,
//! the embedded base model, and the Wanda stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::Backend;
use secateur_elastic_lora::SearchSpace;
use secateur_models::weights::write_atomic;
use secateur_models::{ArchSpec, DenseLm, TextTokenizer};
use secateur_runs::{Manifest, OpenMode, RunDir, StagedDir};
use secateur_sparsity::{Pattern, PruneConfig, ScoreMethod, prune, sample_calibration};
use secateur_supernet::data::{self, PromptFormat, Record};
use secateur_supernet::toy;
use secateur_supernet::train::{Strategy, TrainConfig};
use serde::Serialize;

use crate::{PipelineError, Reporter};
use secateur_eval::{Encoder, EvalConfig, TaskSpec};
use secateur_models::gguf::GgmlType;
use secateur_models::gguf::export::{EXPORT_TYPES, check_exportable};
use secateur_models::{CausalLm, Projection};
use std::collections::BTreeMap;

/// The embedded default base model (`cargo xtask pretrain-tiny`).
const TINY_CONFIG: &[u8] = include_bytes!("../../../assets/tiny-llama/config.json");
const TINY_WEIGHTS: &[u8] = include_bytes!("../../../assets/tiny-llama/model.safetensors");
const TINY_TOKENIZER: &[u8] = include_bytes!("../../../assets/tiny-llama/tokenizer.json");

/// Options of a Shears run, shared by SQFT and NAS (recorded in the run directory's manifest).
/// `Default` gives the command line's defaults.
#[derive(Debug, Clone, clap::Args, Serialize, serde::Deserialize)]
pub struct ShearsConfig {
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
    /// Prompts in the base model's chat template instead of LLM-Adapters' Alpaca template: the
    /// instruction is the user's message, the output the assistant's turn (closed by the
    /// template's end-of-turn tag, where generation also stops). Training, Wanda's calibration
    /// texts and the accuracy evaluations all use it, and the `--eval-task` evaluations are
    /// prompted as `secateur eval --chat` prompts them.
    #[arg(long)]
    #[serde(default)]
    pub chat: bool,
    /// With --chat: a system message before each instruction.
    #[arg(long, requires = "chat")]
    #[serde(default)]
    pub system: Option<String>,
    /// Train on the first N records of the training split only (default: all of them).
    #[arg(long)]
    pub train_size: Option<usize>,
    #[arg(long, default_value_t = 100)]
    pub val_size: usize,
    #[arg(long, default_value_t = 200)]
    pub test_size: usize,
    #[arg(long, default_value_t = 128)]
    pub calibration_samples: usize,
    #[arg(long, default_value_t = 40)]
    pub max_new_tokens: usize,
    /// A standard evaluation added to every row of the report, a task as `secateur eval --task`
    /// takes it (e.g. `ppl:heldout.txt`, `arc_easy:arc.jsonl`); repeatable.
    #[arg(long = "eval-task", value_name = "SPEC")]
    #[serde(default)]
    pub eval_task: Vec<String>,
    /// Evaluate the first N documents of each `--eval-task` only.
    #[arg(long)]
    #[serde(default)]
    pub eval_limit: Option<usize>,
    /// Tokens per window of the `--eval-task` evaluations (default: the model's context length,
    /// as `secateur eval --max-length` takes it).
    #[arg(long)]
    #[serde(default)]
    pub eval_max_length: Option<usize>,
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
    /// Also write the run's final models as GGUF files in `OUT/gguf/`: `gguf:TYPE`, TYPE one of
    /// f32, f16, q8_0, q4_0, q4_1 (LLaMA-family models; as `secateur export` writes them).
    #[arg(long, value_name = "gguf:TYPE")]
    #[serde(default)]
    pub export: Option<String>,
}

/// Arguments that do not change a run's results: a resumed run may give other values.
pub const NOT_RESULTS: &[&str] = &["out", "resume", "force", "checkpoint_every", "export"];

/// Largest rank choice, learning rate and alpha accepted (larger ones are typos).
const MAX_ALPHA: f64 = 1e6;

impl ShearsConfig {
    /// The run directory: `--out`, else `runs/<command>`.
    pub fn out_dir(&self, command: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(command))
    }

    /// Checks every setting that needs no file, before any work starts.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let usage = |m: String| Err(PipelineError::Usage(m));
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
        if self.train_size == Some(0) {
            return usage("--train-size must be at least 1".into());
        }
        if self.val_size == 0 || self.test_size == 0 {
            return usage("--val-size and --test-size must be at least 1 (the search uses validation, the report test)".into());
        }
        if self.max_new_tokens == 0 {
            return usage("--max-new-tokens must be at least 1".into());
        }
        secateur_sparsity::check_calibration_size(self.calibration_samples, 64)?;
        if self.eval_limit == Some(0) {
            return usage("--eval-limit must be at least 1".into());
        }
        if self.eval_max_length.is_some_and(|n| n < 2) {
            return usage("--eval-max-length must be at least 2 tokens".into());
        }
        for t in &self.eval_task {
            let spec = TaskSpec::parse(t).map_err(|e| PipelineError::Usage(format!("--eval-task: {e}")))?;
            for file in spec.files() {
                if !file.is_file() {
                    return Err(err(file, "--eval-task: no such file"));
                }
            }
        }
        train_config(self, Strategy::Fixed, false).validate()?;
        self.export_type()?;
        Ok(())
    }

    /// The GGUF type of `--export gguf:TYPE`, if one is asked for.
    pub fn export_type(&self) -> Result<Option<GgmlType>, PipelineError> {
        let Some(spec) = &self.export else { return Ok(None) };
        let usage = || PipelineError::Usage(format!("--export {spec:?}: give gguf:TYPE, TYPE one of f32, f16, q8_0, q4_0, q4_1"));
        let ty = spec.strip_prefix("gguf:").ok_or_else(usage)?;
        EXPORT_TYPES.iter().copied().find(|t| t.name().eq_ignore_ascii_case(ty)).map(Some).ok_or_else(usage)
    }

    /// Checks the settings that need the base model's architecture (ranks against the adapted
    /// projections' widths, targets against its sites), before any work starts. Returns the
    /// LoRA search space.
    pub fn validate_for(&self, spec: &ArchSpec, ranks: &[usize]) -> Result<SearchSpace, PipelineError> {
        let targets = self.targets.as_deref().map(SearchSpace::parse_targets).transpose()?;
        let space = SearchSpace::preset(spec, targets.as_deref(), ranks)?;
        check_ranks_fit(spec, &space)?;
        self.validate_export(spec)?;
        Ok(space)
    }

    /// Checks that `--export`, if given, can write the base `spec` (GGUF `llama`).
    pub fn validate_export(&self, spec: &ArchSpec) -> Result<(), PipelineError> {
        let Some(export) = &self.export else { return Ok(()) };
        let config = self.model.as_ref().map_or_else(|| PathBuf::from("<embedded tiny-llama>/config.json"), |m| m.join("config.json"));
        check_exportable(spec, &config).map_err(|e| PipelineError::Usage(format!("--export {export}: {e}")))
    }

    /// Opens the run directory of `command` with these arguments (and `extra`, the command's
    /// own), refusing to clobber anything (see [`RunDir::open`]).
    pub fn open_run(&self, command: &str, extra: serde_json::Value) -> Result<RunDir, PipelineError> {
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
pub fn check_ranks_fit(spec: &ArchSpec, space: &SearchSpace) -> Result<(), PipelineError> {
    for g in &space.groups {
        let max = g.choices.iter().copied().max().unwrap_or(0);
        for s in &g.sites {
            let [o, i] = spec.site_shape(s.layer, s.kind);
            if max > o.min(i) {
                return Err(PipelineError::Usage(format!(
                    "--ranks: rank {max} exceeds the width of {s} ({o} x {i}); the largest rank there is {}",
                    o.min(i)
                )));
            }
        }
    }
    Ok(())
}

impl Default for ShearsConfig {
    fn default() -> Self {
        crate::clap_defaults(&[])
    }
}

pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input { path: path.to_path_buf(), reason: e.to_string() }
}

/// The splits of a run's task.
pub struct Task {
    pub train: Vec<Record>,
    pub test: Vec<Record>,
    pub val: Vec<Record>,
    pub calibration_docs: Vec<String>,
    /// How the records become prompts (`--chat`).
    pub format: PromptFormat,
}

/// The run's prompt format: the base's chat template with `--chat`, else Alpaca.
fn prompt_format(args: &ShearsConfig) -> Result<PromptFormat, PipelineError> {
    if !args.chat {
        return Ok(PromptFormat::Alpaca);
    }
    let Some(model) = &args.model else {
        return Err(PipelineError::Usage("--chat: the embedded model has no chat template; give a --model that has one".into()));
    };
    let dir = secateur_models::gguf::import::resolve_model(model)?;
    let template = secateur_models::ChatTemplate::from_dir(&dir)?.ok_or_else(|| {
        PipelineError::Usage(format!(
            "--chat: {} has no chat template (`chat_template` in tokenizer_config.json, or chat_template.jinja)",
            dir.display()
        ))
    })?;
    Ok(PromptFormat::Chat { template, system: args.system.clone() })
}

/// The splits a run with `args` uses (regenerated or re-split identically from the seed).
/// Every record needs the fields that training and evaluation read (`instruction`, `output`,
/// `answer`), and each split must keep at least one record.
pub fn load_task(args: &ShearsConfig) -> Result<Task, PipelineError> {
    match &args.dataset {
        None => {
            let (mut train, val, test) = toy::arithmetic_task(2000, args.val_size, args.test_size, 0);
            train.truncate(args.train_size.unwrap_or(usize::MAX));
            Ok(Task { train, val, test, calibration_docs: toy::corpus(512, 1), format: prompt_format(args)? })
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
            let (mut train, val) = data::split(&rest, args.val_size, args.seed.wrapping_add(1));
            train.truncate(args.train_size.unwrap_or(usize::MAX));
            let format = prompt_format(args)?;
            let calibration_docs = train.iter().map(|r| Ok(format.example(r)?.1)).collect::<Result<_, PipelineError>>()?;
            Ok(Task { train, val, test, calibration_docs, format })
        }
    }
}

/// `--export gguf:TYPE`: writes the checkpoint `dir` as `out/gguf/NAME-TYPE.gguf` (NAME: the
/// directory's name). Returns what the run's report records: the file, or why GGUF cannot
/// express this model (e.g. a heterogeneous GPT-NeoX sub-network), which skips it without failing the run.
pub(crate) fn export_model<B: Backend>(
    args: &ShearsConfig,
    out: &Path,
    dir: &Path,
    device: &B::Device,
    reporter: &dyn Reporter,
) -> Result<Option<serde_json::Value>, PipelineError> {
    let Some(ty) = args.export_type()? else { return Ok(None) };
    let name = dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let config = dir.join("config.json");
    if let Err(e) = check_exportable(&ArchSpec::from_config_file(&config)?, &config) {
        reporter.line(&format!("export: {name} not written as GGUF: {e}"));
        return Ok(Some(serde_json::json!({"model": dir, "skipped": e.to_string()})));
    }
    let file = out.join("gguf").join(format!("{name}-{}.gguf", ty.name().to_lowercase()));
    std::fs::create_dir_all(out.join("gguf")).map_err(|e| err(&out.join("gguf"), e))?;
    let r = secateur_quant::checkpoint::export_gguf::<B>(dir, &file, ty, device)?;
    reporter.line(&format!("export: {} ({} bytes)", file.display(), r.bytes));
    Ok(Some(
        serde_json::json!({"model": dir, "path": r.path, "bytes": r.bytes, "tensor_types": r.tensor_types, "f16_fallbacks": r.fallbacks}),
    ))
}

/// `--export gguf:TYPE` for a PEFT adapter directory on `base`: a llama.cpp LoRA adapter file
/// `out/gguf/NAME-TYPE.gguf` (4-bit types write the adapter as q8_0), recorded like a model.
pub(crate) fn export_adapter(
    args: &ShearsConfig,
    out: &Path,
    base: &Path,
    adapter: &Path,
    reporter: &dyn Reporter,
) -> Result<Option<serde_json::Value>, PipelineError> {
    let Some(ty) = args.export_type()? else { return Ok(None) };
    let ty = if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) { GgmlType::Q8_0 } else { ty };
    let name = adapter.file_name().map_or_else(|| "adapter".to_string(), |n| n.to_string_lossy().into_owned());
    let file = out.join("gguf").join(format!("{name}-{}.gguf", ty.name().to_lowercase()));
    std::fs::create_dir_all(out.join("gguf")).map_err(|e| err(&out.join("gguf"), e))?;
    let r = secateur_elastic_lora::peft::export_gguf_adapter(base, adapter, &file, ty)?;
    reporter.line(&format!("export: {} ({} bytes)", file.display(), r.bytes));
    Ok(Some(
        serde_json::json!({"adapter": adapter, "base": base, "path": r.path, "bytes": r.bytes, "tensor_types": r.tensor_types, "f16_fallbacks": r.fallbacks}),
    ))
}

/// Writes the embedded tiny model into `out/base` when no `--model` is given; returns the base.
pub(crate) fn materialize_base(args: &ShearsConfig, out: &Path) -> Result<PathBuf, PipelineError> {
    match &args.model {
        Some(d) => Ok(secateur_models::gguf::import::resolve_model(d)?),
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
pub fn base_spec(args: &ShearsConfig) -> Result<ArchSpec, PipelineError> {
    Ok(match &args.model {
        Some(m) => ArchSpec::from_config_file(&secateur_models::gguf::import::resolve_model(m)?.join("config.json"))?,
        None => {
            let path = Path::new("<embedded tiny-llama>/config.json");
            let value = serde_json::from_slice(TINY_CONFIG).map_err(|e| err(path, e))?;
            ArchSpec::from_config_value(path, value)?
        }
    })
}

/// Rank choices and alpha of a run (defaults depend on whether the base is the embedded one).
pub(crate) fn ranks_and_alpha(args: &ShearsConfig) -> (Vec<usize>, f64) {
    let ranks = args.ranks.clone().unwrap_or_else(|| if args.model.is_none() { vec![16, 12, 8] } else { vec![32, 24, 16] });
    let alpha = args.alpha.unwrap_or(2.0 * *ranks.iter().max().unwrap_or(&16) as f64);
    (ranks, alpha)
}

/// Training settings of a run.
pub(crate) fn train_config(args: &ShearsConfig, strategy: Strategy, bars: bool) -> TrainConfig {
    TrainConfig {
        strategy,
        epochs: args.epochs,
        batch_size: args.batch_size,
        micro_batch_size: args.micro_batch_size.min(args.batch_size),
        lr: args.lr,
        warmup_steps: 10,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        progress: bars,
        ..Default::default()
    }
}

/// Wanda-prunes `dense` with calibration windows drawn from the task's calibration documents
/// and writes the sparse checkpoint to `wanda_dir`. Returns the pruned model, its sparsity, its
/// non-zero parameters and the pruning time.
/// The calibration windows of a run: `--calibration-samples` windows of the task's calibration
/// documents (64 tokens on the embedded model, else the context length up to 2048).
pub(crate) fn calibration_windows(
    args: &ShearsConfig,
    spec: &secateur_models::ArchSpec,
    tok: &TextTokenizer,
    task: &Task,
) -> Result<Vec<Vec<u32>>, PipelineError> {
    let docs = task.calibration_docs.iter().map(|d| task.format.encode(tok, d)).collect::<Result<Vec<_>, _>>()?;
    let seq_len = if args.model.is_none() { 64 } else { spec.max_position_embeddings.unwrap_or(2048).min(2048) };
    Ok(sample_calibration(&docs, args.calibration_samples, seq_len, args.seed))
}

pub(crate) fn wanda<B: Backend>(
    args: &ShearsConfig,
    base_dir: &Path,
    wanda_dir: &Path,
    dense: DenseLm<B>,
    tok: &TextTokenizer,
    task: &Task,
    reporter: &dyn Reporter,
) -> Result<(DenseLm<B>, f64, usize, f64), PipelineError> {
    let cfg = PruneConfig {
        method: ScoreMethod::Wanda,
        pattern: Pattern::Unstructured { ratio: args.sparsity },
        batch_size: 8,
        progress: reporter.bars(),
    };
    let calibration = calibration_windows(args, dense.spec(), tok, task)?;
    let clock = Instant::now();
    let pruned = prune(dense, &calibration, &cfg)?;
    let seconds = clock.elapsed().as_secs_f64();
    let staged = StagedDir::new(wanda_dir)?;
    let report = secateur_sparsity::checkpoint::write_pruned(base_dir, staged.path(), &pruned.model, &pruned.masks, &cfg)?;
    staged.publish()?;
    let sparsity = report["total_sparsity"].as_f64().unwrap_or(0.0);
    let nonzero = report["nonzero_parameters"].as_u64().unwrap_or(0) as usize;
    reporter.line(&format!("wanda: sparsity {sparsity:.3} in {seconds:.1}s"));
    Ok((pruned.model, sparsity, nonzero, seconds))
}

/// The `--eval-task` evaluations of a run, added to every row of its report. With `--chat`
/// they are prompted in the chat template too, as `secateur eval --chat [--system]` (lm-eval's
/// `--apply_chat_template`) prompts them; perplexity is unchanged by it.
pub(crate) struct Evals {
    specs: Vec<TaskSpec>,
    cfg: EvalConfig,
    prefix_token: u32,
    chat: Option<(secateur_models::ChatTemplate, Option<String>)>,
}

impl Evals {
    /// The run's evaluations on the base in `base_dir` (its window and prefix token, as
    /// `secateur eval` takes them).
    pub(crate) fn new(
        args: &ShearsConfig,
        base_dir: &Path,
        spec: &ArchSpec,
        tok: &TextTokenizer,
        format: &PromptFormat,
    ) -> Result<Self, PipelineError> {
        let specs = args.eval_task.iter().map(|t| TaskSpec::parse(t)).collect::<Result<Vec<_>, _>>()?;
        let cfg = EvalConfig {
            num_fewshot: 0,
            limit: args.eval_limit,
            batch_size: 8,
            max_length: args.eval_max_length.unwrap_or_else(|| secateur_eval::default_max_length(base_dir, spec)),
            max_new_tokens: None,
        };
        let prefix_token = if specs.is_empty() { 0 } else { secateur_eval::prefix_token(base_dir, spec, tok)? };
        let chat = match format {
            PromptFormat::Alpaca => None,
            PromptFormat::Chat { template, system } => Some((template.clone(), system.clone())),
        };
        Ok(Self { specs, cfg, prefix_token, chat })
    }

    /// Every task's metrics on `model`, keyed `TASK METRIC` (e.g. `ppl:heldout word_perplexity`).
    pub(crate) fn run<B: Backend, P: Projection<B>>(
        &self,
        model: &CausalLm<B, P>,
        tok: &TextTokenizer,
        device: &B::Device,
        reporter: &dyn Reporter,
    ) -> Result<BTreeMap<String, f64>, PipelineError> {
        let chat = self.chat.as_ref().map(|(template, system)| secateur_eval::Chat { template, system: system.as_deref() });
        let enc = Encoder { tokenizer: tok, prefix_token: self.prefix_token, add_bos: None, chat };
        let mut out = BTreeMap::new();
        for spec in &self.specs {
            let r = secateur_eval::evaluate(model, &enc, spec, &self.cfg, device)?;
            for (metric, v) in r.metrics {
                reporter.line(&format!("  {} {metric}: {v:.4}", r.task));
                out.insert(format!("{} {metric}", r.task), v);
            }
        }
        Ok(out)
    }
}

/// The `--eval-task` columns of a report table: the header cells and each row's cells, for the
/// union of the rows' metrics.
pub(crate) fn eval_columns(rows: &[&BTreeMap<String, f64>]) -> (String, String, Vec<String>) {
    let mut keys: Vec<&String> = rows.iter().flat_map(|r| r.keys()).collect();
    keys.sort();
    keys.dedup();
    let header: String = keys.iter().map(|k| format!(" {k} |")).collect();
    let rule: String = keys.iter().map(|_| "---|").collect();
    let cells = rows.iter().map(|r| keys.iter().map(|k| r.get(*k).map_or(" - |".into(), |v| format!(" {v:.4} |"))).collect()).collect();
    (header, rule, cells)
}
