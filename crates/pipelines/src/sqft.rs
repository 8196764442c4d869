//! SQFT: the three SQFT pipelines on a sparse (and quantized) base, with a report
//! shaped like the SQFT paper's summary table.
//!
//! 1. `nls-quantized`: Wanda, then INT-n quantization of the sparse base, NLS adapters trained on
//!    it and kept separate (not mergeable).
//! 2. `sparsepeft`: NLS with the adapter update masked by the base's sparsity, merged into a
//!    sparse FP32 model with exactly the base's zeros.
//! 3. `qa-sparsepeft`: as 2, quantization-aware (fake-quantized merged weight, straight-through
//!    gradient), merged into an INT-n model with the base's scales and zero points.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use secateur_elastic_lora::sparse_peft::{BaseQuant, attach_sparse_peft_on, merge_quantized, merge_sparse};
use secateur_elastic_lora::{LoraConfig, Scaling, attach};
use secateur_models::weights::{weights_bytes, write_atomic};
use secateur_models::{DenseLm, Site, TextTokenizer};
use secateur_quant::checkpoint::{QuantMeta, load_quantized, quantize_model, write_quantized, write_quantized_with};
use secateur_quant::rtn::Quantized;
use secateur_quant::{GptqConfig, QuantConfig, gptq_model};
use secateur_runs::StagedDir;
use secateur_supernet::data::{self, Example};
use secateur_supernet::eval::{AnswerKind, accuracy_as};
use secateur_supernet::train::{Strategy, save_adapters, train};
use serde::Serialize;
use serde_json::json;

use crate::config::{
    Evals, ShearsConfig, base_spec, calibration_windows, eval_columns, export_model, load_task, materialize_base, ranks_and_alpha,
    train_config, wanda,
};
use crate::{PipelineError, Reporter};

/// Which SQFT pipelines to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// NLS on the quantized sparse base (adapters kept separate).
    NlsQuantized,
    /// SparsePEFT, merged into a sparse FP32 model.
    Sparsepeft,
    /// QA-SparsePEFT, merged into an INT-n model.
    QaSparsepeft,
    /// All three.
    All,
}

impl Pipeline {
    fn name(self) -> &'static str {
        match self {
            Pipeline::NlsQuantized => "nls-quantized",
            Pipeline::Sparsepeft => "sparsepeft",
            Pipeline::QaSparsepeft => "qa-sparsepeft",
            Pipeline::All => "all",
        }
    }
}

/// How SQFT quantizes its sparse base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantMethod {
    /// GPTQ (damp 0.01, blocks of 128, no act-order: QA-SparsePEFT needs contiguous groups).
    Gptq,
    /// Round-to-nearest.
    Rtn,
}

/// Options of an SQFT run. `Default` gives the command line's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct SqftConfig {
    #[arg(long, value_enum, default_value = "all")]
    pub pipeline: Pipeline,
    /// Bits of the quantized base: 2, 4 or 8 (the GPTQ packings).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Inputs per quantization group (0: one group per row).
    #[arg(long, default_value_t = 32)]
    pub group_size: usize,
    /// How the sparse base is quantized: GPTQ on the run's calibration windows (SQFT's
    /// reference setting; the sparsity is kept) or round-to-nearest.
    #[arg(long, value_enum, default_value = "gptq")]
    pub quant: QuantMethod,
    #[command(flatten)]
    pub common: ShearsConfig,
}

impl Default for SqftConfig {
    fn default() -> Self {
        crate::clap_defaults(&[])
    }
}

/// What an SQFT run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SqftResult {
    /// The run directory.
    pub dir: PathBuf,
    pub rows: Vec<SqftRow>,
    /// The rows as a markdown table (also written to `report.md`).
    pub table: String,
}

/// Checks bits and group size against the model's projection widths.
pub fn check_quant(spec: &secateur_models::ArchSpec, bits: u32, group_size: Option<usize>) -> Result<(), PipelineError> {
    if !matches!(bits, 2 | 4 | 8) {
        return Err(PipelineError::Usage(format!("--bits {bits}: the GPTQ checkpoint format packs 2, 4 or 8 bits")));
    }
    let widest =
        (0..spec.num_layers).flat_map(|l| spec.block_site_kinds().into_iter().map(move |k| spec.site_shape(l, k)[1])).max().unwrap_or(0);
    if let Some(g) = group_size
        && g > widest
    {
        return Err(PipelineError::Usage(format!(
            "--group-size {g}: larger than the widest projection input ({widest}); use -1 or 0 for one group per row"
        )));
    }
    Ok(())
}

/// One row of the SQFT table.
#[derive(Debug, Clone, Serialize)]
pub struct SqftRow {
    pub name: String,
    pub accuracy: f64,
    pub sparsity: f64,
    pub base_precision: String,
    pub adapter_precision: String,
    pub mergeable: String,
    /// Size on disk of what a user would deploy (model, plus adapters when not merged).
    pub size_bytes: u64,
    pub train_seconds: Option<f64>,
    /// The `--eval-task` metrics, keyed `TASK METRIC`.
    pub eval: BTreeMap<String, f64>,
}

/// Fraction of zero weights over all projections.
fn sparsity_of(weights: impl Iterator<Item = Vec<f32>>) -> f64 {
    let (mut zeros, mut total) = (0usize, 0usize);
    for w in weights {
        zeros += w.iter().filter(|v| **v == 0.0).count();
        total += w.len();
    }
    zeros as f64 / total.max(1) as f64
}

/// Runs the selected SQFT pipelines, with the untuned dense, sparse INT-n and LoRA baselines, and
/// writes `report.json` and `report.md` into the run directory.
pub fn sqft<B: AutodiffBackend>(args: &SqftConfig, device: &B::Device, reporter: &dyn Reporter) -> Result<SqftResult, PipelineError> {
    let pipelines: Vec<&str> = match args.pipeline {
        Pipeline::All => vec!["nls-quantized", "sparsepeft", "qa-sparsepeft"],
        p => vec![p.name()],
    };
    let a = &args.common;
    a.validate()?;
    let qc = QuantConfig { bits: args.bits, group_size: (args.group_size > 0).then_some(args.group_size) };
    let (ranks, alpha) = ranks_and_alpha(a);
    let spec = base_spec(a)?;
    let space = a.validate_for(&spec, &ranks)?;
    check_quant(&spec, args.bits, qc.group_size)?;
    let task = load_task(a)?;
    let run_dir =
        a.open_run("sqft", json!({"pipeline": args.pipeline, "bits": args.bits, "group_size": args.group_size, "quant": args.quant}))?;
    let out = run_dir.path().to_path_buf();
    let base_dir = materialize_base(a, &out)?;
    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let acc_of = |name: &str, r: Result<secateur_supernet::eval::Accuracy, secateur_supernet::TrainError>| -> Result<f64, PipelineError> {
        let acc = r?.accuracy;
        reporter.line(&format!("{name}: accuracy {acc:.3}"));
        Ok(acc)
    };
    let test = |m: &dyn Fn(&[data::Record]) -> Result<secateur_supernet::eval::Accuracy, secateur_supernet::TrainError>| m(&task.test);
    let mut rows = Vec::new();

    let dense = DenseLm::<B::InnerBackend>::load(&base_dir, device)?;
    let evals = Evals::new(a, &base_dir, &spec, &tok, &task.format)?;
    let acc = acc_of("dense", test(&|r| accuracy_as(&dense, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)))?;
    let eval = evals.run(&dense, &tok, device, reporter)?;
    rows.push(SqftRow {
        name: "Dense base (no tuning)".into(),
        accuracy: acc,
        sparsity: 0.0,
        base_precision: "FP32".into(),
        adapter_precision: "-".into(),
        mergeable: "-".into(),
        size_bytes: weights_bytes(&base_dir),
        train_seconds: None,
        eval,
    });

    let wanda_dir = out.join("wanda");
    let (sparse, sparsity, _, _) = wanda(a, &base_dir, &wanda_dir, dense, &tok, &task, reporter)?;
    // The compressed base, untuned: sparse and INT-n.
    let int_dir = out.join(format!("wanda-int{}", args.bits));
    let (sparse_q, meta) = match args.quant {
        QuantMethod::Rtn => (quantize_model(sparse.clone(), qc)?, QuantMeta::default()),
        QuantMethod::Gptq => {
            let calibration = calibration_windows(a, &spec, &tok, &task)?;
            let cfg = GptqConfig { quant: qc, ..Default::default() };
            let clock = std::time::Instant::now();
            let outcome = gptq_model(sparse.clone(), &calibration, &cfg, 8, reporter.bars())?;
            let (e_g, e_r) = outcome.sites.iter().fold((0.0, 0.0), |(g, r), s| (g + s.gptq_error, r + s.rtn_error));
            reporter.line(&format!(
                "gptq: INT{} in {:.1}s, reconstruction error {:.3} of round-to-nearest's",
                args.bits,
                clock.elapsed().as_secs_f64(),
                e_g / e_r.max(f64::MIN_POSITIVE)
            ));
            (outcome.model, QuantMeta { damp: Some(cfg.damp), static_groups: false })
        }
    };
    let staged = StagedDir::new(&int_dir)?;
    write_quantized_with(&wanda_dir, staged.path(), &sparse_q, &meta)?;
    staged.publish()?;
    // QA-SparsePEFT trains on this base's codes, scales and zero points.
    let base_codes: HashMap<Site, Quantized> = sparse_q.projections().into_iter().map(|(site, p)| (site, p.packed.unpack())).collect();
    let acc =
        acc_of("sparse int", test(&|r| accuracy_as(&sparse_q, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)))?;
    let eval = evals.run(&sparse_q, &tok, device, reporter)?;
    rows.push(SqftRow {
        name: format!(
            "Wanda {:.0}% + INT{} {} (no tuning)",
            a.sparsity * 100.0,
            args.bits,
            if args.quant == QuantMethod::Gptq { "GPTQ" } else { "RTN" }
        ),
        accuracy: acc,
        sparsity,
        base_precision: format!("INT{}", args.bits),
        adapter_precision: "-".into(),
        mergeable: "-".into(),
        size_bytes: weights_bytes(&int_dir),
        train_seconds: None,
        eval,
    });
    drop((sparse, sparse_q));

    let eos = spec.eos_token_ids.first().copied();
    let examples: Vec<Example> =
        task.train.iter().map(|r| data::tokenize_as(r, &tok, &task.format, eos, a.cutoff, a.train_on_inputs)).collect::<Result<_, _>>()?;
    let pad = eos.unwrap_or(0);
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: a.seed };
    let ckpt = |name: &str| -> PathBuf { out.join(format!("train-{name}")) };

    // The LoRA baseline on the sparse FP32 base (not mergeable without losing sparsity).
    {
        let base = DenseLm::<B>::load(&wanda_dir, device)?.no_grad();
        let (m, ctl) = attach(base, &space, &lora_cfg, device)?;
        let (m, rep) = train(m, &ctl, &examples, &train_config(a, Strategy::Fixed, reporter.bars()), pad, Some(&ckpt("lora")))?;
        let m = m.valid();
        let acc = acc_of("lora", test(&|r| accuracy_as(&m, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)))?;
        let eval = evals.run(&m, &tok, device, reporter)?;
        save_adapters(&m, &out.join("lora-adapters.safetensors"))?;
        let size = weights_bytes(&wanda_dir) + std::fs::metadata(out.join("lora-adapters.safetensors")).map(|m| m.len()).unwrap_or(0);
        rows.push(SqftRow {
            name: format!("Wanda {:.0}% + LoRA (rank {})", a.sparsity * 100.0, ranks[0]),
            accuracy: acc,
            sparsity,
            base_precision: "FP32".into(),
            adapter_precision: "FP32".into(),
            mergeable: "no (sparsity lost)".into(),
            size_bytes: size,
            train_seconds: Some(rep.seconds),
            eval,
        });
    }

    for &pipeline in &pipelines {
        match pipeline {
            "nls-quantized" => {
                let base = load_quantized::<B>(&int_dir, device)?.no_grad();
                let (m, ctl) = attach(base, &space, &lora_cfg, device)?;
                let (m, rep) = train(m, &ctl, &examples, &train_config(a, Strategy::Nls, reporter.bars()), pad, Some(&ckpt(pipeline)))?;
                let m = m.valid();
                ctl.apply(&space.heuristic())?;
                let acc =
                    acc_of(pipeline, test(&|r| accuracy_as(&m, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)))?;
                let eval = evals.run(&m, &tok, device, reporter)?;
                let adapters = out.join("nls-quantized-adapters.safetensors");
                save_adapters(&m, &adapters)?;
                let size = weights_bytes(&int_dir) + std::fs::metadata(&adapters).map(|m| m.len()).unwrap_or(0);
                rows.push(SqftRow {
                    name: "SQFT: NLS on the quantized base (heuristic)".into(),
                    accuracy: acc,
                    sparsity,
                    base_precision: format!("INT{}", args.bits),
                    adapter_precision: "FP32".into(),
                    mergeable: "no".into(),
                    size_bytes: size,
                    train_seconds: Some(rep.seconds),
                    eval,
                });
            }
            "sparsepeft" | "qa-sparsepeft" => {
                let qa = pipeline == "qa-sparsepeft";
                let base = DenseLm::<B>::load(&wanda_dir, device)?.no_grad();
                let (m, ctl) = attach_sparse_peft_on(base, &space, &lora_cfg, qa.then_some(BaseQuant::Given(&base_codes)), device)?;
                let (m, rep) = train(m, &ctl, &examples, &train_config(a, Strategy::Nls, reporter.bars()), pad, Some(&ckpt(pipeline)))?;
                let m = m.valid();
                ctl.apply(&space.heuristic())?;
                let merged_dir = out.join(format!("{pipeline}-merged"));
                let (acc, eval, merged_sparsity, size, precision) = if qa {
                    let merged = merge_quantized(m)?;
                    let acc = acc_of(
                        pipeline,
                        test(&|r| accuracy_as(&merged, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)),
                    )?;
                    let eval = evals.run(&merged, &tok, device, reporter)?;
                    let staged = StagedDir::new(&merged_dir)?;
                    write_quantized(&wanda_dir, staged.path(), &merged)?;
                    staged.publish()?;
                    let s = sparsity_of(merged.projections().iter().map(|(_, p)| p.dequantized()));
                    (acc, eval, s, weights_bytes(&merged_dir), format!("INT{}", args.bits))
                } else {
                    let merged = merge_sparse(m);
                    let acc = acc_of(
                        pipeline,
                        test(&|r| accuracy_as(&merged, &tok, &task.format, r, AnswerKind::Math, a.max_new_tokens, 64, device)),
                    )?;
                    let eval = evals.run(&merged, &tok, device, reporter)?;
                    let staged = StagedDir::new(&merged_dir)?;
                    secateur_models::weights::save_like(&merged, &wanda_dir, staged.path())?;
                    staged.publish()?;
                    let s = sparsity_of(
                        merged.projections().iter().map(|(_, p)| p.weight.val().into_data().convert::<f32>().to_vec().expect("f32")),
                    );
                    (acc, eval, s, weights_bytes(&merged_dir), "FP32".to_string())
                };
                reporter.line(&format!("{pipeline}: sparsity after merging {merged_sparsity:.4} (base {sparsity:.4})"));
                let name = if qa { "SQFT + QA-SparsePEFT (heuristic, merged)" } else { "SQFT + SparsePEFT (heuristic, merged)" };
                rows.push(SqftRow {
                    name: name.into(),
                    accuracy: acc,
                    sparsity: merged_sparsity,
                    base_precision: precision,
                    adapter_precision: "merged".into(),
                    mergeable: "yes".into(),
                    size_bytes: size,
                    train_seconds: Some(rep.seconds),
                    eval,
                });
            }
            _ => unreachable!(),
        }
    }
    // The merged models (NLS on the quantized base keeps its adapters apart: nothing merged).
    let mut gguf = Vec::new();
    for p in pipelines.iter().filter(|p| **p != "nls-quantized") {
        gguf.extend(export_model::<B::InnerBackend>(a, &out, &out.join(format!("{p}-merged")), device, reporter)?);
    }
    let (header, rule, cells) = eval_columns(&rows.iter().map(|r| &r.eval).collect::<Vec<_>>());
    let mut table = format!(
        "| Pipeline | Accuracy | Sparsity | Base | Adapter | Mergeable | Size on disk (KB) | Train time (s) |{header}\n|---|---|---|---|---|---|---|---|{rule}\n",
    );
    for (r, extra) in rows.iter().zip(cells) {
        table += &format!(
            "| {} | {:.1}% | {:.1}% | {} | {} | {} | {:.0} | {} |{extra}\n",
            r.name,
            r.accuracy * 100.0,
            r.sparsity * 100.0,
            r.base_precision,
            r.adapter_precision,
            r.mergeable,
            r.size_bytes as f64 / 1024.0,
            r.train_seconds.map_or("-".into(), |t| format!("{t:.0}"))
        );
    }
    let report = json!({"bits": args.bits, "group_size": args.group_size, "ranks": ranks, "alpha": alpha, "rows": rows, "gguf": gguf});
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report).expect("JSON").as_bytes())?;
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    Ok(SqftResult { dir: out, rows, table })
}
