//! Scores and mask selection.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How weights are scored (lower scores are pruned first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreMethod {
    /// `|W_ij| * ||X_j||_2` (Sun et al., 2023).
    Wanda,
    /// `|W_ij|`.
    Magnitude,
}

/// Which weights are compared with each other.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Pattern {
    /// Zero the `floor(in * ratio)` lowest-scored weights of every output row.
    Unstructured { ratio: f64 },
    /// In every group of `m` consecutive inputs of a row, keep the `n` highest-scored.
    NM { n: usize, m: usize },
}

impl Pattern {
    /// Parses `N:M` (e.g. `2:4`).
    pub fn parse_nm(s: &str) -> Option<Self> {
        let (n, m) = s.split_once(':')?;
        let (n, m) = (n.trim().parse().ok()?, m.trim().parse().ok()?);
        (n > 0 && n < m).then_some(Self::NM { n, m })
    }

    /// Checks the pattern against a row width.
    pub fn validate(&self, in_features: usize) -> Result<(), String> {
        match *self {
            Self::Unstructured { ratio } if !(0.0..1.0).contains(&ratio) => Err(format!("sparsity ratio {ratio} must be in [0, 1)")),
            Self::NM { n, m } if n == 0 || n >= m => Err(format!("{n}:{m} must keep 0 < N < M")),
            Self::NM { m, .. } if !in_features.is_multiple_of(m) => {
                Err(format!("{in_features} input features are not divisible into groups of {m}"))
            }
            _ => Ok(()),
        }
    }
}

/// Scores of a `[out, in]` weight: Wanda when `sq_norms` (the squared L2 norm of each input
/// feature over the calibration tokens) is given, magnitude otherwise. Computed in f64 so that
/// scores of different weights do not tie by rounding.
pub fn scores(weight: &[f32], in_features: usize, sq_norms: Option<&[f64]>) -> Vec<f64> {
    match sq_norms {
        Some(sq) => {
            let norms: Vec<f64> = sq.iter().map(|s| s.sqrt()).collect();
            weight.par_iter().enumerate().map(|(i, w)| (*w as f64).abs() * norms[i % in_features]).collect()
        }
        None => weight.iter().map(|w| (*w as f64).abs()).collect(),
    }
}

/// The keep-mask (true = kept) of `[out, in]` scores. Ties are broken like PyTorch's stable sort:
/// among equal scores, the lower input index is pruned first.
pub fn select_mask(scores: &[f64], in_features: usize, pattern: Pattern) -> Vec<bool> {
    let mut keep = vec![true; scores.len()];
    match pattern {
        Pattern::Unstructured { ratio } => {
            let k = (in_features as f64 * ratio).floor() as usize;
            if k == 0 {
                return keep;
            }
            // Rows in parallel (each row's selection is its own).
            scores.par_chunks(in_features).zip(keep.par_chunks_mut(in_features)).for_each_init(
                || (0..in_features).collect::<Vec<usize>>(),
                |order, (row, kept)| {
                    order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
                    // The k smallest under (score, index): what a stable sort's first k are,
                    // found in linear time.
                    order.select_nth_unstable_by(k - 1, |&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
                    for &j in &order[..k] {
                        kept[j] = false;
                    }
                },
            );
        }
        Pattern::NM { n, m } => {
            let mut order: Vec<usize> = (0..m).collect();
            for (group, kept) in scores.chunks(m).zip(keep.chunks_mut(m)) {
                order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
                order.sort_by(|&a, &b| group[a].total_cmp(&group[b]));
                for &j in &order[..m - n] {
                    kept[j] = false;
                }
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstructured_prunes_floor_of_ratio_per_row() {
        let s = [0.5, 0.1, 0.9, 0.3, /* row 2 */ 4.0, 3.0, 2.0, 1.0];
        let keep = select_mask(&s, 4, Pattern::Unstructured { ratio: 0.6 });
        // floor(4 * 0.6) = 2 pruned per row.
        assert_eq!(keep, [true, false, true, false, true, true, false, false]);
    }

    #[test]
    fn ties_prune_the_lower_index_first() {
        let keep = select_mask(&[1.0, 1.0, 1.0, 1.0], 4, Pattern::Unstructured { ratio: 0.5 });
        assert_eq!(keep, [false, false, true, true]);
    }

    #[test]
    fn n_m_keeps_n_per_group() {
        let s = [1.0, 4.0, 3.0, 2.0, 8.0, 5.0, 6.0, 7.0];
        let keep = select_mask(&s, 8, Pattern::NM { n: 2, m: 4 });
        assert_eq!(keep, [false, true, true, false, true, false, false, true]);
        let keep = select_mask(&s, 8, Pattern::NM { n: 4, m: 8 });
        assert_eq!(keep.iter().filter(|k| **k).count(), 4);
        assert_eq!(keep, [false, false, false, false, true, true, true, true]);
    }

    #[test]
    fn wanda_scales_columns_by_input_norm() {
        let w = [1.0f32, -1.0, 2.0, 0.5];
        let s = scores(&w, 2, Some(&[4.0, 1.0]));
        assert_eq!(s, vec![2.0, 1.0, 4.0, 0.5]);
        assert_eq!(scores(&w, 2, None), vec![1.0, 1.0, 2.0, 0.5]);
    }

    #[test]
    fn patterns_validate() {
        assert!(Pattern::Unstructured { ratio: 1.0 }.validate(8).is_err());
        assert!(Pattern::NM { n: 2, m: 4 }.validate(6).is_err());
        assert_eq!(Pattern::parse_nm("2:4"), Some(Pattern::NM { n: 2, m: 4 }));
        assert_eq!(Pattern::parse_nm("4:4"), None);
    }
}
