//! The sub-adapter search: pick sub-adapters of a trained NLS super-adapter. Configurations are
//! evaluated on the validation split only; the chosen ones (the front) are then measured on the
//! test split and added to the run's report.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::prelude::Backend;
use secateur_elastic_lora::cost::cost;
use secateur_elastic_lora::{AdaptedLm, RankControl, SubnetConfig};
use secateur_models::{ArchSpec, TextTokenizer};
use secateur_search::local::{HillClimb, RandomSearch};
use secateur_search::nsga2::Nsga2;
use secateur_search::problem::{heuristic, maximal, minimal};
use secateur_search::rnsga2::RNsga2;
use secateur_search::{Evaluated, Evaluator, Problem, Variable};
use secateur_supernet::data::Record;
use secateur_supernet::eval::{AnswerKind, accuracy_as};
use serde::Serialize;
use serde_json::json;

use clap::ValueEnum;

use crate::{PipelineError, Reporter};

/// The search algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// The maximal, heuristic and minimal sub-adapters only.
    Heuristic,
    HillClimb,
    Nsga2,
    Rnsga2,
    Random,
}

/// An objective of the sub-adapter search (all minimised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchObjective {
    /// 1 - exact-match accuracy on the validation split.
    Accuracy,
    /// MACs per token.
    Macs,
    /// Active adapter parameters.
    Params,
}

/// Options of a sub-adapter search ([`SearchConfig::new`] gives the command line's defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchConfig {
    /// A finished `secateur shears` run directory.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, value_enum, default_value = "nsga2")]
    pub algo: Algo,
    /// Distinct configurations to evaluate (cached ones included).
    #[arg(long, default_value_t = 40)]
    pub budget: usize,
    /// Objectives, all minimised.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "accuracy,macs")]
    pub objectives: Vec<SearchObjective>,
    /// R-NSGA-II reference points in objective space: `e1,m1;e2,m2`.
    #[arg(long)]
    pub ref_points: Option<String>,
    /// Population of NSGA-II / R-NSGA-II (the papers use 8 for LLMs).
    #[arg(long, default_value_t = 8)]
    pub pop: usize,
    /// Keys a token attends to, for the attention term of MACs.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SearchConfig {
    /// The command line's defaults, searching the Shears run in `run`.
    pub fn new(run: impl Into<PathBuf>) -> Self {
        let run = run.into();
        let mut c: Self = crate::clap_defaults(&["--run", "."]);
        c.run = run;
        c
    }
}

struct SubAdapterProblem<'a, B: Backend> {
    vars: Vec<Variable>,
    objectives: Vec<SearchObjective>,
    model: &'a AdaptedLm<B>,
    device: &'a B::Device,
    ranks: &'a RankControl,
    tok: &'a TextTokenizer,
    format: &'a secateur_supernet::data::PromptFormat,
    val: &'a [Record],
    spec: &'a ArchSpec,
    context: usize,
    max_new_tokens: usize,
    /// The model's active ranks are shared state: one evaluation at a time.
    lock: Mutex<()>,
}

impl<B: Backend> SubAdapterProblem<'_, B> {
    fn config(x: &[f64]) -> SubnetConfig {
        SubnetConfig(x.iter().map(|v| *v as usize).collect())
    }

    fn costs(&self, config: &SubnetConfig) -> Result<secateur_elastic_lora::cost::Cost, String> {
        let ranks = self.ranks.space.ranks(config).map_err(|e| e.to_string())?;
        let per_site = self.ranks.space.groups.iter().zip(&ranks).flat_map(|(g, &r)| g.sites.iter().map(move |s| (*s, r))).collect();
        Ok(cost(self.spec, &per_site, self.context))
    }
}

impl<B: Backend> Problem for SubAdapterProblem<'_, B> {
    fn variables(&self) -> &[Variable] {
        &self.vars
    }
    fn n_objectives(&self) -> usize {
        self.objectives.len()
    }
    fn parallel(&self) -> bool {
        false
    }
    fn objective_names(&self) -> Vec<String> {
        self.objectives
            .iter()
            .map(|o| match o {
                SearchObjective::Accuracy => "validation error (1 - accuracy)".to_string(),
                SearchObjective::Macs => format!("MACs per token (context {})", self.context),
                SearchObjective::Params => "adapter parameters".to_string(),
            })
            .collect()
    }
    fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String> {
        let config = Self::config(x);
        let c = self.costs(&config)?;
        let mut f = Vec::with_capacity(self.objectives.len());
        for o in &self.objectives {
            f.push(match o {
                SearchObjective::Accuracy => {
                    let _guard = self.lock.lock().map_err(|e| e.to_string())?;
                    self.ranks.apply(&config).map_err(|e| e.to_string())?;
                    let acc =
                        accuracy_as(self.model, self.tok, self.format, self.val, AnswerKind::Math, self.max_new_tokens, 64, self.device)
                            .map_err(|e| e.to_string())?;
                    1.0 - acc.accuracy
                }
                SearchObjective::Macs => c.macs() as f64,
                SearchObjective::Params => c.adapter_params as f64,
            });
        }
        Ok(f)
    }
}

/// One chosen configuration with its test accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    /// `front N`, or `maximal` / `heuristic` / `minimal` (measured for reference).
    pub label: String,
    /// The rank of every group.
    pub ranks: Vec<usize>,
    /// Its objective values on the validation split (front members only).
    pub objectives: Option<Vec<f64>>,
    pub macs_per_token: usize,
    pub adapter_params: usize,
    pub test_accuracy: f64,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// Distinct configurations evaluated (cached ones included).
    pub evaluations: usize,
    /// The front, then the maximal, heuristic and minimal sub-adapters.
    pub chosen: Vec<Chosen>,
    /// The chosen ones as a markdown table (also written to `search/<algo>/report.md`).
    pub table: String,
}

/// Searches the sub-adapters of a finished Shears run on its validation split (the evaluations
/// are cached in `search/<algo>/evaluations.jsonl`, so a killed search resumes), measures the
/// front on the test split, and adds the result to the run's `report.json`.
pub fn search<B: Backend>(args: &SearchConfig, device: &B::Device, reporter: &dyn Reporter) -> Result<SearchResult, PipelineError> {
    if args.objectives.is_empty() {
        return Err(PipelineError::Usage("--objectives: name at least one".into()));
    }
    if args.budget == 0 {
        return Err(PipelineError::Usage("--budget must be at least 1".into()));
    }
    if matches!(args.algo, Algo::Nsga2 | Algo::Rnsga2) && args.pop < 2 {
        return Err(PipelineError::Usage(format!("--pop {}: a population needs at least 2", args.pop)));
    }
    let refs = match (args.algo, args.ref_points.as_deref()) {
        (Algo::Rnsga2, Some(r)) => Some(parse_points("--ref-points", r, args.objectives.len())?),
        (Algo::Rnsga2, None) => return Err(PipelineError::Usage("rnsga2 needs --ref-points".into())),
        _ => None,
    };
    let (_lock, loaded) = crate::shears::load_run::<B>(&args.run, device)?;
    if loaded.task.val.is_empty() {
        return Err(PipelineError::Usage(format!("{}: the run has no validation split to search on", args.run.display())));
    }
    let spec = loaded.model.spec().clone();
    let problem = SubAdapterProblem {
        vars: loaded.ranks.space.groups.iter().map(|g| Variable::Choice { n: g.choices.len() }).collect(),
        objectives: args.objectives.clone(),
        model: &loaded.model,
        device,
        ranks: &loaded.ranks,
        tok: &loaded.tokenizer,
        format: &loaded.task.format,
        val: &loaded.task.val,
        spec: &spec,
        context: args.context,
        max_new_tokens: loaded.args.max_new_tokens,
        lock: Mutex::new(()),
    };
    let algo = args.algo.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let out = args.run.join("search").join(&algo);
    std::fs::create_dir_all(&out).map_err(|e| PipelineError::Input { path: out.clone(), reason: e.to_string() })?;
    // Everything an evaluation depends on besides the configuration: a cache made under other
    // objectives, data or adapters is not reused.
    let context = json!({
        "objectives": args.objectives,
        "macs_context": args.context,
        "split": "validation",
        "validation_records": loaded.task.val.len(),
        "run": std::fs::read_to_string(args.run.join(secateur_runs::MANIFEST)).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).map(|m| m["args"].clone()),
        "space": loaded.ranks.space.groups.iter().map(|g| json!({"name": g.name, "choices": g.choices})).collect::<Vec<_>>(),
    });
    let mut ev = Evaluator::persistent(&problem, &out.join("evaluations.jsonl"), &context)?;
    if ev.dropped_partial_line {
        reporter.line(&format!(
            "warning: {}: the last evaluation was cut off mid-write (a killed run) and is dropped",
            out.join("evaluations.jsonl").display()
        ));
    }
    if ev.loaded > 0 {
        reporter.line(&format!("search: {} cached evaluations loaded", ev.loaded));
    }
    let vars = problem.vars.clone();
    let front: Vec<Evaluated> = match args.algo {
        Algo::Heuristic => ev.evaluate(&[heuristic(&vars), maximal(&vars), minimal(&vars)])?,
        Algo::HillClimb => HillClimb { start: None, weights: None }.run(&mut ev, args.budget)?.front,
        Algo::Random => RandomSearch { seed: args.seed }.run(&mut ev, args.budget)?.front,
        Algo::Nsga2 => Nsga2::new(args.pop, args.seed).run(&mut ev, args.budget)?.front,
        Algo::Rnsga2 => RNsga2::new(args.pop, refs.unwrap_or_default(), args.seed).run(&mut ev, args.budget)?.front,
    };
    let history = ev.history.clone();
    drop(ev);
    secateur_search::report::write_outputs(&out, &problem.objective_names(), &history, &front)?;
    reporter.line(&format!("search: {} configurations evaluated on the validation split, {} on the front", history.len(), front.len()));

    // Test accuracy of the chosen configurations (and of the three fixed ones, for reference).
    let mut chosen = Vec::new();
    let mut measure = |label: String, x: &[f64], objectives: Option<Vec<f64>>| -> Result<(), PipelineError> {
        let config = SubAdapterProblem::<B>::config(x);
        loaded.ranks.apply(&config)?;
        let c = problem.costs(&config).map_err(PipelineError::Usage)?;
        let acc = accuracy_as(
            &loaded.model,
            &loaded.tokenizer,
            &loaded.task.format,
            &loaded.task.test,
            AnswerKind::Math,
            loaded.args.max_new_tokens,
            64,
            device,
        )?;
        chosen.push(Chosen {
            label,
            ranks: loaded.ranks.space.ranks(&config)?,
            objectives,
            macs_per_token: c.macs(),
            adapter_params: c.adapter_params,
            test_accuracy: acc.accuracy,
        });
        Ok(())
    };
    for (i, e) in front.iter().enumerate() {
        measure(format!("front {}", i + 1), &e.x, e.f.clone())?;
    }
    for (label, x) in [("maximal", maximal(&vars)), ("heuristic", heuristic(&vars)), ("minimal", minimal(&vars))] {
        measure(label.to_string(), &x, None)?;
    }
    let mut table = format!(
        "Search `{}` on the validation split ({} evaluations); test accuracy of the chosen sub-adapters:\n\n| Config | Ranks | Validation objectives | MACs/token | Adapter params | Test accuracy |\n|---|---|---|---|---|---|\n",
        algo,
        history.len()
    );
    for c in &chosen {
        let ranks = {
            let mut u: Vec<String> = c.ranks.iter().map(|r| r.to_string()).collect();
            if u.windows(2).all(|w| w[0] == w[1]) {
                u.truncate(1);
            }
            u.join("/")
        };
        let objs = c.objectives.as_ref().map_or("-".to_string(), |f| f.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", "));
        table += &format!(
            "| {} | {} | {} | {} | {} | {:.1}% |\n",
            c.label,
            ranks,
            objs,
            c.macs_per_token,
            c.adapter_params,
            c.test_accuracy * 100.0
        );
    }
    let report = json!({"algo": algo, "budget": args.budget, "objectives": problem.objective_names(), "evaluations": history.len(), "chosen": chosen});
    secateur_models::weights::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report).expect("JSON").as_bytes())?;
    secateur_models::weights::write_atomic(&out.join("report.md"), table.as_bytes())?;
    add_to_run_report(&args.run.join("report.json"), &algo, &report)?;
    Ok(SearchResult { evaluations: history.len(), chosen, table })
}

/// Adds the search's chosen configurations to the run's `report.json` under `search.<algo>`.
fn add_to_run_report(path: &Path, algo: &str, search: &serde_json::Value) -> Result<(), PipelineError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut report: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PipelineError::Input { path: path.to_path_buf(), reason: e.to_string() })?;
    if let Some(obj) = report.as_object_mut() {
        let entry = obj.entry("search").or_insert_with(|| json!({}));
        entry[algo] = search.clone();
    }
    secateur_models::weights::write_atomic(path, serde_json::to_string_pretty(&report).expect("JSON").as_bytes())?;
    Ok(())
}

/// Parses `a,b;c,d` (the value of `flag`) into points of `k` finite coordinates each.
pub fn parse_points(flag: &str, s: &str, k: usize) -> Result<Vec<Vec<f64>>, PipelineError> {
    let bad = |why: String| PipelineError::Usage(format!("{flag} {s:?}: {why}"));
    s.split(';')
        .map(|p| {
            let v: Vec<f64> = p.split(',').map(|v| v.trim().parse::<f64>().map_err(|e| bad(e.to_string()))).collect::<Result<_, _>>()?;
            if v.len() != k || v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("each point needs {k} finite coordinates, one per objective")));
            }
            Ok(v)
        })
        .collect()
}
