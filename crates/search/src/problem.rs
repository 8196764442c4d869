//! Problems: variables and objectives.

use serde::{Deserialize, Serialize};

/// One decision variable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Variable {
    /// An index into `n` choices, `0..n` (index 0 is the largest choice for sub-network spaces).
    Choice { n: usize },
    /// A real in `[lo, hi]`.
    Real { lo: f64, hi: f64 },
}

impl Variable {
    /// Lower and upper bounds as reals (`[0, n-1]` for choices).
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Self::Choice { n } => (0.0, n.saturating_sub(1) as f64),
            Self::Real { lo, hi } => (lo, hi),
        }
    }

    pub fn is_choice(&self) -> bool {
        matches!(self, Self::Choice { .. })
    }
}

/// A minimisation problem with `n_objectives()` objectives.
///
/// A solution is a `Vec<f64>`: choice variables hold their index as an exact integer.
pub trait Problem: Sync {
    fn variables(&self) -> &[Variable];
    fn n_objectives(&self) -> usize;
    /// Objective values of `x`, or why it could not be evaluated.
    fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String>;
    /// Whether `evaluate` may run on several threads at once.
    fn parallel(&self) -> bool {
        true
    }
    /// Names of the objectives (for reports and plots).
    fn objective_names(&self) -> Vec<String> {
        (0..self.n_objectives()).map(|i| format!("f{}", i + 1)).collect()
    }
}

/// Every choice variable at index 0 (the largest sub-network).
pub fn maximal(vars: &[Variable]) -> Vec<f64> {
    vars.iter().map(|v| v.bounds().0).collect()
}

/// Every choice variable at its last index (the smallest sub-network).
pub fn minimal(vars: &[Variable]) -> Vec<f64> {
    vars.iter().map(|v| v.bounds().1).collect()
}

/// Index `floor(n/2)` of every choice variable (Shears' heuristic), the midpoint of reals.
pub fn heuristic(vars: &[Variable]) -> Vec<f64> {
    vars.iter()
        .map(|v| match *v {
            Variable::Choice { n } => (n / 2) as f64,
            Variable::Real { lo, hi } => 0.5 * (lo + hi),
        })
        .collect()
}
