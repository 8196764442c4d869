//! secateur's pipelines as library functions, generic over the burn backend.
//!
//! - [`shears()`]: Wanda sparsity, then a LoRA baseline and an NLS super-adapter trained on the
//!   sparse base, the maximal / heuristic / minimal sub-adapters measured, the heuristic one
//!   exported in PEFT format.
//! - [`sqft()`]: SQFT's three pipelines (NLS on the quantized sparse base, SparsePEFT merged into a
//!   sparse FP32 model, QA-SparsePEFT merged into an INT-n model) with their baselines.
//! - [`nas()`]: two-stage NAS and LoNAS: a weight-sharing super-network trained with a sampler,
//!   searched with NSGA-II, its Pareto front extracted into standalone checkpoints and measured.
//! - [`search()`]: the sub-adapter search of a finished Shears run (heuristic, hill climbing,
//!   random, NSGA-II, R-NSGA-II) on its validation split, the chosen ones measured on test.
//!
//! Each pipeline takes a typed config (which also derives [`clap::Args`], so a program can
//! embed it in its own command line), a device of any [`AutodiffBackend`](burn::tensor::backend::AutodiffBackend),
//! and a [`Reporter`] for its progress; it writes one run directory (see
//! [`secateur_runs::RunDir`]: locked, never clobbered, resumable with `resume: true`) and returns
//! a typed result. With no model and no dataset they run on the embedded tiny LLaMA and its
//! arithmetic word problems.
//!
//! ```no_run
//! use secateur_models::CpuAutodiff;
//! use secateur_pipelines::{Quiet, ShearsConfig, shears};
//!
//! let config = ShearsConfig { epochs: 1, out: Some("runs/example".into()), ..Default::default() };
//! let result = shears::<CpuAutodiff>(&config, &Default::default(), &Quiet)?;
//! println!("{}", result.table);
//! # Ok::<(), secateur_pipelines::PipelineError>(())
//! ```

mod config;
mod nas;
mod search;
mod shears;
mod sqft;

use std::path::PathBuf;

pub use config::{NOT_RESULTS, ShearsConfig, Task, base_spec, check_ranks_fit, load_task};
pub use nas::{Metric, NasConfig, NasResult, NasRow, NasStrategy, Objective, nas};
pub use search::{Algo, Chosen, SearchConfig, SearchObjective, SearchResult, parse_points, search};
pub use shears::{LoadedRun, Row, ShearsResult, load_run, shears};
pub use sqft::{Pipeline, QuantMethod, SqftConfig, SqftResult, SqftRow, check_quant, sqft};

/// Errors of the pipelines: a setting out of range, a bad input file, or a failure of one of the
/// stages (each keeps its source).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A setting that cannot work, named as on the command line (`--ranks`, `--sparsity`).
    #[error("{0}")]
    Usage(String),
    /// An input file that cannot be used, with why.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error(transparent)]
    Sparsity(#[from] secateur_sparsity::SparsityError),
    #[error(transparent)]
    Lora(#[from] secateur_elastic_lora::LoraError),
    #[error(transparent)]
    Quant(#[from] secateur_quant::QuantError),
    #[error(transparent)]
    Train(#[from] secateur_supernet::TrainError),
    #[error(transparent)]
    Search(#[from] secateur_search::SearchError),
    #[error(transparent)]
    Run(#[from] secateur_runs::RunError),
    #[error(transparent)]
    Eval(#[from] secateur_eval::EvalError),
}

/// Where a pipeline tells what it is doing.
pub trait Reporter: Sync {
    /// One line about a finished stage or a result (`wanda: sparsity 0.500 in 1.2s`).
    fn line(&self, text: &str);
    /// Whether training, pruning and evaluation draw progress bars on stderr (indicatif on a
    /// terminal, plain periodic lines otherwise).
    fn bars(&self) -> bool;
}

/// Reports nothing.
pub struct Quiet;

impl Reporter for Quiet {
    fn line(&self, _: &str) {}
    fn bars(&self) -> bool {
        false
    }
}

/// Reports on stderr, with progress bars (what the `secateur` tool uses).
pub struct Stderr;

impl Reporter for Stderr {
    fn line(&self, text: &str) {
        eprintln!("{text}");
    }
    fn bars(&self) -> bool {
        true
    }
}

/// The default values of a clap-derived config (its `default_value`s are the one source of
/// truth), with `args` given on top (e.g. a required `--run DIR`).
pub(crate) fn clap_defaults<T: clap::Args + clap::FromArgMatches>(args: &[&str]) -> T {
    let cmd = T::augment_args(clap::Command::new("secateur").no_binary_name(true));
    let matches = cmd.try_get_matches_from(args).expect("the defaults of a config parse");
    T::from_arg_matches(&matches).expect("the defaults of a config parse")
}
