//! Variation operators: SBX crossover and polynomial mutation (Deb; bounded forms as in pymoo),
//! with rounding for choice variables, and the alternative uniform crossover with ±1-step
//! mutation for choice variables.

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::problem::Variable;

/// How choice (integer) variables are varied; reals always use SBX + polynomial mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegerVariation {
    /// SBX and polynomial mutation on the relaxed index, rounded (the reference code's choice).
    SbxRound,
    /// Uniform crossover and a ±1-index mutation step.
    UniformStep,
}

/// Operator parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Variation {
    /// Probability that a pair of parents is crossed over.
    pub crossover_prob: f64,
    /// Probability that a variable takes part in a crossover (pymoo: 0.5).
    pub crossover_var_prob: f64,
    pub sbx_eta: f64,
    /// Per-variable mutation probability (`None`: 1 / number of variables).
    pub mutation_prob: Option<f64>,
    pub pm_eta: f64,
    pub integer: IntegerVariation,
}

impl Default for Variation {
    /// pymoo's NSGA-II defaults: SBX(eta 15, p 0.9), PM(eta 20, p 1/n); choice variables with
    /// the same operators rounded (measured better than uniform crossover with ±1 steps on the
    /// discrete benchmark: see the `discrete_operator_choice` test and the note in `nsga2`).
    fn default() -> Self {
        Self {
            crossover_prob: 0.9,
            crossover_var_prob: 0.5,
            sbx_eta: 15.0,
            mutation_prob: None,
            pm_eta: 20.0,
            integer: IntegerVariation::SbxRound,
        }
    }
}

fn sbx_pair(y1: f64, y2: f64, lo: f64, hi: f64, eta: f64, rng: &mut StdRng) -> (f64, f64) {
    let (a, b) = if y1 < y2 { (y1, y2) } else { (y2, y1) };
    if b - a < 1e-14 {
        return (y1, y2);
    }
    let u: f64 = rng.random();
    let betaq = |beta: f64| {
        let alpha = 2.0 - beta.powf(-(eta + 1.0));
        if u <= 1.0 / alpha { (u * alpha).powf(1.0 / (eta + 1.0)) } else { (1.0 / (2.0 - u * alpha)).powf(1.0 / (eta + 1.0)) }
    };
    let b1 = betaq(1.0 + 2.0 * (a - lo) / (b - a));
    let c1 = 0.5 * ((a + b) - b1 * (b - a));
    let b2 = betaq(1.0 + 2.0 * (hi - b) / (b - a));
    let c2 = 0.5 * ((a + b) + b2 * (b - a));
    let (c1, c2) = (c1.clamp(lo, hi), c2.clamp(lo, hi));
    if rng.random_bool(0.5) { (c2, c1) } else { (c1, c2) }
}

fn polynomial(y: f64, lo: f64, hi: f64, eta: f64, rng: &mut StdRng) -> f64 {
    if hi <= lo {
        return y;
    }
    let (d1, d2) = ((y - lo) / (hi - lo), (hi - y) / (hi - lo));
    let pow = 1.0 / (eta + 1.0);
    let u: f64 = rng.random();
    let dq = if u <= 0.5 {
        let val = 2.0 * u + (1.0 - 2.0 * u) * (1.0 - d1).powf(eta + 1.0);
        val.powf(pow) - 1.0
    } else {
        let val = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * (1.0 - d2).powf(eta + 1.0);
        1.0 - val.powf(pow)
    };
    (y + dq * (hi - lo)).clamp(lo, hi)
}

impl Variation {
    /// Two children of two parents.
    pub fn crossover(&self, vars: &[Variable], p1: &[f64], p2: &[f64], rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
        let (mut c1, mut c2) = (p1.to_vec(), p2.to_vec());
        if !rng.random_bool(self.crossover_prob) {
            return (c1, c2);
        }
        for (i, v) in vars.iter().enumerate() {
            let (lo, hi) = v.bounds();
            match (v, self.integer) {
                (Variable::Choice { .. }, IntegerVariation::UniformStep) => {
                    if rng.random_bool(0.5) {
                        std::mem::swap(&mut c1[i], &mut c2[i]);
                    }
                }
                _ => {
                    if rng.random_bool(self.crossover_var_prob) {
                        let (a, b) = sbx_pair(p1[i], p2[i], lo, hi, self.sbx_eta, rng);
                        c1[i] = a;
                        c2[i] = b;
                    }
                }
            }
            if v.is_choice() {
                c1[i] = c1[i].round().clamp(lo, hi);
                c2[i] = c2[i].round().clamp(lo, hi);
            }
        }
        (c1, c2)
    }

    /// Mutates `x` in place.
    pub fn mutate(&self, vars: &[Variable], x: &mut [f64], rng: &mut StdRng) {
        let p = self.mutation_prob.unwrap_or(1.0 / vars.len().max(1) as f64);
        for (i, v) in vars.iter().enumerate() {
            if !rng.random_bool(p.clamp(0.0, 1.0)) {
                continue;
            }
            let (lo, hi) = v.bounds();
            x[i] = match (v, self.integer) {
                (Variable::Choice { .. }, IntegerVariation::UniformStep) => {
                    let step = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    let y = x[i] + step;
                    if y < lo || y > hi { x[i] - step } else { y }
                }
                _ => polynomial(x[i], lo, hi, self.pm_eta, rng),
            };
            if v.is_choice() {
                x[i] = x[i].round().clamp(lo, hi);
            }
        }
    }
}

/// A uniformly random solution.
pub fn random_solution(vars: &[Variable], rng: &mut StdRng) -> Vec<f64> {
    vars.iter()
        .map(|v| match *v {
            Variable::Choice { n } => rng.random_range(0..n.max(1)) as f64,
            Variable::Real { lo, hi } => rng.random_range(lo..=hi),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn children_stay_in_bounds_and_integers_stay_integers() {
        let vars = vec![Variable::Real { lo: 0.0, hi: 1.0 }, Variable::Choice { n: 5 }, Variable::Choice { n: 2 }];
        let mut rng = StdRng::seed_from_u64(0);
        for integer in [IntegerVariation::SbxRound, IntegerVariation::UniformStep] {
            let v = Variation { integer, mutation_prob: Some(0.5), ..Default::default() };
            for _ in 0..2000 {
                let a = random_solution(&vars, &mut rng);
                let b = random_solution(&vars, &mut rng);
                let (mut c, d) = v.crossover(&vars, &a, &b, &mut rng);
                v.mutate(&vars, &mut c, &mut rng);
                for x in [&c, &d] {
                    assert!((0.0..=1.0).contains(&x[0]));
                    assert!(x[1].fract() == 0.0 && (0.0..=4.0).contains(&x[1]));
                    assert!(x[2] == 0.0 || x[2] == 1.0);
                }
            }
        }
    }

    #[test]
    fn step_mutation_moves_one_index() {
        let vars = vec![Variable::Choice { n: 5 }];
        let v = Variation { mutation_prob: Some(1.0), integer: IntegerVariation::UniformStep, ..Default::default() };
        let mut rng = StdRng::seed_from_u64(1);
        for start in 0..5 {
            let mut x = vec![start as f64];
            v.mutate(&vars, &mut x, &mut rng);
            assert_eq!((x[0] - start as f64).abs(), 1.0);
        }
    }
}
