//! Shears: Wanda sparsity, then NLS super-adapter training, sub-adapter evaluation, and a
//! report shaped like the Shears paper's ablation (its Tables 4 and 6).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use secateur_elastic_lora::peft::export_peft;
use secateur_elastic_lora::{AdaptedLm, LoraConfig, RankControl, Scaling, SearchSpace, SubnetConfig, attach};
use secateur_models::weights::write_atomic;
use secateur_models::{DenseLm, TextTokenizer};
use secateur_runs::{RunDir, StagedDir};
use secateur_supernet::data::{self, Example};
use secateur_supernet::eval::{AnswerKind, accuracy_as};
use secateur_supernet::train::{Strategy, train};
use serde::Serialize;
use serde_json::json;

use crate::config::{
    Evals, ShearsConfig, Task, base_spec, err, eval_columns, export_adapter, export_model, load_task, materialize_base, ranks_and_alpha,
    train_config, wanda,
};
use crate::{PipelineError, Reporter};

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
    /// The `--eval-task` metrics, keyed `TASK METRIC`.
    pub eval: BTreeMap<String, f64>,
}

/// A trained adapter on the sparse base, for evaluation.
struct Trained<B: Backend> {
    model: AdaptedLm<B>,
    ctl: RankControl,
    seconds: f64,
    trainable: usize,
}

/// What a Shears run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ShearsResult {
    /// The run directory.
    pub dir: PathBuf,
    /// The report's rows: dense and Wanda baselines, LoRA, and the NLS sub-adapters.
    pub rows: Vec<Row>,
    /// The rows as a markdown table (also written to `report.md`).
    pub table: String,
}

/// Runs Shears: the dense base and its Wanda-pruned version untuned, LoRA (maximal rank) on the
/// dense base (how far the sparse results are from dense fine-tuning), then LoRA and an NLS
/// super-adapter trained on the sparse base, its maximal, heuristic and minimal sub-adapters
/// measured on the test split (and on every `--eval-task`), and the heuristic one exported in
/// PEFT format (`nls-heuristic-adapter/`). Writes `report.json` and `report.md` into the run
/// directory.
pub fn shears<B: AutodiffBackend>(args: &ShearsConfig, device: &B::Device, reporter: &dyn Reporter) -> Result<ShearsResult, PipelineError> {
    let total_clock = Instant::now();
    args.validate()?;
    let (ranks, alpha) = ranks_and_alpha(args);
    let space = args.validate_for(&base_spec(args)?, &ranks)?;
    let task = load_task(args)?;
    let run_dir = args.open_run("shears", json!({}))?;
    let out = run_dir.path().to_path_buf();
    let base_dir = materialize_base(args, &out)?;

    let tok = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    reporter.line(&format!("shears: {} train / {} validation / {} test examples", task.train.len(), task.val.len(), task.test.len()));
    let mut rows = Vec::new();

    // 1. The dense base, untuned.
    let dense = DenseLm::<B::InnerBackend>::load(&base_dir, device)?;
    let spec = dense.spec().clone();
    let dense_params = dense.num_params();
    let evals = Evals::new(args, &base_dir, &spec, &tok, &task.format)?;
    let acc = accuracy_as(&dense, &tok, &task.format, &task.test, AnswerKind::Math, args.max_new_tokens, 64, device)?;
    reporter.line(&format!("dense base: accuracy {:.3}", acc.accuracy));
    let eval = evals.run(&dense, &tok, device, reporter)?;
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
        eval,
    });

    // 2. Wanda.
    let wanda_dir = out.join("wanda");
    let (pruned, sparsity, nonzero, prune_seconds) = wanda(args, &base_dir, &wanda_dir, dense, &tok, &task, reporter)?;
    let acc = accuracy_as(&pruned, &tok, &task.format, &task.test, AnswerKind::Math, args.max_new_tokens, 64, device)?;
    reporter.line(&format!("wanda: accuracy {:.3}", acc.accuracy));
    let eval = evals.run(&pruned, &tok, device, reporter)?;
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
        eval,
    });
    drop(pruned);

    // 3. Adapters on the sparse base: plain LoRA at the maximal rank, then NLS.
    space.to_file(&out.join("search_space.json"))?;
    let eos = spec.eos_token_ids.first().copied();
    let examples: Vec<Example> = task
        .train
        .iter()
        .map(|r| data::tokenize_as(r, &tok, &task.format, eos, args.cutoff, args.train_on_inputs))
        .collect::<Result<_, _>>()?;
    let pad = eos.unwrap_or(0);
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let train_cfg = |strategy| train_config(args, strategy, reporter.bars());
    let mut adapters: Vec<Trained<B::InnerBackend>> = Vec::new();
    // (label, base, strategy): LoRA and NLS on the sparse base, LoRA on the dense one.
    for (label, base, strategy) in
        [("lora", &wanda_dir, Strategy::Fixed), ("nls", &wanda_dir, Strategy::Nls), ("lora-dense", &base_dir, Strategy::Fixed)]
    {
        let frozen = DenseLm::<B>::load(base, device)?.no_grad();
        let (model, ctl) = attach(frozen, &space, &lora_cfg, device)?;
        let ckpt = out.join(format!("train-{label}"));
        let (model, report) = train(model, &ctl, &examples, &train_cfg(strategy), pad, Some(&ckpt))?;
        reporter.line(&format!(
            "{label}: {} steps in {:.1}s, final loss {:.4}",
            report.steps,
            report.seconds,
            report.losses.last().copied().unwrap_or(f64::NAN)
        ));
        write_atomic(&ckpt.join("report.json"), serde_json::to_string(&report).expect("JSON").as_bytes())?;
        adapters.push(Trained { model: model.valid(), ctl, seconds: report.seconds, trainable: report.trainable_params });
    }
    let evaluate = |name: String, t: &Trained<B::InnerBackend>, config: &SubnetConfig, dense: bool| -> Result<Row, PipelineError> {
        let (model, ctl) = (&t.model, &t.ctl);
        ctl.apply(config)?;
        let ranks = ctl.space.ranks(config)?;
        let active = secateur_elastic_lora::adapter_params(&model.sites(), &ctl.ranks());
        let acc = accuracy_as(model, &tok, &task.format, &task.test, AnswerKind::Math, args.max_new_tokens, 64, device)?;
        reporter.line(&format!("{name}: accuracy {:.3}", acc.accuracy));
        Ok(Row {
            name,
            accuracy: acc.accuracy,
            correct: acc.correct,
            total: acc.total,
            sparsity: if dense { 0.0 } else { sparsity },
            nonzero_params: if dense { dense_params } else { nonzero } + active,
            trainable_params: t.trainable,
            adapter_ranks: Some(ranks),
            train_seconds: Some(t.seconds),
            eval: evals.run(model, &tok, device, reporter)?,
        })
    };
    let pct = args.sparsity * 100.0;
    // Dense + LoRA goes after the dense base.
    rows.insert(1, evaluate(format!("Dense + LoRA (rank {})", ranks[0]), &adapters[2], &space.maximal(), true)?);
    rows.push(evaluate(format!("Wanda {pct:.0}% + LoRA (rank {})", ranks[0]), &adapters[0], &space.maximal(), false)?);
    for (kind, config) in [("maximal", space.maximal()), ("heuristic", space.heuristic()), ("minimal", space.minimal())] {
        rows.push(evaluate(format!("Wanda {pct:.0}% + NLS ({kind})"), &adapters[1], &config, false)?);
    }
    let (nls, nls_ctl) = (&adapters[1].model, &adapters[1].ctl);
    // The heuristic sub-adapter in PEFT format, with its true ranks.
    nls_ctl.apply(&space.heuristic())?;
    let peft = StagedDir::new(&out.join("nls-heuristic-adapter"))?;
    export_peft(nls, peft.path(), &wanda_dir.to_string_lossy())?;
    peft.publish()?;
    // GGUF: the sparse base, and the heuristic sub-adapter merged into it (dense again: Shears'
    // adapters are not sparsity-preserving; SQFT's SparsePEFT is).
    let mut gguf = Vec::new();
    if args.export.is_some() {
        let merged_dir = out.join("nls-heuristic-merged");
        let merged = secateur_elastic_lora::peft::merge(adapters.swap_remove(1).model);
        let staged = StagedDir::new(&merged_dir)?;
        secateur_models::weights::save_like(&merged, &wanda_dir, staged.path())?;
        staged.publish()?;
        drop(merged);
        for dir in [&wanda_dir, &merged_dir] {
            gguf.extend(export_model::<B::InnerBackend>(args, &out, dir, device, reporter)?);
        }
        // The heuristic sub-adapter as a llama.cpp LoRA file: with the sparse base's GGUF, the
        // base stays sparse (llama.cpp applies B·A at run time).
        gguf.extend(export_adapter(args, &out, &wanda_dir, &out.join("nls-heuristic-adapter"), reporter)?);
    }

    let table = markdown(&rows);
    let report = json!({
        "base": base_dir,
        "dataset": args.dataset.as_ref().map_or("embedded arithmetic word problems".to_string(), |p| p.display().to_string()),
        "split": {"train": task.train.len(), "validation": task.val.len(), "test": task.test.len()},
        "search_space": {"groups": space.groups.len(), "ranks": ranks, "alpha": alpha},
        "prune_seconds": prune_seconds,
        "total_seconds": total_clock.elapsed().as_secs_f64(),
        "rows": rows,
        "gguf": gguf,
    });
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report).expect("JSON").as_bytes())?;
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    Ok(ShearsResult { dir: out, rows, table })
}

/// A finished Shears run, loaded for search: the NLS super-adapter on the sparse base.
pub struct LoadedRun<B: Backend> {
    /// The run's recorded settings.
    pub args: ShearsConfig,
    pub tokenizer: TextTokenizer,
    /// The run's splits, re-made from its settings.
    pub task: Task,
    /// The sparse base with the trained NLS super-adapter.
    pub model: AdaptedLm<B>,
    /// The control of the super-adapter's active ranks.
    pub ranks: RankControl,
}

/// Loads `dir/wanda`, `dir/search_space.json` and the NLS adapters of `dir/train-nls` of a
/// finished `secateur shears` run, holding the run directory's lock.
pub fn load_run<B: Backend>(dir: &Path, device: &B::Device) -> Result<(RunDir, LoadedRun<B>), PipelineError> {
    let (run_dir, manifest) = RunDir::attach(dir, "shears")?;
    let manifest_path = dir.join(secateur_runs::MANIFEST);
    let args: ShearsConfig = serde_json::from_value(manifest.args).map_err(|e| err(&manifest_path, format!("field `args`: {e}")))?;
    let (_, alpha) = ranks_and_alpha(&args);
    let base_dir = match &args.model {
        Some(m) => secateur_models::gguf::import::resolve_model(m)?,
        None => dir.join("base"),
    };
    let adapters = secateur_supernet::train::final_adapters(&dir.join("train-nls"))?;
    let tokenizer = TextTokenizer::from_file(&base_dir.join("tokenizer.json"))?;
    let space = SearchSpace::from_file(&dir.join("search_space.json"))?;
    let sparse = DenseLm::<B>::load(&dir.join("wanda"), device)?;
    let lora_cfg = LoraConfig { alpha, scaling: Scaling::MaxRank, seed: args.seed };
    let (model, ranks) = attach(sparse, &space, &lora_cfg, device)?;
    let model = secateur_supernet::train::load_adapters(model, &adapters, device)?;
    let task = load_task(&args)?;
    Ok((run_dir, LoadedRun { args, tokenizer, task, model, ranks }))
}

fn markdown(rows: &[Row]) -> String {
    let (header, rule, cells) = eval_columns(&rows.iter().map(|r| &r.eval).collect::<Vec<_>>());
    let mut s = format!(
        "| Model | Accuracy | Sparsity | Non-zero params | Trainable params | Adapter ranks | Train time (s) |{header}\n|---|---|---|---|---|---|---|{rule}\n"
    );
    for (r, extra) in rows.iter().zip(cells) {
        let ranks = r.adapter_ranks.as_ref().map_or("-".to_string(), |v| {
            let mut u = v.clone();
            u.dedup();
            u.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("/")
        });
        s += &format!(
            "| {} | {:.1}% ({}/{}) | {:.1}% | {} | {} | {} | {} |{extra}\n",
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
