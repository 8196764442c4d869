//! The evaluation cache: no configuration is evaluated twice, and the cache persists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::problem::Problem;

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
    /// Whether the persisted cache ended in a partial line (a kill mid-append), now dropped.
    pub dropped_partial_line: bool,
    persist: Option<PathBuf>,
}

/// The first line of a persisted cache: what defines its evaluations.
#[derive(Serialize, Deserialize)]
struct Header {
    context: serde_json::Value,
}

impl<'a, P: Problem> Evaluator<'a, P> {
    /// An in-memory cache.
    pub fn new(problem: &'a P) -> Self {
        Self { problem, cache: HashMap::new(), history: Vec::new(), hits: 0, loaded: 0, dropped_partial_line: false, persist: None }
    }

    /// A cache persisted as JSON lines at `path`; existing lines are loaded first, so a search
    /// restarted on the same file repeats no evaluation. `context` is everything that defines an
    /// evaluation besides the configuration (objectives, data split, model, search space): it is
    /// the file's first line, and a file written under another context is an error naming the
    /// fields that differ. A partial last line (a kill during an append) is dropped.
    pub fn persistent(problem: &'a P, path: &Path, context: &serde_json::Value) -> Result<Self, SearchError> {
        let mut ev = Self::new(problem);
        let (lines, partial) = secateur_runs::read_jsonl::<serde_json::Value>(path)?;
        if let Some(offset) = partial {
            secateur_runs::truncate_jsonl(path, offset)?;
            ev.dropped_partial_line = true;
        }
        let mut lines = lines.into_iter();
        match lines.next() {
            None => secateur_runs::append_jsonl(path, &Header { context: context.clone() })?,
            Some(first) => {
                let header: Header = serde_json::from_value(first).map_err(|_| SearchError::Cache {
                    path: path.to_path_buf(),
                    line: 1,
                    reason: "no evaluation context (a cache from an older secateur?): delete it".into(),
                })?;
                let diffs = differences(&header.context, context);
                if !diffs.is_empty() {
                    return Err(SearchError::CacheMismatch { path: path.to_path_buf(), diffs: diffs.join("; ") });
                }
            }
        }
        for (i, line) in lines.enumerate() {
            let bad = |reason: String| SearchError::Cache { path: path.to_path_buf(), line: i + 2, reason };
            let e: Evaluated = serde_json::from_value(line).map_err(|e| bad(e.to_string()))?;
            if e.x.len() != problem.variables().len() {
                return Err(bad(format!("{} variables, the problem has {}", e.x.len(), problem.variables().len())));
            }
            if !ev.contains(&e.x) {
                ev.insert(e);
            }
        }
        ev.loaded = ev.history.len();
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
        // Each result is appended as soon as it exists: a kill repeats no finished evaluation.
        let sink = Mutex::new(Ok::<(), SearchError>(()));
        let run = |x: &Vec<f64>| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| problem.evaluate(x)))
                .unwrap_or_else(|_| Err("the evaluation panicked".to_string()));
            let e = match r {
                Ok(f) if f.len() == problem.n_objectives() && f.iter().all(|v| !v.is_nan()) => {
                    Evaluated { x: x.clone(), f: Some(f), error: None }
                }
                Ok(f) => Evaluated { x: x.clone(), f: None, error: Some(format!("{} objective values (NaN or wrong count)", f.len())) },
                Err(e) => Evaluated { x: x.clone(), f: None, error: Some(e) },
            };
            if let Some(path) = &self.persist
                && let Ok(mut status) = sink.lock()
                && status.is_ok()
            {
                *status = secateur_runs::append_jsonl(path, &e).map_err(SearchError::from);
            }
            e
        };
        let results: Vec<Evaluated> =
            if problem.parallel() && todo.len() > 1 { todo.par_iter().map(run).collect() } else { todo.iter().map(run).collect() };
        sink.into_inner().unwrap_or(Ok(()))?;
        for r in results {
            self.insert(r);
        }
        Ok(xs.iter().map(|x| self.history[self.cache[&key(x)]].clone()).collect())
    }
}

/// The fields of two contexts that differ, as `name: cached A, now B`.
fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter_map(|k| {
                    let (x, y) = (a.get(k).unwrap_or(&serde_json::Value::Null), b.get(k).unwrap_or(&serde_json::Value::Null));
                    (x != y).then(|| format!("{k}: cached {x}, now {y}"))
                })
                .collect()
        }
        _ if old != new => vec![format!("cached {old}, now {new}")],
        _ => Vec::new(),
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
        let ctx = serde_json::json!({"objectives": ["accuracy", "macs"]});
        let mut ev = Evaluator::persistent(&p, &path, &ctx).unwrap();
        let r = ev.evaluate(&[vec![1.0, 2.0], vec![3.0, 0.0], vec![1.0, 2.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        assert_eq!(r[0].f, Some(vec![1.0, -2.0]));
        assert_eq!(r[1].error.as_deref(), Some("index 3 is broken"));
        assert_eq!(r[2], r[0]);
        ev.evaluate(&[vec![1.0, 2.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
        assert_eq!(ev.hits, 2);
        // A new evaluator on the same file repeats nothing.
        let mut again = Evaluator::persistent(&p, &path, &ctx).unwrap();
        assert_eq!(again.loaded, 2);
        again.evaluate(&[vec![3.0, 0.0], vec![0.0, 0.0]]).unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);
        drop(again);
        // Other objectives: the cached values are not theirs.
        let other = serde_json::json!({"objectives": ["accuracy", "params"]});
        let e = Evaluator::persistent(&p, &path, &other).err().unwrap().to_string();
        assert!(e.contains("objectives: cached"), "{e}");
        // A kill mid-append leaves a partial last line: dropped, and the rest resumes.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"x\": [2.0, 1");
        std::fs::write(&path, &bytes).unwrap();
        let resumed = Evaluator::persistent(&p, &path, &ctx).unwrap();
        assert!(resumed.dropped_partial_line);
        assert_eq!(resumed.loaded, 3);
        drop(resumed);
        std::fs::write(&path, "{not json\n").unwrap();
        assert!(matches!(Evaluator::persistent(&p, &path, &ctx), Err(SearchError::Run(_))));
    }
}
