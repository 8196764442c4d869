//! Multi-objective search over sub-network configurations, in pure Rust (no burn).
//!
//! - [`Problem`]: variables that are either an index into a list of choices (adapter ranks,
//!   sub-network widths) or a bounded real (benchmark problems); `k` objectives, all minimised;
//!   an evaluation may fail (recorded, never a panic).
//! - [`Evaluator`]: every evaluation goes through a cache keyed by the configuration, persisted
//!   as JSON lines (each appended as it finishes, under a first line that records what defines
//!   the evaluation), so that a killed search resumes without repeating evaluations; parallel
//!   evaluation (rayon) gives the same results as serial.
//! - Algorithms, seeded and deterministic: [`nsga2::Nsga2`], [`rnsga2::RNsga2`],
//!   [`local::HillClimb`], [`local::RandomSearch`], and the maximal / minimal / heuristic configs.
//! - [`pareto`]: fast non-dominated sorting, crowding distance, front extraction;
//!   [`hypervolume`]: exact in 2 and 3 objectives, exact recursive slicing beyond.
//! - [`benchmarks`]: ZDT1-3, DTLZ2 and a discrete ZDT1; [`report`]: JSON, CSV and SVG output.

pub mod benchmarks;
pub mod evaluator;
pub mod hypervolume;
pub mod local;
pub mod nsga2;
pub mod operators;
pub mod pareto;
pub mod problem;
pub mod report;
pub mod rnsga2;

pub use evaluator::{Evaluated, Evaluator};
pub use problem::{Problem, Variable};

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {reason}")]
    Cache { path: std::path::PathBuf, line: usize, reason: String },
    /// A persisted cache made for another evaluation (other objectives, split, model or space).
    #[error("{path} holds evaluations of another search ({diffs}); delete it or search into another run")]
    CacheMismatch { path: std::path::PathBuf, diffs: String },
    #[error(transparent)]
    Run(#[from] secateur_runs::RunError),
    #[error("invalid search setting: {0}")]
    Config(String),
}
