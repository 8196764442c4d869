//! Hill climbing and random search.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::evaluator::{Evaluated, Evaluator};
use crate::operators::random_solution;
use crate::pareto::pareto_front;
use crate::problem::{Problem, Variable, heuristic};

/// Scalarisation of the objectives for hill climbing: `Σ w_k f_k`, ties broken by the
/// objectives in order (lexicographically). The default weights `[1, 0, ...]` climb on the first
/// objective alone (e.g. validation error) and use the others (e.g. MACs) only to break ties.
/// A failed evaluation scores `+inf`.
pub fn scalarise(f: &[f64], weights: &[f64]) -> f64 {
    f.iter().zip(weights).map(|(v, w)| if *w == 0.0 { 0.0 } else { v * w }).sum()
}

fn better(a: &[f64], b: &[f64], w: &[f64]) -> bool {
    let (sa, sb) = (scalarise(a, w), scalarise(b, w));
    if sa != sb {
        return sa < sb;
    }
    a.iter().zip(b).find(|(x, y)| x != y).is_some_and(|(x, y)| x < y)
}

/// Hill climbing (Shears): from a start configuration, evaluate every neighbour (one choice
/// variable one index up or down), move to the best if it beats the current one, and stop when
/// none does or the budget is spent. Returns the best configuration seen, never a worse one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HillClimb {
    /// Start configuration (`None`: the heuristic, index `floor(n/2)` of every variable).
    pub start: Option<Vec<f64>>,
    pub weights: Option<Vec<f64>>,
}

/// Outcome of a local search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalResult {
    pub best: Evaluated,
    /// The configurations the climb moved through.
    pub path: Vec<Vec<f64>>,
    pub front: Vec<Evaluated>,
    pub evaluations: usize,
}

fn neighbours(vars: &[Variable], x: &[f64]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        if let Variable::Choice { n } = *v {
            for step in [-1.0, 1.0] {
                let y = x[i] + step;
                if y >= 0.0 && y < n as f64 {
                    let mut z = x.to_vec();
                    z[i] = y;
                    out.push(z);
                }
            }
        }
    }
    out
}

fn front_of(all: &[Evaluated], k: usize) -> Vec<Evaluated> {
    let pts: Vec<Vec<f64>> = all.iter().map(|e| e.objectives(k)).collect();
    pareto_front(&pts).into_iter().map(|i| all[i].clone()).collect()
}

impl HillClimb {
    pub fn run<P: Problem>(&self, ev: &mut Evaluator<P>, budget: usize) -> Result<LocalResult, SearchError> {
        let vars = ev.problem().variables().to_vec();
        let k = ev.problem().n_objectives();
        if budget == 0 {
            return Err(SearchError::Config("a budget of 0 evaluations".into()));
        }
        if vars.iter().any(|v| matches!(v, Variable::Real { .. })) {
            return Err(SearchError::Config("hill climbing steps between neighbouring choices: it needs choice variables, and this problem has real ones (use nsga2, rnsga2 or random)".into()));
        }
        let w = self.weights.clone().unwrap_or_else(|| {
            let mut w = vec![0.0; k];
            w[0] = 1.0;
            w
        });
        let start = self.start.clone().unwrap_or_else(|| heuristic(&vars));
        let mut asked: HashSet<Vec<u64>> = HashSet::new();
        let bits = |x: &[f64]| -> Vec<u64> { x.iter().map(|v| v.to_bits()).collect() };
        asked.insert(bits(&start));
        let mut all = ev.evaluate(std::slice::from_ref(&start))?;
        let mut current = all[0].clone();
        let mut best = current.clone();
        let mut path = vec![start];
        loop {
            let room = budget.saturating_sub(asked.len());
            let cand: Vec<Vec<f64>> = neighbours(&vars, &current.x).into_iter().filter(|x| !asked.contains(&bits(x))).take(room).collect();
            if cand.is_empty() {
                break;
            }
            for c in &cand {
                asked.insert(bits(c));
            }
            let results = ev.evaluate(&cand)?;
            all.extend(results.iter().cloned());
            let step =
                results.into_iter().reduce(|a, b| if better(&b.objectives(k), &a.objectives(k), &w) { b } else { a }).expect("candidates");
            if better(&step.objectives(k), &best.objectives(k), &w) {
                best = step.clone();
            }
            if better(&step.objectives(k), &current.objectives(k), &w) {
                path.push(step.x.clone());
                current = step;
            } else {
                break;
            }
        }
        Ok(LocalResult { best, path, front: front_of(&all, k), evaluations: asked.len() })
    }
}

/// Uniform random sampling of distinct configurations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomSearch {
    pub seed: u64,
}

impl RandomSearch {
    pub fn run<P: Problem>(&self, ev: &mut Evaluator<P>, budget: usize) -> Result<LocalResult, SearchError> {
        let vars = ev.problem().variables().to_vec();
        let k = ev.problem().n_objectives();
        if budget == 0 {
            return Err(SearchError::Config("a budget of 0 evaluations".into()));
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut seen = HashSet::new();
        let mut xs = Vec::new();
        let mut tries = 0;
        while xs.len() < budget && tries < 100 * budget.max(1) {
            tries += 1;
            let x = random_solution(&vars, &mut rng);
            if seen.insert(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()) {
                xs.push(x);
            }
        }
        let all = ev.evaluate(&xs)?;
        let w = {
            let mut w = vec![0.0; k];
            w[0] = 1.0;
            w
        };
        let best = all
            .iter()
            .cloned()
            .reduce(|a, b| if better(&b.objectives(k), &a.objectives(k), &w) { b } else { a })
            .ok_or_else(|| SearchError::Config("empty budget".into()))?;
        Ok(LocalResult { best, path: Vec::new(), front: front_of(&all, k), evaluations: xs.len() })
    }
}
