//! A thin wrapper over the `tokenizers` crate for `tokenizer.json` files.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A Hugging Face fast tokenizer loaded from `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `path` (a `tokenizer.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found")));
        }
        let bad = |reason: String| ModelError::Tokenizer { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        // The tokenizers crate panics on some malformed files (an `unwrap` in its decoder
        // deserialiser, found by tests/fuzz.rs): check the JSON first, and turn any panic left
        // into an error.
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| bad("malformed tokenizer (the tokenizers crate could not read it)".into()))?
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { inner, path: path.to_path_buf() })
    }

    /// Token ids of `text`, with the tokenizer's special tokens (e.g. BOS) when it adds any.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(|e| self.err(e))
    }

    /// Token ids of `text` without the special tokens the tokenizer's post-processor adds (what
    /// Hugging Face's `add_special_tokens=False` gives).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| self.err(e))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    /// The text of token `id`, decoded even when it is a special token (as lm-eval decodes EOS).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.decode(&[id], false).ok()
    }

    /// The vocabulary's string of token `id` (as stored: `Ġbook` for a byte-level " book").
    pub fn vocab_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn err(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer { path: self.path.clone(), reason: e.to_string() }
    }
}
