//! The evaluation cache: no configuration is evaluated twice, and the cache persists.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::SearchError;

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    pub x: Vec<f64>,
    /// Objective values, or `None` when the evaluation failed.
    pub f: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Evaluated {
    /// Objectives for ranking: a failed evaluation is worse than everything (`+inf`).
    pub fn objectives(&self, k: usize) -> Vec<f64> {
        self.f.clone().unwrap_or_else(|| vec![f64::INFINITY; k])
    }
}

fn key(x: &[f64]) -> Vec<u64> {
    // -0.0 and 0.0 are the same configuration.
    x.iter().map(|v| if *v == 0.0 { 0 } else { v.to_bits() }).collect()
}

/// Evaluates configurations of a problem through a cache.
pub struct Evaluator<'a, P: Problem> {
    problem: &'a P,
    cache: HashMap<Vec<u64>, usize>,
    /// Every distinct configuration evaluated, in order.
    pub history: Vec<Evaluated>,
    /// Evaluations served from the cache.
    pub hits: usize,
    /// Evaluations loaded from a persisted cache.
    pub loaded: usize,
    persist: Option<PathBuf>,
}

impl<'a, P: Problem> Evaluator<'a, P> {
    /// An in-memory cache.
    pub fn new(problem: &'a P) -> Self {
        Self {
            problem,
            cache: HashMap::new(),
            history: Vec::new(),
            hits: 0,
            loaded: 0,
            persist: None,
        }
    }

    /// A cache persisted as JSON lines at `path`; existing lines are loaded first, so a search
    /// restarted on the same file repeats no evaluation.
    pub fn persistent(problem: &'a P, path: &Path) -> Result<Self, SearchError> {
        let mut ev = Self::new(problem);
        if path.is_file() {
            let file = std::fs::File::open(path).map_err(|source| SearchError::Io { path: path.to_path_buf(), source })?;
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|source| SearchError::Io { path: path.to_path_buf(), source })?;
                if line.trim().is_empty() {
                    continue;
                }
                let e: Evaluated = serde_json::from_str(&line).map_err(|e| SearchError::Cache {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: e.to_string(),
                })?;
                if e.x.len() != problem.variables().len() {
                    return Err(SearchError::Cache {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason: format!("{} variables, the problem has {}", e.x.len(), problem.variables().len()),
                    });
                }
                ev.insert(e);
            }
            ev.loaded = ev.history.len();
        }
        ev.persist = Some(path.to_path_buf());
        Ok(ev)
    }

    pub fn problem(&self) -> &P {
        self.problem
    }

    /// Number of distinct configurations evaluated (including loaded ones).
    pub fn evaluations(&self) -> usize {
        self.history.len()
    }

    /// Whether `x` has been evaluated.
    pub fn contains(&self, x: &[f64]) -> bool {
        self.cache.contains_key(&key(x))
    }

    fn insert(&mut self, e: Evaluated) -> usize {
        let i = self.history.len();
        self.cache.insert(key(&e.x), i);
        self.history.push(e);
        i
    }

    /// Evaluates a batch (in parallel when the problem allows it); returns the results in order.
    /// Configurations already in the cache, or repeated within the batch, are not re-evaluated.
    pub fn evaluate(&mut self, xs: &[Vec<f64>]) -> Result<Vec<Evaluated>, SearchError> {
        let mut todo: Vec<Vec<f64>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for x in xs {
            let k = key(x);
            if self.cache.contains_key(&k) || !seen.insert(k) {
                self.hits += 1;
            } else {
                todo.push(x.clone());
            }
        }
        let problem = self.problem;
        let run = |x: &Vec<f64>| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| problem.evaluate(x)))
                .unwrap_or_else(|_| Err("the evaluation panicked".to_string()));
            match r {
                Ok(f) if f.len() == problem.n_objectives() && f.iter().all(|v| !v.is_nan()) => Evaluated { x: x.clone(), f: Some(f), error: None },
                Ok(f) => Evaluated { x: x.clone(), f: None, error: Some(format!("{} objective values (NaN or wrong count)", f.len())) },
                Err(e) => Evaluated { x: x.clone(), f: None, error: Some(e) },
            }
        };
        let results: Vec<Evaluated> = if problem.parallel() && todo.len() > 1 {
            todo.par_iter().map(run).collect()
        } else {
            todo.iter().map(run).collect()
        };
        if let Some(path) = &self.persist
            && !results.is_empty()
        {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| SearchError::Io { path: path.clone(), source })?;
            let mut text = String::new();
            for r in &results {
                text += &serde_json::to_string(r).expect("JSON");
                text.push('\n');
            }
            file.write_all(text.as_bytes()).map_err(|source| SearchError::Io { path: path.clone(), source })?;
        }
        for r in results {
            self.insert(r);
        }
        Ok(xs.iter().map(|x| self.history[self.cache[&key(x)]].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Variable;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        vars: Vec<Variable>,
        calls: AtomicUsize,
    }

    impl Problem for Counting {
        fn variables(&self) -> &[Variable] {
            &self.vars
        }
        fn n_objectives(&self) -> usize {
            2
        }
        fn evaluate(&self, x: &[f64]) -> Result<Vec<f64>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if x[0] == 3.0 {
                return Err("index 3 is broken".into());
            }
            Ok(vec![x[0], -x[1]])
        }
    }

    #[test]
    fn the_cache_is_hit_and_persisted() {
        let p = Counting { vars: vec![Variable::Choice { n: 4 }, Variable::Choice { n: 3 }], calls: AtomicUsize::new(0) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evals.jsonl");
        let mut ev = Evaluator::persistent(&p, &path).unwrap();
        let r = ev.evaluate(&[vec![1.0, 2.0], vec![3.0, 0.0], vec![1.0, 2.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        assert_eq!(r[0].f, Some(vec![1.0, -2.0]));
        assert_eq!(r[1].error.as_deref(), Some("index 3 is broken"));
        assert_eq!(r[2], r[0]);
        ev.evaluate(&[vec![1.0, 2.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        assert_eq!(ev.hits, 2);
        // A new evaluator on the same file repeats nothing.
        let mut again = Evaluator::persistent(&p, &path).unwrap();
        assert_eq!(again.loaded, 2);
        again.evaluate(&[vec![3.0, 0.0], vec![0.0, 0.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
        std::fs::write(&path, "{not json\n").unwrap();
        assert!(matches!(Evaluator::persistent(&p, &path), Err(SearchError::Cache { line: 1, .. })));
    }
}
