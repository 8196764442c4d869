//! `secateur`: compress and fine-tune causal language models from the command line.

mod shears;

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
        | Command::Prune { model, .. } => model.device,
        Command::Shears(_) => DeviceKind::Cpu,
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Shears(args) = cli.command {
        let table = shears::run(args)?;
        emit(&table);
        return Ok(());
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
            let m = DenseLm::<B>::load(&model.model, &device)?;
            emit(&serde_json::to_string_pretty(&info(&m)).expect("JSON"));
        }
        Command::Logits { model, input_ids } => {
            let m = DenseLm::<B>::load(&model.model, &device)?;
            let seqs = read_input_ids(&input_ids, m.spec().vocab_size)?;
            let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
            let ids: Vec<Vec<u32>> = seqs
                .iter()
                .map(|s| s.iter().copied().chain(std::iter::repeat_n(0, width - s.len())).collect())
                .collect();
            let mask: Vec<Vec<bool>> = seqs
                .iter()
                .map(|s| (0..width).map(|t| t < s.len()).collect())
                .collect();
            let logits = m.forward(token_tensor::<B>(&ids, &device), &mask)?;
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
            let m = DenseLm::<B>::load(&model.model, &device)?;
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
            let out = generate(&m, &[ids], &opts, &device)?;
            emit(&tok.decode(&out[0])?);
        }
        Command::Shears(_) => unreachable!("handled in run"),
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

/// Prints a line to stdout; a closed pipe (e.g. `| head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn info<B: Backend>(m: &DenseLm<B>) -> serde_json::Value {
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
