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
        let text = std::fs::read_to_string(path).map_err(|source| SparsityError::Io { path: path.to_path_buf(), source })?;
        let bad = |reason: String| SparsityError::Calibration { path: path.to_path_buf(), reason };
        if text.trim_start().starts_with('[') {
            let ids: Vec<Vec<u32>> =
                serde_json::from_str(&text).map_err(|e| bad(format!("expected a JSON array of token-id arrays: {e}")))?;
            if ids.iter().all(Vec::is_empty) {
                return Err(bad("no tokens".into()));
            }
            return Ok(Self::TokenIds(ids));
        }
        let mut texts = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| bad(format!("line {}: no string field `text`", n + 1)))?;
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

/// Calibration sequences for a model from a file (token ids, or texts tokenized with the
/// model's `tokenizer.json`): `samples` windows of `seq_len` tokens (default: the model's
/// context length, at most 2048) sampled by [`sample_calibration`] with `seed`. The request is
/// checked ([`check_calibration_size`], the context window) before the file is read.
pub fn load_calibration(
    path: &Path,
    model_dir: &Path,
    spec: &secateur_models::ArchSpec,
    samples: usize,
    seq_len: Option<usize>,
    seed: u64,
) -> Result<Vec<Vec<u32>>, SparsityError> {
    let len = seq_len.unwrap_or_else(|| spec.context_length().min(2048));
    if len > spec.context_length() {
        return Err(SparsityError::Config(format!("--seq-len {len}: longer than the model's context window of {}", spec.context_length())));
    }
    check_calibration_size(samples, len)?;
    let tok_path = model_dir.join("tokenizer.json");
    let tok = if tok_path.is_file() { Some(TextTokenizer::from_file(&tok_path)?) } else { None };
    let docs = CalibrationSource::from_file(path)?.into_token_ids(tok.as_ref(), path)?;
    Ok(sample_calibration(&docs, samples, len, seed))
}

/// Most calibration tokens a run may ask for (`samples x seq_len`): 16 times Wanda's setting of
/// 128 x 2048, so that a typo cannot exhaust memory.
pub const MAX_CALIBRATION_TOKENS: usize = 1 << 22;

/// Checks a calibration request before any work: at least one sample of at least 2 tokens, and
/// at most [`MAX_CALIBRATION_TOKENS`] in all.
pub fn check_calibration_size(samples: usize, seq_len: usize) -> Result<(), SparsityError> {
    if samples == 0 || seq_len < 2 {
        return Err(SparsityError::Config(format!("calibration needs at least 1 sample of at least 2 tokens (got {samples} x {seq_len})")));
    }
    if samples.saturating_mul(seq_len) > MAX_CALIBRATION_TOKENS {
        return Err(SparsityError::Config(format!(
            "{samples} calibration samples of {seq_len} tokens exceed {MAX_CALIBRATION_TOKENS} tokens; Wanda uses 128 x 2048"
        )));
    }
    Ok(())
}

/// Picks `samples` calibration sequences of at most `seq_len` tokens from `docs`:
///
/// - when some documents are longer than `seq_len`, windows are drawn from them: a random
///   document, then a random window inside it (the Wanda reference's C4 sampling);
/// - otherwise the rows are a calibration set already cut to size (e.g. 8 rows of exactly 32
///   tokens): they are used as given, in order, each once (batches are padded), so fewer than
///   `samples` sequences come back when the file holds fewer rows.
///
/// Deterministic for a seed.
pub fn sample_calibration(docs: &[Vec<u32>], samples: usize, seq_len: usize, seed: u64) -> Vec<Vec<u32>> {
    let long: Vec<&Vec<u32>> = docs.iter().filter(|d| d.len() > seq_len).collect();
    if long.is_empty() {
        return docs.iter().filter(|d| !d.is_empty()).take(samples).cloned().collect();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    (0..samples)
        .map(|_| {
            let d = long[rng.random_range(0..long.len())];
            let start = rng.random_range(0..d.len() - seq_len);
            d[start..start + seq_len].to_vec()
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
        // Without a longer document, rows shorter than the window are used as given, once each.
        let short = sample_calibration(&[vec![1, 2, 3], vec![4, 5]], 4, 32, 0);
        assert_eq!(short, vec![vec![1, 2, 3], vec![4, 5]]);
    }

    #[test]
    fn rows_already_cut_to_the_window_are_used_as_given_in_order() {
        let rows: Vec<Vec<u32>> = (0..8).map(|r| (0..32).map(|t| r * 100 + t).collect()).collect();
        assert_eq!(sample_calibration(&rows, 8, 32, 7), rows, "all eight, in order, no repeats");
        assert_eq!(sample_calibration(&rows, 3, 32, 7), rows[..3].to_vec());
        assert_eq!(sample_calibration(&rows, 20, 32, 7), rows, "never repeated to fill the count");
        assert!(check_calibration_size(100_000_000, 64).is_err());
        assert!(check_calibration_size(0, 64).is_err());
        assert!(check_calibration_size(128, 2048).is_ok());
    }
}
