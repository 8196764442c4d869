//! Calibration data: token-id arrays (JSON) or text records (JSONL `{"text": ...}`), sampled
//! into fixed-length windows as the Wanda reference does with C4.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secateur_models::TextTokenizer;

use crate::SparsityError;

/// Calibration documents as read from a file.
#[derive(Debug, Clone)]
pub enum CalibrationSource {
    /// A JSON array of token-id arrays.
    TokenIds(Vec<Vec<u32>>),
    /// JSONL records with a `text` field.
    Texts(Vec<String>),
}

impl CalibrationSource {
    /// Reads a JSON array of token-id arrays, or JSONL records with a `text` field.
    pub fn from_file(path: &Path) -> Result<Self, SparsityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SparsityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| SparsityError::Calibration {
            path: path.to_path_buf(),
            reason,
        };
        if text.trim_start().starts_with('[') {
            let ids: Vec<Vec<u32>> = serde_json::from_str(&text)
                .map_err(|e| bad(format!("expected a JSON array of token-id arrays: {e}")))?;
            if ids.iter().all(Vec::is_empty) {
                return Err(bad("no tokens".into()));
            }
            return Ok(Self::TokenIds(ids));
        }
        let mut texts = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad(format!("line {}: no string field `text`", n + 1)))?;
            texts.push(t.to_string());
        }
        if texts.is_empty() {
            return Err(bad("no records".into()));
        }
        Ok(Self::Texts(texts))
    }

    /// Token ids of every document (texts are tokenized with `tokenizer`).
    pub fn into_token_ids(self, tokenizer: Option<&TextTokenizer>, path: &Path) -> Result<Vec<Vec<u32>>, SparsityError> {
        match self {
            Self::TokenIds(ids) => Ok(ids),
            Self::Texts(texts) => {
                let tok = tokenizer.ok_or_else(|| SparsityError::Calibration {
                    path: path.to_path_buf(),
                    reason: "text calibration data needs the model's tokenizer.json".into(),
                })?;
                texts.iter().map(|t| tok.encode(t).map_err(Into::into)).collect()
            }
        }
    }
}

/// Draws `samples` windows of `seq_len` tokens: a random document longer than `seq_len`, then a
/// random window inside it (the Wanda reference's C4 sampling). When no document is that long,
/// whole documents are drawn instead (and batches are padded). Deterministic for a seed.
pub fn sample_calibration(docs: &[Vec<u32>], samples: usize, seq_len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let long: Vec<&Vec<u32>> = docs.iter().filter(|d| d.len() > seq_len).collect();
    let short: Vec<&Vec<u32>> = docs.iter().filter(|d| !d.is_empty()).collect();
    (0..samples)
        .filter_map(|_| {
            if !long.is_empty() {
                let d = long[rng.random_range(0..long.len())];
                let start = rng.random_range(0..d.len() - seq_len);
                Some(d[start..start + seq_len].to_vec())
            } else if !short.is_empty() {
                Some(short[rng.random_range(0..short.len())].clone())
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_come_from_long_documents_and_are_reproducible() {
        let docs = vec![(0..100).collect::<Vec<u32>>(), vec![1, 2, 3], (200..260).collect()];
        let a = sample_calibration(&docs, 16, 32, 0);
        assert_eq!(a, sample_calibration(&docs, 16, 32, 0));
        assert_eq!(a.len(), 16);
        for w in &a {
            assert_eq!(w.len(), 32);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "a contiguous window");
        }
        let short = sample_calibration(&[vec![1, 2, 3]], 2, 32, 0);
        assert_eq!(short, vec![vec![1, 2, 3]; 2]);
    }
}
