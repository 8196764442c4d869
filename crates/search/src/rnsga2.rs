//! R-NSGA-II (Deb and Sundar 2006): NSGA-II whose crowding distance is replaced by the distance
//! to user-given reference points, with epsilon clearing, on normalised objectives.

use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::evaluator::Evaluator;
use crate::nsga2::{Nsga2, SearchResult, Survival};
use crate::operators::Variation;
use crate::problem::Problem;

/// R-NSGA-II settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RNsga2 {
    pub pop_size: usize,
    /// Reference points in objective space.
    pub ref_points: Vec<Vec<f64>>,
    /// Clearing radius in normalised objective space (reference default 0.001).
    pub epsilon: f64,
    pub weights: Option<Vec<f64>>,
    pub variation: Variation,
    pub seed: u64,
}

impl RNsga2 {
    pub fn new(pop_size: usize, ref_points: Vec<Vec<f64>>, seed: u64) -> Self {
        Self { pop_size, ref_points, epsilon: 0.001, weights: None, variation: Variation::default(), seed }
    }

    pub fn run<P: Problem>(&self, ev: &mut Evaluator<P>, budget: usize) -> Result<SearchResult, SearchError> {
        let k = ev.problem().n_objectives();
        if self.ref_points.is_empty() || self.ref_points.iter().any(|r| r.len() != k) {
            return Err(SearchError::Config(format!("R-NSGA-II needs reference points of {k} objectives")));
        }
        Nsga2 {
            pop_size: self.pop_size,
            variation: self.variation.clone(),
            seed: self.seed,
            survival: Survival::Reference { points: self.ref_points.clone(), epsilon: self.epsilon, weights: self.weights.clone() },
            archive_front: true,
        }
        .run(ev, budget)
    }
}
