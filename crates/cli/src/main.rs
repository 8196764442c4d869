//! `secateur`: compress and fine-tune causal language models from the command line.

mod nas_cmd;
mod search_cmd;
mod shears;
mod sqft;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::prelude::*;
use clap::{Parser, Subcommand, ValueEnum};
use secateur_models::generate::token_tensor;
use secateur_models::{generate, DenseLm, GenerateOptions, ModelError, TextTokenizer};
use serde_json::json;

#[derive(Parser)]
#[command(name = "secateur", version, about = "Compress and fine-tune LLMs: sparsity, quantization, elastic LoRA and NAS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A Hugging Face checkpoint directory (config.json, safetensors weights).
    #[arg(long)]
    model: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

#[derive(Subcommand)]
enum Command {
    /// Print a JSON summary of a checkpoint: family, sizes, parameters and projection sites.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print the logits of token-id sequences as JSON: {"logits": [batch][seq][vocab]}.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// JSON file with an array of token-id arrays (lengths may differ).
        #[arg(long)]
        input_ids: PathBuf,
    },
    /// Generate a completion of a prompt.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// 0 for greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Recompute the whole sequence at every step instead of using the KV cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Prune every linear layer of the decoder blocks (Wanda or magnitude) and write the sparse
    /// checkpoint, its masks (masks.safetensors) and a report (sparsity.json).
    Prune {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value = "wanda")]
        method: PruneMethod,
        /// Unstructured sparsity ratio per output row, in [0, 1).
        #[arg(long, conflicts_with = "nm", required_unless_present = "nm")]
        sparsity: Option<f64>,
        /// Semi-structured N:M sparsity: keep N of every M consecutive inputs (e.g. 2:4).
        #[arg(long)]
        nm: Option<String>,
        /// JSON array of token-id arrays, or JSONL records with a `text` field.
        #[arg(long)]
        calibration: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        calibration_samples: usize,
        /// Tokens per calibration sample (default: the model's context length, at most 2048).
        #[arg(long)]
        seq_len: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Calibration sequences per forward batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Shears end to end: Wanda sparsity, LoRA and NLS super-adapter training on the sparse
    /// base, sub-adapter evaluation, and a report. With no arguments it runs on the embedded
    /// tiny LLaMA and arithmetic word problems (CPU).
    Shears(shears::ShearsArgs),
    /// Quantize every projection (asymmetric round-to-nearest, per-group scales and zero points)
    /// and write a GPTQ-format checkpoint that secateur and GPTQ tools load.
    Quantize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 4)]
        bits: u32,
        /// Inputs per group (-1 or 0: one group per row).
        #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
        group_size: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// SQFT: NLS on a quantized sparse base, SparsePEFT and QA-SparsePEFT (merged into sparse
    /// FP32 and INT-n models), with the untuned and LoRA baselines, in one report.
    Sqft(sqft::SqftArgs),
    /// Two-stage NAS: train a weight-sharing super-network (sandwich, random, grid-params or
    /// calibrate-mag sampling; optionally after importance reordering), search it and extract
    /// the Pareto front into standalone checkpoints.
    Nas(nas_cmd::NasArgs),
    /// Search the sub-adapters of a finished `secateur shears` run on its validation split, then
    /// measure the chosen ones on the test split.
    Search(search_cmd::SearchArgs),
    /// Run a search algorithm on a benchmark problem and print one JSON line with the
    /// hypervolume (reference point 1.1 per objective), evaluations and seconds.
    MooBench {
        /// zdt1, zdt2, zdt3, dtlz2 or zdt1-discrete.
        #[arg(long)]
        problem: String,
        /// nsga2, rnsga2, random or hill-climb.
        #[arg(long, default_value = "nsga2")]
        algo: String,
        #[arg(long, default_value_t = 10_000)]
        evals: usize,
        #[arg(long, default_value_t = 40)]
        pop: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// R-NSGA-II reference points: `f1,f2;f1,f2`.
        #[arg(long)]
        ref_points: Option<String>,
        /// Write the evaluated points, the front (JSON, CSV) and its plot (SVG) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PruneMethod {
    Wanda,
    Magnitude,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Sparsity(#[from] secateur_sparsity::SparsityError),
    #[error(transparent)]
    Lora(#[from] secateur_elastic_lora::LoraError),
    #[error(transparent)]
    Quant(#[from] secateur_quant::QuantError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[cfg_attr(feature = "cuda", allow(dead_code))]
    #[error("this secateur was built without CUDA support: rebuild with `--features cuda`")]
    NoCuda,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    #[error("--device cuda: no NVIDIA driver found (libcuda.so.1 cannot be loaded)")]
    NoCudaDriver,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn device_of(cmd: &Command) -> DeviceKind {
    match cmd {
        Command::Info { model }
        | Command::Logits { model, .. }
        | Command::Generate { model, .. }
        | Command::Prune { model, .. }
        | Command::Quantize { model, .. } => model.device,
        Command::Shears(_) | Command::Sqft(_) | Command::Nas(_) | Command::Search(_) | Command::MooBench { .. } => DeviceKind::Cpu,
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Shears(args) = cli.command {
        let table = shears::run(args)?;
        emit(&table);
        return Ok(());
    }
    if let Command::Nas(args) = cli.command {
        emit(&nas_cmd::run(args)?);
        return Ok(());
    }
    if let Command::Sqft(args) = cli.command {
        emit(&sqft::run(args)?);
        return Ok(());
    }
    if let Command::Search(args) = cli.command {
        emit(&search_cmd::run(args)?);
        return Ok(());
    }
    if let Command::MooBench { problem, algo, evals, pop, seed, ref_points, out } = cli.command {
        return moo_bench(&problem, &algo, evals, pop, seed, ref_points.as_deref(), out.as_deref());
    }
    match device_of(&cli.command) {
        DeviceKind::Cpu => run_on::<secateur_models::Cpu>(cli.command, Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            // burn panics in a worker thread when the driver is missing: check first.
            // SAFETY: loading the system's CUDA driver library runs its initialisers only.
            let driver = ["libcuda.so.1", "libcuda.so"].iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok());
            if !driver {
                return Err(CliError::NoCudaDriver);
            }
            run_on::<burn::backend::Cuda>(cli.command, Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(CliError::NoCuda),
    }
}

fn run_on<B: Backend>(cmd: Command, device: B::Device) -> Result<(), CliError> {
    match cmd {
        Command::Info { model } => {
            let m = AnyLm::<B>::load(&model.model, &device)?;
            let mut v = with_lm!(&m, |m| info(m));
            if let AnyLm::Quant(q) = &m {
                let bytes: usize = q.projections().iter().map(|(_, p)| p.weight_bytes()).sum();
                v["quantized_projection_bytes"] = json!(bytes);
                v["quantization"] = json!(q.projections()[0].1.packed.config);
            }
            emit(&serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Command::Logits { model, input_ids } => {
            let m = AnyLm::<B>::load(&model.model, &device)?;
            let seqs = read_input_ids(&input_ids, m.spec().vocab_size)?;
            let (ids, mask) = secateur_models::generate::right_pad(&seqs, 0);
            let width = mask[0].len();
            let logits = with_lm!(&m, |m| m.forward(token_tensor::<B>(&ids, &device), &mask))?;
            let v = m.spec().vocab_size;
            let flat: Vec<f32> = logits.into_data().convert::<f32>().to_vec().expect("f32 logits");
            let out: Vec<Vec<&[f32]>> = seqs
                .iter()
                .enumerate()
                .map(|(b, s)| (0..s.len()).map(|t| &flat[(b * width + t) * v..(b * width + t + 1) * v]).collect())
                .collect();
            emit(&serde_json::to_string(&json!({ "logits": out })).expect("JSON"));
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            no_cache,
        } => {
            let m = AnyLm::<B>::load(&model.model, &device)?;
            let tok = TextTokenizer::from_file(&model.model.join("tokenizer.json"))?;
            let ids = tok.encode(&prompt)?;
            let opts = GenerateOptions {
                max_new_tokens,
                temperature,
                top_p,
                seed,
                eos_token_ids: m.spec().eos_token_ids.clone(),
                use_cache: !no_cache,
            };
            let out = with_lm!(&m, |m| generate(m, &[ids], &opts, &device))?;
            emit(&tok.decode(&out[0])?);
        }
        Command::Quantize { model, bits, group_size, out } => {
            let m = DenseLm::<B>::load(&model.model, &device)?;
            let cfg = secateur_quant::QuantConfig { bits, group_size: (group_size > 0).then_some(group_size as usize) };
            let q = secateur_quant::checkpoint::quantize_model(m, cfg)?;
            let bytes = secateur_quant::checkpoint::write_quantized(&model.model, &out, &q)?;
            let source: u64 = std::fs::read_dir(&model.model)
                .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors")).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0);
            emit(&serde_json::to_string(&json!({"out": out, "bits": bits, "group_size": group_size, "weights_bytes": bytes, "source_weights_bytes": source})).expect("JSON"));
        }
        Command::Shears(_) | Command::Sqft(_) | Command::Nas(_) | Command::Search(_) | Command::MooBench { .. } => unreachable!("handled in run"),
        Command::Prune {
            model,
            method,
            sparsity,
            nm,
            calibration,
            calibration_samples,
            seq_len,
            seed,
            batch_size,
            out,
        } => {
            use secateur_sparsity::{prune, sample_calibration, CalibrationSource, Pattern, PruneConfig, ScoreMethod};
            let pattern = match (sparsity, nm.as_deref()) {
                (Some(ratio), None) => Pattern::Unstructured { ratio },
                (None, Some(s)) => Pattern::parse_nm(s)
                    .ok_or_else(|| CliError::Usage(format!("--nm {s:?}: expected N:M with 0 < N < M, e.g. 2:4")))?,
                _ => return Err(CliError::Usage("give exactly one of --sparsity and --nm".into())),
            };
            let method = match method {
                PruneMethod::Wanda => ScoreMethod::Wanda,
                PruneMethod::Magnitude => ScoreMethod::Magnitude,
            };
            let m = DenseLm::<B>::load(&model.model, &device)?;
            let samples = match &calibration {
                Some(path) => {
                    let tok_path = model.model.join("tokenizer.json");
                    let tok = if tok_path.is_file() { Some(TextTokenizer::from_file(&tok_path)?) } else { None };
                    let docs = CalibrationSource::from_file(path)?.into_token_ids(tok.as_ref(), path)?;
                    let len = seq_len.unwrap_or_else(|| m.spec().max_position_embeddings.unwrap_or(2048).min(2048));
                    sample_calibration(&docs, calibration_samples, len, seed)
                }
                None if method == ScoreMethod::Wanda => {
                    return Err(CliError::Usage("--method wanda needs --calibration FILE".into()));
                }
                None => Vec::new(),
            };
            let cfg = PruneConfig {
                method,
                pattern,
                batch_size,
                progress: true,
            };
            let outcome = prune(m, &samples, &cfg)?;
            let report = secateur_sparsity::checkpoint::write_pruned(&model.model, &out, &outcome.model, &outcome.masks, &cfg)?;
            emit(&serde_json::to_string(&json!({
                "out": out,
                "total_sparsity": report["total_sparsity"],
                "nonzero_parameters": report["nonzero_parameters"],
                "calibration_samples": samples.len(),
            })).expect("JSON"));
        }
    }
    Ok(())
}

/// A dense or a quantized model, chosen by the checkpoint's `quantization_config`.
enum AnyLm<B: Backend> {
    Dense(DenseLm<B>),
    Quant(secateur_quant::QuantLm<B>),
}

/// Runs an expression on whichever model an [`AnyLm`] holds.
macro_rules! with_lm {
    ($m:expr, |$x:ident| $body:expr) => {
        match $m {
            AnyLm::Dense($x) => $body,
            AnyLm::Quant($x) => $body,
        }
    };
}
use with_lm;

impl<B: Backend> AnyLm<B> {
    fn load(dir: &Path, device: &B::Device) -> Result<Self, CliError> {
        if dir.join("config.json").is_file() && secateur_quant::checkpoint::quant_config(dir)?.is_some() {
            return Ok(Self::Quant(secateur_quant::checkpoint::load_quantized(dir, device)?));
        }
        Ok(Self::Dense(DenseLm::load(dir, device)?))
    }

    fn spec(&self) -> &secateur_models::ArchSpec {
        with_lm!(self, |m| m.spec())
    }
}

/// Parses `a,b;c,d` into points.
fn parse_points(s: &str) -> Result<Vec<Vec<f64>>, CliError> {
    s.split(';')
        .map(|p| {
            p.split(',')
                .map(|v| v.trim().parse::<f64>().map_err(|e| CliError::Usage(format!("--ref-points {s:?}: {e}"))))
                .collect()
        })
        .collect()
}

fn moo_bench(
    problem: &str,
    algo: &str,
    evals: usize,
    pop: usize,
    seed: u64,
    ref_points: Option<&str>,
    out: Option<&Path>,
) -> Result<(), CliError> {
    use secateur_search::benchmarks::Benchmark;
    use secateur_search::hypervolume::hypervolume;
    use secateur_search::{Evaluator, Problem};
    let p = Benchmark::by_name(problem)
        .ok_or_else(|| CliError::Usage(format!("unknown problem {problem:?} (zdt1, zdt2, zdt3, dtlz2, zdt1-discrete)")))?;
    let m = p.n_objectives();
    let clock = std::time::Instant::now();
    let mut ev = Evaluator::new(&p);
    let search = |e: secateur_search::SearchError| CliError::Usage(e.to_string());
    let (population, front) = match algo {
        "nsga2" => {
            // Like pymoo's `res.opt`: the front of the final population.
            let alg = secateur_search::nsga2::Nsga2 { archive_front: false, ..secateur_search::nsga2::Nsga2::new(pop, seed) };
            let r = alg.run(&mut ev, evals).map_err(search)?;
            (r.population, r.front)
        }
        "rnsga2" => {
            let refs = parse_points(ref_points.ok_or_else(|| CliError::Usage("rnsga2 needs --ref-points".into()))?)?;
            let r = secateur_search::rnsga2::RNsga2::new(pop, refs, seed).run(&mut ev, evals).map_err(search)?;
            (r.population, r.front)
        }
        "random" => {
            let r = secateur_search::local::RandomSearch { seed }.run(&mut ev, evals).map_err(search)?;
            (r.front.clone(), r.front)
        }
        "hill-climb" => {
            let r = secateur_search::local::HillClimb { start: None, weights: None }.run(&mut ev, evals).map_err(search)?;
            (r.front.clone(), r.front)
        }
        other => return Err(CliError::Usage(format!("unknown algorithm {other:?} (nsga2, rnsga2, random, hill-climb)"))),
    };
    let seconds = clock.elapsed().as_secs_f64();
    let pts: Vec<Vec<f64>> = population.iter().filter_map(|e| e.f.clone()).collect();
    let hv = hypervolume(&pts, &vec![1.1; m]);
    if let Some(dir) = out {
        secateur_search::report::write_outputs(dir, &p.objective_names(), &ev.history, &front).map_err(search)?;
    }
    emit(&serde_json::to_string(&json!({
        "problem": problem,
        "algo": algo,
        "hypervolume": hv,
        "optimal_hypervolume": p.optimal_hypervolume(),
        "evaluations": ev.evaluations(),
        "seconds": seconds,
        "seed": seed,
    })).expect("JSON"));
    Ok(())
}

/// Prints a line to stdout; a closed pipe (e.g. `| head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn info<B: Backend, P: secateur_models::Projection<B>>(m: &secateur_models::CausalLm<B, P>) -> serde_json::Value {
    let s = m.spec();
    let sites: Vec<_> = m
        .sites()
        .into_iter()
        .map(|(site, shape)| {
            json!({
                "site": site.to_string(),
                "module": s.hf_module(site.layer, site.kind),
                "shape": shape,
            })
        })
        .collect();
    json!({
        "family": s.family,
        "model_type": s.model_type,
        "layers": s.num_layers,
        "hidden_size": s.hidden_size,
        "heads": s.num_heads,
        "kv_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "intermediate_size": s.intermediate_size,
        "vocab_size": s.vocab_size,
        "tied_embeddings": s.tie_word_embeddings,
        "parameters": m.num_params(),
        "sites": sites,
    })
}

fn read_input_ids(path: &Path, vocab: usize) -> Result<Vec<Vec<u32>>, CliError> {
    let bad = |reason: String| CliError::Input {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let seqs: Vec<Vec<u32>> =
        serde_json::from_str(&text).map_err(|e| bad(format!("expected an array of token-id arrays: {e}")))?;
    if seqs.is_empty() {
        return Err(bad("no sequences".into()));
    }
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(bad(format!("sequence {i} is empty")));
        }
        if let Some(t) = s.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(format!("sequence {i}: token id {t} is outside the vocabulary of {vocab}")));
        }
    }
    Ok(seqs)
}
