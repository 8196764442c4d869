//! Standard test problems with known optimal fronts.

use std::f64::consts::PI;

use crate::problem::{Problem, Variable};

/// A benchmark problem by name.
#[derive(Debug, Clone)]
pub struct Benchmark {
    pub name: &'static str,
    vars: Vec<Variable>,
    m: usize,
    /// Levels of the discrete variant (choice index / (levels - 1) is the real value).
    levels: Option<usize>,
}

impl Benchmark {
    /// `zdt1`, `zdt2`, `zdt3` (30 variables), `dtlz2` (3 objectives, 12 variables), or
    /// `zdt1-discrete` (30 choice variables of 21 levels each).
    pub fn by_name(name: &str) -> Option<Self> {
        let real = |n: usize| vec![Variable::Real { lo: 0.0, hi: 1.0 }; n];
        Some(match name {
            "zdt1" => Self { name: "zdt1", vars: real(30), m: 2, levels: None },
            "zdt2" => Self { name: "zdt2", vars: real(30), m: 2, levels: None },
            "zdt3" => Self { name: "zdt3", vars: real(30), m: 2, levels: None },
            "dtlz2" => Self { name: "dtlz2", vars: real(12), m: 3, levels: None },
            "zdt1-discrete" => Self { name: "zdt1-discrete", vars: vec![Variable::Choice { n: 21 }; 30], m: 2, levels: Some(21) },
            _ => return None,
        })
    }

    /// Hypervolume of the exact (continuous) optimal front for the reference point 1.1 in every
    /// objective. pymoo's figures (0.8714, 0.5383, 1.3291, ~0.745) are those of its sampled
    /// fronts of 100 (ZDT) or a few hundred (DTLZ2) points, hence slightly lower.
    pub fn optimal_hypervolume(&self) -> f64 {
        match self.name {
            "zdt1" | "zdt1-discrete" => 1.21 - 1.0 + 2.0 / 3.0, // ∫(1.1 - 1 + √x) + 0.1·1.1
            "zdt2" => 1.21 - 1.0 + 1.0 / 3.0,
            "zdt3" => 1.331_758,         // numerically, 200,001 points
            "dtlz2" => 1.331 - PI / 6.0, // 1.1³ minus the unit-sphere octant
            _ => f64::NAN,
        }
    }

    fn zdt_g(x: &[f64]) -> f64 {
        1.0 + 9.0 * x[1..].iter().sum::<f64>() / (x.len() - 1) as f64
    }
}

impl Problem for Benchmark {
    fn variables(&self) -> &[Variable] {
        &self.vars
    }
    fn n_objectives(&self) -> usize {
        self.m
    }
    /// A benchmark evaluation takes well under a microsecond: threads would cost more than it.
    fn parallel(&self) -> bool {
        false
    }
    fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String> {
        let owned: Vec<f64>;
        let x = match self.levels {
            Some(l) => {
                owned = x.iter().map(|i| i / (l - 1) as f64).collect();
                &owned[..]
            }
            None => x,
        };
        Ok(match self.name {
            "zdt1" | "zdt1-discrete" => {
                let g = Self::zdt_g(x);
                vec![x[0], g * (1.0 - (x[0] / g).sqrt())]
            }
            "zdt2" => {
                let g = Self::zdt_g(x);
                vec![x[0], g * (1.0 - (x[0] / g).powi(2))]
            }
            "zdt3" => {
                let g = Self::zdt_g(x);
                let h = 1.0 - (x[0] / g).sqrt() - (x[0] / g) * (10.0 * PI * x[0]).sin();
                vec![x[0], g * h]
            }
            "dtlz2" => {
                let m = self.m;
                let g: f64 = x[m - 1..].iter().map(|v| (v - 0.5).powi(2)).sum();
                (0..m)
                    .map(|i| {
                        let mut f = 1.0 + g;
                        for v in &x[..m - 1 - i] {
                            f *= (v * PI / 2.0).cos();
                        }
                        if i > 0 {
                            f *= (x[m - 1 - i] * PI / 2.0).sin();
                        }
                        f
                    })
                    .collect()
            }
            other => return Err(format!("unknown benchmark {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervolume::hypervolume;

    #[test]
    fn optimal_fronts_reach_the_known_hypervolumes() {
        for name in ["zdt1", "zdt2", "zdt3"] {
            let b = Benchmark::by_name(name).unwrap();
            // Points on the optimal front: x2..xn = 0.
            let pts: Vec<Vec<f64>> = (0..=4000)
                .map(|i| {
                    let mut x = vec![0.0; 30];
                    x[0] = i as f64 / 4000.0;
                    b.evaluate(&x).unwrap()
                })
                .collect();
            let hv = hypervolume(&pts, &[1.1, 1.1]);
            assert!((hv - b.optimal_hypervolume()).abs() < 1e-3, "{name}: {hv}");
        }
        let d = Benchmark::by_name("dtlz2").unwrap();
        let f = d.evaluate(&[0.3, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]).unwrap();
        assert!((f.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-12, "on the unit sphere");
    }
}
