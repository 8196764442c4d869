//! `secateur`: compress and fine-tune causal language models from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand, ValueEnum};
use secateur::models::generate::token_tensor;
use secateur::models::{DenseLm, GenerateOptions, ModelError, TextTokenizer, generate};
use secateur::pipelines::{NasConfig, PipelineError, SearchConfig, ShearsConfig, SqftConfig, Stderr};
use secateur::runs::{Manifest, OutputDir};
use serde_json::json;

#[derive(Parser)]
#[command(name = "secateur", version, about = "Compress and fine-tune LLMs: sparsity, quantization, elastic LoRA and NAS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The arithmetic of the projections and the LM head in inference.
#[derive(Clone, Copy, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Precision {
    /// f32 throughout.
    F32,
    /// bf16 products with f32 accumulation (CPUs with AVX-512 BF16), as PyTorch's CPU autocast.
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A Hugging Face checkpoint directory (config.json, safetensors weights), or a GGUF file
    /// (or a directory holding one), imported on first use into the cache (`SECATEUR_CACHE`).
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
    /// Evaluate a checkpoint the way lm-evaluation-harness scores it: rolling perplexity
    /// (`ppl:FILE`), multiple choice (`mc:FILE`) and named tasks on local data (`boolq:FILE`,
    /// `piqa`, `siqa`, `hellaswag`, `winogrande`, `arc_easy`, `arc_challenge`, `openbookqa`,
    /// `mmlu:TEST[,DEV]`) and generation (`gsm8k:TEST[,TRAIN]`; `gen:FILE`, LLM-Adapters
    /// records). Prints a table;
    /// with `--out`, writes results.json and samples-TASK.jsonl.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// A PEFT LoRA adapter directory to apply (rank_pattern / alpha_pattern honoured).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A task: KIND:FILE (repeatable).
        #[arg(long = "task", required = true)]
        tasks: Vec<String>,
        /// Evaluate the first N documents of each task.
        #[arg(long)]
        limit: Option<usize>,
        /// Few-shot examples (MMLU from its dev file, GSM8K from its train file).
        #[arg(long, default_value_t = 0)]
        num_fewshot: usize,
        /// Requests per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// The window (default: the model's max_position_embeddings, else 2048, as lm-eval).
        #[arg(long)]
        max_length: Option<usize>,
        /// Generation tasks: the longest answer generated (default: 256 for gsm8k, as lm-eval;
        /// 64 for gen:FILE).
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Contexts as chat prompts, as lm-eval's `--apply_chat_template`: each context is the
        /// user's message under the model's chat template, choices follow with no delimiter
        /// (perplexity is unchanged).
        #[arg(long)]
        chat: bool,
        /// With --chat: the system instruction (lm-eval's `--system_instruction`).
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Output directory for results.json and the samples (written whole).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a non-empty `--out` that is not an earlier `eval` output.
        #[arg(long)]
        force: bool,
        /// Projection and head arithmetic: `bf16` multiplies in bf16 with f32 sums (CPU with
        /// AVX-512 BF16; norms, attention and softmax stay f32).
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
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
        /// Apply the model's chat template: the prompt is the user's message, the template's
        /// opening of the assistant turn is added, and decoding stops at its end of turn.
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user's.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Print JSON: the prompt as the model saw it, its token ids, the completion and its ids.
        #[arg(long)]
        json: bool,
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
        /// JSON array of token-id arrays, or JSONL records with a `text` field. When documents are
        /// longer than `--seq-len`, samples are random windows of them (as Wanda samples C4);
        /// otherwise the file is taken as a calibration set cut to size: its rows are used as
        /// given, in order, each once.
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
        /// Output checkpoint directory (written whole; never the input).
        #[arg(long)]
        out: PathBuf,
        /// Replace a non-empty `--out` that is not an earlier `prune` output.
        #[arg(long)]
        force: bool,
    },
    /// Shears end to end: Wanda sparsity, LoRA and NLS super-adapter training on the sparse
    /// base, sub-adapter evaluation, and a report. With no arguments it runs on the embedded
    /// tiny LLaMA and arithmetic word problems (CPU).
    Shears {
        #[command(flatten)]
        config: ShearsConfig,
        /// Where to train and evaluate.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Quantize every projection (asymmetric, per-group scales and zero points) by GPTQ on
    /// calibration data or by round-to-nearest, and write a GPTQ-format checkpoint that secateur
    /// and GPTQ tools load. Exact zeros of a sparse base stay zero.
    Quantize {
        #[command(flatten)]
        model: ModelArgs,
        /// GPTQ (Hessian-based, needs --calibration) or round-to-nearest; default: gptq when
        /// --calibration is given, else rtn.
        #[arg(long, value_enum)]
        method: Option<QuantMethod>,
        #[arg(long, default_value_t = 4)]
        bits: u32,
        /// Inputs per group (-1 or 0: one group per row).
        #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
        group_size: i64,
        /// Calibration data for GPTQ, in the formats of `prune --calibration`.
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
        /// GPTQ: quantize columns by decreasing Hessian diagonal (`desc_act`).
        #[arg(long)]
        act_order: bool,
        /// GPTQ: fit every group on the original weights first (`static_groups`).
        #[arg(long)]
        static_groups: bool,
        /// GPTQ: dampening, a fraction of the mean Hessian diagonal (`damp_percent`).
        #[arg(long, default_value_t = 0.01)]
        damp: f64,
        /// Output checkpoint directory (written whole; never the input).
        #[arg(long)]
        out: PathBuf,
        /// Replace a non-empty `--out` that is not an earlier `quantize` output.
        #[arg(long)]
        force: bool,
    },
    /// SQFT: NLS on a quantized sparse base, SparsePEFT and QA-SparsePEFT (merged into sparse
    /// FP32 and INT-n models), with the untuned and LoRA baselines, in one report.
    Sqft {
        #[command(flatten)]
        config: SqftConfig,
        /// Where to train and evaluate.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Two-stage NAS: train a weight-sharing super-network (sandwich, random, grid-params or
    /// calibrate-mag sampling; optionally after importance reordering), search it and extract
    /// the Pareto front into standalone checkpoints.
    Nas {
        #[command(flatten)]
        config: NasConfig,
        /// Where to train, search and measure.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Search the sub-adapters of a finished `secateur shears` run on its validation split, then
    /// measure the chosen ones on the test split.
    Search {
        #[command(flatten)]
        config: SearchConfig,
        /// Where to evaluate.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Write a checkpoint (dense, pruned, merged, or an extracted sub-network; a heterogeneous
    /// LLaMA one as llama.cpp's `deci`) as a GGUF v3 file for llama.cpp, with its tokenizer and chat template.
    Export {
        #[command(flatten)]
        model: ModelArgs,
        /// Write this PEFT LoRA adapter directory (on `--model`) as a llama.cpp LoRA adapter
        /// file instead (`llama-cli -m MODEL.gguf --lora ADAPTER.gguf`; types f32, f16, q8_0).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "gguf")]
        format: ExportFormat,
        /// Type of the matrices (norms stay f32; rows that do not fill whole blocks fall back to f16).
        #[arg(long = "type", value_enum, default_value = "q8_0")]
        ty: GgufType,
        /// Output file (default: MODEL-TYPE.gguf in the current directory). Written whole or not at all.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a search algorithm on a benchmark problem and print one JSON line with the
    /// hypervolume (reference point 1.1 per objective), evaluations and seconds.
    MooBench {
        #[arg(long, value_enum)]
        problem: BenchProblem,
        /// hill-climb needs a problem with choice variables (zdt1-discrete).
        #[arg(long, value_enum, default_value = "nsga2")]
        algo: BenchAlgo,
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

#[derive(Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum BenchProblem {
    Zdt1,
    Zdt2,
    Zdt3,
    Dtlz2,
    Zdt1Discrete,
}

#[derive(Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum BenchAlgo {
    Nsga2,
    Rnsga2,
    Random,
    HillClimb,
}

/// A value's name on the command line (`zdt1-discrete`).
fn value_name(v: &impl ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ExportFormat {
    /// llama.cpp's GGUF v3.
    Gguf,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum GgufType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl GgufType {
    fn ggml(self) -> secateur::models::gguf::GgmlType {
        use secateur::models::gguf::GgmlType as G;
        match self {
            GgufType::F32 => G::F32,
            GgufType::F16 => G::F16,
            GgufType::Q8_0 => G::Q8_0,
            GgufType::Q4_0 => G::Q4_0,
            GgufType::Q4_1 => G::Q4_1,
        }
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum QuantMethod {
    Gptq,
    Rtn,
}

#[derive(Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum PruneMethod {
    Wanda,
    Magnitude,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Eval(#[from] secateur::eval::EvalError),
    #[error(transparent)]
    Lora(#[from] secateur::lora::LoraError),
    #[error(transparent)]
    Sparsity(#[from] secateur::sparsity::SparsityError),
    #[error(transparent)]
    Quant(#[from] secateur::quant::QuantError),
    #[error(transparent)]
    Search(#[from] secateur::search_algorithms::SearchError),
    #[error(transparent)]
    Run(#[from] secateur::runs::RunError),
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
    secateur::models::host::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `$body` with `$B` the autodiff backend that `$kind` names (the CUDA driver checked first).
macro_rules! on_backend {
    ($kind:expr, $B:ident => $body:expr) => {
        match $kind {
            DeviceKind::Cpu => {
                type $B = secateur::CpuAutodiff;
                $body
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                check_cuda_driver()?;
                type $B = secateur::CudaAutodiff;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => return Err(CliError::NoCuda),
        }
    };
}

/// burn panics in a worker thread when the driver is missing: check first.
#[cfg(feature = "cuda")]
fn check_cuda_driver() -> Result<(), CliError> {
    // SAFETY: loading the system's CUDA driver library runs its initialisers only.
    let driver = ["libcuda.so.1", "libcuda.so"].iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok());
    if driver { Ok(()) } else { Err(CliError::NoCudaDriver) }
}

fn run(mut cli: Cli) -> Result<(), CliError> {
    let device = match &mut cli.command {
        Command::Info { model }
        | Command::Eval { model, .. }
        | Command::Logits { model, .. }
        | Command::Generate { model, .. }
        | Command::Prune { model, .. }
        | Command::Quantize { model, .. }
        | Command::Export { model, .. } => {
            model.model = secateur::models::gguf::import::resolve_model(&model.model)?;
            model.device
        }
        Command::Shears { device, .. } | Command::Sqft { device, .. } | Command::Nas { device, .. } | Command::Search { device, .. } => {
            *device
        }
        Command::MooBench { .. } => DeviceKind::Cpu,
    };
    match cli.command {
        Command::Shears { config, .. } => {
            emit(&on_backend!(device, B => secateur::shears::<B>(&config, &Default::default(), &Stderr))?.table)
        }
        Command::Sqft { config, .. } => emit(&on_backend!(device, B => secateur::sqft::<B>(&config, &Default::default(), &Stderr))?.table),
        Command::Nas { config, .. } => emit(&on_backend!(device, B => secateur::nas::<B>(&config, &Default::default(), &Stderr))?.table),
        Command::Search { config, .. } => emit(
            &on_backend!(device, B => secateur::search::<<B as AutodiffBackend>::InnerBackend>(&config, &Default::default(), &Stderr))?
                .table,
        ),
        Command::MooBench { problem, algo, evals, pop, seed, ref_points, out } => {
            moo_bench(problem, algo, evals, pop, seed, ref_points.as_deref(), out.as_deref())?
        }
        Command::Export { model, adapter: Some(adapter), format: ExportFormat::Gguf, ty, out } => {
            let ty = ty.ggml();
            let out = out.unwrap_or_else(|| {
                let stem = adapter.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
                PathBuf::from(format!("{stem}-{}.gguf", ty.name().to_lowercase()))
            });
            let report = secateur::lora::peft::export_gguf_adapter(&model.model, &adapter, &out, ty)?;
            emit(
                &serde_json::to_string_pretty(
                    &json!({"path": report.path, "bytes": report.bytes, "tensor_types": report.tensor_types, "f16_fallbacks": report.fallbacks}),
                )
                .expect("JSON"),
            );
        }
        Command::Export { model, adapter: None, format: ExportFormat::Gguf, ty, out } => {
            let ty = ty.ggml();
            let out = out.unwrap_or_else(|| {
                let stem = model.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
                PathBuf::from(format!("{stem}-{}.gguf", ty.name().to_lowercase()))
            });
            let report = on_backend!(model.device, B => secateur::quant::checkpoint::export_gguf::<<B as AutodiffBackend>::InnerBackend>(
                &model.model,
                &out,
                ty,
                &Default::default()
            ))?;
            emit(
                &serde_json::to_string_pretty(
                    &json!({"path": report.path, "bytes": report.bytes, "tensor_types": report.tensor_types, "f16_fallbacks": report.fallbacks}),
                )
                .expect("JSON"),
            );
        }
        cmd => on_backend!(device, B => run_on::<<B as AutodiffBackend>::InnerBackend>(cmd, Default::default()))?,
    }
    Ok(())
}

/// The chat template of the checkpoint in `dir`, for `--chat`.
fn chat_template(dir: &Path) -> Result<secateur::models::ChatTemplate, CliError> {
    secateur::models::ChatTemplate::from_dir(dir)?.ok_or_else(|| {
        CliError::Usage(format!(
            "--chat: {} has no chat template (`chat_template` in tokenizer_config.json, or chat_template.jinja)",
            dir.display()
        ))
    })
}

fn run_on<B: Backend>(cmd: Command, device: B::Device) -> Result<(), CliError> {
    match cmd {
        Command::Eval {
            model,
            adapter,
            tasks,
            limit,
            num_fewshot,
            batch_size,
            max_length,
            max_new_tokens,
            chat,
            system,
            out,
            force,
            precision,
        } => {
            use secateur::eval::{
                Chat, Encoder, EvalConfig, TaskSpec, default_max_length, evaluate, markdown, prefix_token, write_results,
            };
            let specs = tasks.iter().map(|t| TaskSpec::parse(t)).collect::<Result<Vec<_>, _>>()?;
            if batch_size == 0 || max_length == Some(0) || limit == Some(0) || max_new_tokens == Some(0) {
                return Err(CliError::Usage("--batch-size, --max-length, --limit and --max-new-tokens must be at least 1".into()));
            }
            if precision == Precision::Bf16 {
                if !secateur::models::host::enabled::<B>(&device) {
                    return Err(CliError::Usage("--precision bf16 runs on the CPU (--device cpu)".into()));
                }
                secateur::models::bf16::set_inference(true).map_err(|e| CliError::Usage(e.into()))?;
            }
            let m = AnyLm::<B>::load(&model.model, &device)?;
            let m = match (m, &adapter) {
                (AnyLm::Dense(d), Some(dir)) => AnyLm::Adapted(secateur::lora::peft::import_peft(d, dir, &device)?),
                (AnyLm::Quant(_), Some(dir)) => {
                    return Err(CliError::Input {
                        path: dir.clone(),
                        reason: "adapters apply to dense checkpoints; merge them into the quantized model with `secateur sqft`".into(),
                    });
                }
                (m, _) => m,
            };
            let tok = TextTokenizer::from_file(&model.model.join("tokenizer.json"))?;
            let spec = m.spec().clone();
            let cfg = EvalConfig {
                num_fewshot,
                limit,
                batch_size,
                max_length: max_length.unwrap_or_else(|| default_max_length(&model.model, &spec)),
                max_new_tokens,
            };
            let template = if chat { Some(chat_template(&model.model)?) } else { None };
            let enc = Encoder {
                tokenizer: &tok,
                prefix_token: prefix_token(&model.model, &spec, &tok)?,
                add_bos: None,
                chat: template.as_ref().map(|template| Chat { template, system: system.as_deref() }),
            };
            let chat_settings = chat.then(|| json!({"system_instruction": system}));
            let staged = match &out {
                Some(o) => {
                    let manifest = Manifest::new(
                        "eval",
                        &json!({"model": model.model, "adapter": adapter, "tasks": tasks, "config": cfg, "chat_template": chat_settings, "precision": precision}),
                    );
                    let mut inputs: Vec<&Path> = vec![&model.model];
                    inputs.extend(adapter.as_deref());
                    Some(OutputDir::create(o, &manifest, force, &inputs)?)
                }
                None => None,
            };
            let mut results = Vec::new();
            for s in &specs {
                let r = with_lm!(&m, |m| evaluate(m, &enc, s, &cfg, &device))?;
                eprintln!("{}: {} documents, {} requests", r.task, r.documents, r.requests);
                results.push(r);
            }
            if let Some(staged) = staged {
                write_results(
                    staged.path(),
                    &results,
                    &json!({"model": model.model, "adapter": adapter, "config": cfg, "chat_template": chat_settings, "precision": precision}),
                )?;
                staged.publish()?;
            }
            emit(&markdown(&results));
        }
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
            let seqs = read_input_ids(&input_ids, m.spec().vocab_size, m.spec().context_length())?;
            let v = m.spec().vocab_size;
            // Bounded memory: sequences run in batches of at most LOGITS_BATCH_FLOATS logits (one
            // sequence at least), and each batch's rows are written out before the next one runs.
            let batch_tokens = (LOGITS_BATCH_FLOATS / v).max(1);
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let piped = |r: std::io::Result<()>| r.or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) });
            let mut write = |text: &str| piped(out.write_all(text.as_bytes()));
            let mut failed = write("{\"logits\": [").is_err();
            let mut first = true;
            let mut at = 0;
            while at < seqs.len() && !failed {
                let mut end = at + 1;
                let mut longest = seqs[at].len();
                while end < seqs.len() && longest.max(seqs[end].len()) * (end + 1 - at) <= batch_tokens {
                    longest = longest.max(seqs[end].len());
                    end += 1;
                }
                let batch = &seqs[at..end];
                let (ids, mask) = secateur::models::generate::right_pad(batch, 0);
                let width = mask[0].len();
                let logits = with_lm!(&m, |m| m.forward(token_tensor::<B>(&ids, &device), &mask))?;
                let flat: Vec<f32> =
                    logits.into_data().convert::<f32>().to_vec().map_err(|e| CliError::Usage(format!("cannot read logits: {e:?}")))?;
                for (b, s) in batch.iter().enumerate() {
                    let rows: Vec<&[f32]> = (0..s.len()).map(|t| &flat[(b * width + t) * v..(b * width + t + 1) * v]).collect();
                    let sep = if first { "" } else { ", " };
                    first = false;
                    failed |= write(&format!("{sep}{}", serde_json::to_string(&rows).expect("JSON"))).is_err();
                }
                at = end;
            }
            let _ = write("]}\n");
            let _ = piped(out.flush());
        }
        Command::Generate { model, prompt, max_new_tokens, temperature, top_p, seed, no_cache, chat, system, json: as_json } => {
            if !(temperature.is_finite() && temperature >= 0.0 && top_p > 0.0 && top_p <= 1.0) || max_new_tokens == 0 {
                return Err(CliError::Usage(format!(
                    "--temperature {temperature} must be >= 0, --top-p {top_p} in (0, 1] and --max-new-tokens at least 1"
                )));
            }
            let m = AnyLm::<B>::load(&model.model, &device)?;
            let tok = TextTokenizer::from_file(&model.model.join("tokenizer.json"))?;
            let context = m.spec().context_length();
            if prompt.len() > 64 * context {
                return Err(CliError::Usage(format!(
                    "--prompt of {} bytes cannot fit the model's context window of {context} tokens",
                    prompt.len()
                )));
            }
            let mut eos_token_ids = m.spec().eos_token_ids.clone();
            let (text, ids) = if chat {
                let template = chat_template(&model.model)?;
                let mut messages: Vec<_> = system.iter().map(|s| secateur::models::Message::new("system", s)).collect();
                messages.push(secateur::models::Message::new("user", &prompt));
                eos_token_ids = template.stop_ids(&tok, &eos_token_ids);
                template.prompt(&tok, &messages)?
            } else {
                (prompt.clone(), tok.encode(&prompt)?)
            };
            if ids.len() + max_new_tokens > context {
                return Err(CliError::Usage(format!(
                    "--prompt is {} tokens; with --max-new-tokens {max_new_tokens} that exceeds the model's context window of {context} tokens",
                    ids.len()
                )));
            }
            let opts = GenerateOptions { max_new_tokens, temperature, top_p, seed, eos_token_ids, use_cache: !no_cache, max_context: None };
            let out = with_lm!(&m, |m| generate(m, std::slice::from_ref(&ids), &opts, &device))?;
            let completion = tok.decode(&out[0])?;
            if as_json {
                emit(
                    &serde_json::to_string_pretty(
                        &json!({"prompt": text, "prompt_ids": ids, "completion": completion, "completion_ids": out[0]}),
                    )
                    .expect("JSON"),
                );
            } else {
                emit(&completion);
            }
        }
        Command::Quantize {
            model,
            method,
            bits,
            group_size,
            calibration,
            calibration_samples,
            seq_len,
            seed,
            batch_size,
            act_order,
            static_groups,
            damp,
            out,
            force,
        } => {
            use secateur::quant::checkpoint::{QuantMeta, quantize_model, write_quantized_with};
            if group_size < -1 {
                return Err(CliError::Usage(format!(
                    "--group-size {group_size}: give a positive group size, or -1 / 0 for one group per row"
                )));
            }
            let method = method.unwrap_or(if calibration.is_some() { QuantMethod::Gptq } else { QuantMethod::Rtn });
            if method == QuantMethod::Rtn && (calibration.is_some() || act_order || static_groups) {
                return Err(CliError::Usage("--calibration, --act-order and --static-groups are GPTQ settings (--method gptq)".into()));
            }
            if batch_size == 0 {
                return Err(CliError::Usage("--batch-size must be at least 1".into()));
            }
            let quant = secateur::quant::QuantConfig { bits, group_size: (group_size > 0).then_some(group_size as usize) };
            let gptq = secateur::quant::GptqConfig { quant, damp, act_order, static_groups, ..Default::default() };
            let spec = secateur::models::ArchSpec::from_config_file(&model.model.join("config.json"))?;
            secateur::pipelines::check_quant(&spec, bits, quant.group_size)?;
            if method == QuantMethod::Gptq {
                gptq.validate(spec.hidden_size)?;
            }
            let samples = match (&calibration, method) {
                (Some(path), _) => secateur::sparsity::load_calibration(path, &model.model, &spec, calibration_samples, seq_len, seed)?,
                (None, QuantMethod::Gptq) => return Err(CliError::Usage("--method gptq needs --calibration FILE".into())),
                (None, QuantMethod::Rtn) => Vec::new(),
            };
            let manifest = Manifest::new(
                "quantize",
                &json!({"model": model.model, "method": method, "bits": bits, "group_size": group_size, "calibration": calibration,
                        "calibration_samples": calibration_samples, "seq_len": seq_len, "seed": seed, "act_order": act_order,
                        "static_groups": static_groups, "damp": damp}),
            );
            let staged = OutputDir::create(&out, &manifest, force, &[&model.model])?;
            let m = DenseLm::<B>::load(&model.model, &device)?;
            let (q, meta, report) = match method {
                QuantMethod::Rtn => (quantize_model(m, quant)?, QuantMeta::default(), None),
                QuantMethod::Gptq => {
                    let outcome = secateur::quant::gptq_model(m, &samples, &gptq, batch_size, true)?;
                    let ratio = |f: fn(&secateur::quant::GptqSiteReport) -> f64| outcome.sites.iter().map(f).sum::<f64>();
                    let summary = json!({
                        "reconstruction_error_gptq": ratio(|s| s.gptq_error),
                        "reconstruction_error_rtn": ratio(|s| s.rtn_error),
                        "dead_inputs": outcome.sites.iter().map(|s| s.dead).sum::<usize>(),
                    });
                    let bytes = serde_json::to_vec_pretty(&json!({"summary": summary, "sites": outcome.sites})).expect("JSON");
                    secateur::models::weights::write_atomic(&staged.path().join("gptq-report.json"), &bytes)?;
                    (outcome.model, QuantMeta { damp: Some(damp), static_groups }, Some(summary))
                }
            };
            let bytes = write_quantized_with(&model.model, staged.path(), &q, &meta)?;
            staged.publish()?;
            let source = secateur::models::weights::weights_bytes(&model.model);
            emit(
                &serde_json::to_string(
                    &json!({"out": out, "method": method, "bits": bits, "group_size": group_size, "weights_bytes": bytes,
                    "source_weights_bytes": source, "calibration_samples": samples.len(), "gptq": report}),
                )
                .expect("JSON"),
            );
        }
        Command::Shears { .. }
        | Command::Sqft { .. }
        | Command::Nas { .. }
        | Command::Search { .. }
        | Command::MooBench { .. }
        | Command::Export { .. } => {
            unreachable!("handled in run")
        }
        Command::Prune { model, method, sparsity, nm, calibration, calibration_samples, seq_len, seed, batch_size, out, force } => {
            use secateur::sparsity::{Pattern, PruneConfig, ScoreMethod, load_calibration, prune};
            if let Some(r) = sparsity
                && !(r.is_finite() && (0.0..1.0).contains(&r))
            {
                return Err(CliError::Usage(format!("--sparsity {r}: must be in [0, 1)")));
            }
            if batch_size == 0 {
                return Err(CliError::Usage("--batch-size must be at least 1".into()));
            }
            let spec = secateur::models::ArchSpec::from_config_file(&model.model.join("config.json"))?;
            let len = seq_len.unwrap_or_else(|| spec.context_length().min(2048));
            let manifest = Manifest::new(
                "prune",
                &json!({"model": model.model, "method": method, "sparsity": sparsity, "nm": nm, "calibration": calibration, "calibration_samples": calibration_samples, "seq_len": len, "seed": seed}),
            );
            let pattern = match (sparsity, nm.as_deref()) {
                (Some(ratio), None) => Pattern::Unstructured { ratio },
                (None, Some(s)) => {
                    Pattern::parse_nm(s).ok_or_else(|| CliError::Usage(format!("--nm {s:?}: expected N:M with 0 < N < M, e.g. 2:4")))?
                }
                _ => return Err(CliError::Usage("give exactly one of --sparsity and --nm".into())),
            };
            let method = match method {
                PruneMethod::Wanda => ScoreMethod::Wanda,
                PruneMethod::Magnitude => ScoreMethod::Magnitude,
            };
            let samples = match &calibration {
                Some(path) => load_calibration(path, &model.model, &spec, calibration_samples, seq_len, seed)?,
                None if method == ScoreMethod::Wanda => {
                    return Err(CliError::Usage("--method wanda needs --calibration FILE".into()));
                }
                None => Vec::new(),
            };
            let cfg = PruneConfig { method, pattern, batch_size, progress: true };
            let staged = OutputDir::create(&out, &manifest, force, &[&model.model])?;
            let m = DenseLm::<B>::load(&model.model, &device)?;
            let outcome = prune(m, &samples, &cfg)?;
            let report = secateur::sparsity::checkpoint::write_pruned(&model.model, staged.path(), &outcome.model, &outcome.masks, &cfg)?;
            staged.publish()?;
            emit(
                &serde_json::to_string(&json!({
                    "out": out,
                    "total_sparsity": report["total_sparsity"],
                    "nonzero_parameters": report["nonzero_parameters"],
                    "calibration_samples": samples.len(),
                }))
                .expect("JSON"),
            );
        }
    }
    Ok(())
}

/// A dense or a quantized model, chosen by the checkpoint's `quantization_config`.
enum AnyLm<B: Backend> {
    Dense(DenseLm<B>),
    Quant(secateur::quant::QuantLm<B>),
    /// A dense model with a PEFT adapter (`eval --adapter`).
    Adapted(secateur::lora::AdaptedLm<B>),
}

/// Runs an expression on whichever model an [`AnyLm`] holds.
macro_rules! with_lm {
    ($m:expr, |$x:ident| $body:expr) => {
        match $m {
            AnyLm::Dense($x) => $body,
            AnyLm::Quant($x) => $body,
            AnyLm::Adapted($x) => $body,
        }
    };
}
use with_lm;

impl<B: Backend> AnyLm<B> {
    fn load(dir: &Path, device: &B::Device) -> Result<Self, CliError> {
        if dir.join("config.json").is_file() && secateur::quant::checkpoint::quant_config(dir)?.is_some() {
            return Ok(Self::Quant(secateur::quant::checkpoint::load_quantized(dir, device)?));
        }
        Ok(Self::Dense(DenseLm::load(dir, device)?))
    }

    fn spec(&self) -> &secateur::models::ArchSpec {
        with_lm!(self, |m| m.spec())
    }
}

/// Most logits (tokens x vocabulary) one `logits` forward batch holds: 64 MB of f32.
const LOGITS_BATCH_FLOATS: usize = 1 << 24;

fn moo_bench(
    problem: BenchProblem,
    algo: BenchAlgo,
    evals: usize,
    pop: usize,
    seed: u64,
    ref_points: Option<&str>,
    out: Option<&Path>,
) -> Result<(), CliError> {
    use secateur::search_algorithms::benchmarks::Benchmark;
    use secateur::search_algorithms::hypervolume::hypervolume;
    use secateur::search_algorithms::{Evaluator, Problem};
    let name = value_name(&problem);
    let p = Benchmark::by_name(&name).ok_or_else(|| CliError::Usage(format!("unknown problem {name:?}")))?;
    let m = p.n_objectives();
    if evals == 0 {
        return Err(CliError::Usage("--evals must be at least 1".into()));
    }
    if matches!(algo, BenchAlgo::HillClimb) && p.variables().iter().any(|v| matches!(v, secateur::search_algorithms::Variable::Real { .. }))
    {
        return Err(CliError::Usage(format!(
            "--algo hill-climb steps between choices: {name} has real variables (use zdt1-discrete, or nsga2 / rnsga2 / random)"
        )));
    }
    let clock = std::time::Instant::now();
    let mut ev = Evaluator::new(&p);
    let (population, front) = match algo {
        BenchAlgo::Nsga2 => {
            // Like pymoo's `res.opt`: the front of the final population.
            let alg = secateur::search_algorithms::nsga2::Nsga2 {
                archive_front: false,
                ..secateur::search_algorithms::nsga2::Nsga2::new(pop, seed)
            };
            let r = alg.run(&mut ev, evals)?;
            (r.population, r.front)
        }
        BenchAlgo::Rnsga2 => {
            let refs = secateur::pipelines::parse_points(
                "--ref-points",
                ref_points.ok_or_else(|| CliError::Usage("rnsga2 needs --ref-points".into()))?,
                m,
            )?;
            let r = secateur::search_algorithms::rnsga2::RNsga2::new(pop, refs, seed).run(&mut ev, evals)?;
            (r.population, r.front)
        }
        BenchAlgo::Random => {
            let r = secateur::search_algorithms::local::RandomSearch { seed }.run(&mut ev, evals)?;
            (r.front.clone(), r.front)
        }
        BenchAlgo::HillClimb => {
            let r = secateur::search_algorithms::local::HillClimb { start: None, weights: None }.run(&mut ev, evals)?;
            (r.front.clone(), r.front)
        }
    };
    let seconds = clock.elapsed().as_secs_f64();
    let pts: Vec<Vec<f64>> = population.iter().filter_map(|e| e.f.clone()).collect();
    let hv = hypervolume(&pts, &vec![1.1; m]);
    if let Some(dir) = out {
        secateur::search_algorithms::report::write_outputs(dir, &p.objective_names(), &ev.history, &front)?;
    }
    emit(
        &serde_json::to_string(&json!({
            "problem": name,
            "algo": value_name(&algo),
            "hypervolume": hv,
            "optimal_hypervolume": p.optimal_hypervolume(),
            "evaluations": ev.evaluations(),
            "seconds": seconds,
            "seed": seed,
        }))
        .expect("JSON"),
    );
    Ok(())
}

/// Prints a line to stdout; a closed pipe (e.g. `| head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn info<B: Backend, P: secateur::models::Projection<B>>(m: &secateur::models::CausalLm<B, P>) -> serde_json::Value {
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

fn read_input_ids(path: &Path, vocab: usize, context: usize) -> Result<Vec<Vec<u32>>, CliError> {
    let bad = |reason: String| CliError::Input { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let seqs: Vec<Vec<u32>> = serde_json::from_str(&text).map_err(|e| bad(format!("expected an array of token-id arrays: {e}")))?;
    if seqs.is_empty() {
        return Err(bad("no sequences".into()));
    }
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(bad(format!("sequence {i} is empty")));
        }
        if s.len() > context {
            return Err(bad(format!("sequence {i} has {} tokens, more than the model's context window of {context}", s.len())));
        }
        if let Some(t) = s.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(format!("sequence {i}: token id {t} is outside the vocabulary of {vocab}")));
        }
    }
    Ok(seqs)
}
