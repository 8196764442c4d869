//! Log-likelihood requests, encoded and scored as lm-evaluation-harness's Hugging Face model does
//! (`lm_eval/models/huggingface.py`: `_encode_pair`, `_loglikelihood_tokens`,
//! `loglikelihood_rolling`; `lm_eval/utils.py`: `get_rolling_token_windows`,
//! `make_disjoint_window`).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use secateur_models::generate::{right_pad, token_tensor};
use secateur_models::{CausalLm, Projection, TextTokenizer};
use serde::Serialize;

use crate::EvalError;

/// The tokens of a context and of the continuation whose log-likelihood is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// A scored request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Summed log-probability of the continuation's tokens.
    pub loglik: f64,
    /// Whether every continuation token is the argmax of its prediction.
    pub is_greedy: bool,
    /// Continuation tokens scored.
    pub tokens: usize,
}

/// How requests are encoded: the prefix token (lm-eval's `prefix_token_id`: the tokenizer's BOS,
/// else its EOS) stands in for an empty context and starts a rolling document.
#[derive(Clone)]
pub struct Encoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub prefix_token: u32,
    /// Prepend the BOS token to every encoding (lm-eval's `add_bos_token`; off for causal LMs).
    pub add_bos: Option<u32>,
    /// Contexts as chat prompts (lm-eval's `--apply_chat_template`); rolling perplexity has no
    /// context and ignores it, as lm-eval does.
    pub chat: Option<crate::Chat<'a>>,
}

impl Encoder<'_> {
    /// `text` as the model sees it (special tokens only when `add_bos` asks for one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        let mut ids = self.tokenizer.encode_plain(text)?;
        if let Some(bos) = self.add_bos {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation;
    /// context + continuation are encoded as one string and split where the context's own
    /// encoding ends. An empty context becomes the prefix token.
    pub fn pair(&self, context: &str, continuation: &str) -> Result<Request, EvalError> {
        Ok(self.pairs(context, &[continuation])?.remove(0))
    }

    /// [`Encoder::pair`] of one context with each of `continuations`, the context's own encoding
    /// computed once.
    pub fn pairs(&self, context: &str, continuations: &[&str]) -> Result<Vec<Request>, EvalError> {
        if context.is_empty() {
            return continuations.iter().map(|c| Ok(Request { context: vec![self.prefix_token], continuation: self.encode(c)? })).collect();
        }
        let trimmed = context.trim_end_matches(python_whitespace);
        let moved = &context[trimmed.len()..];
        let n_ctx = self.encode(trimmed)?.len();
        continuations
            .iter()
            .map(|c| {
                let whole = self.encode(&format!("{trimmed}{moved}{c}"))?;
                let n = n_ctx.min(whole.len());
                Ok(Request { context: whole[..n].to_vec(), continuation: whole[n..].to_vec() })
            })
            .collect()
    }

    /// The disjoint rolling windows of a document (`loglikelihood_rolling` with `context_len`
    /// 1): every token is predicted once, the first from the prefix token, each window at most
    /// `max_length` tokens.
    pub fn rolling(&self, text: &str, max_length: usize) -> Result<Vec<Request>, EvalError> {
        let tokens = self.encode(text)?;
        Ok(rolling_windows(&tokens, self.prefix_token, max_length))
    }
}

/// Whitespace as Python's `str.isspace` (and `str.rstrip`) sees it.
pub(crate) fn python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `get_rolling_token_windows(tokens, prefix, max_len, context_len=1)` followed by
/// `make_disjoint_window` on each window.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<Request> {
    let mut out = Vec::new();
    if tokens.is_empty() || max_len == 0 {
        return out;
    }
    let disjoint = |a: Vec<u32>, b: Vec<u32>| {
        let keep = a.len() - (b.len() - 1);
        Request { context: a[..keep].to_vec(), continuation: b }
    };
    let first = max_len.min(tokens.len());
    let mut a = vec![prefix];
    a.extend_from_slice(&tokens[..first - 1]);
    out.push(disjoint(a, tokens[..first].to_vec()));
    let mut predicted = first;
    while predicted < tokens.len() {
        let pred = (tokens.len() - predicted).min(max_len);
        let end = predicted + pred;
        // Python's tokens[end - max_len - 1 : end - 1], with a negative start meaning "from the end"
        // (it cannot be: end - 1 >= max_len here, since the first window predicted max_len).
        let start = (end - 1).saturating_sub(max_len);
        out.push(disjoint(tokens[start..end - 1].to_vec(), tokens[end - pred..end].to_vec()));
        predicted += pred;
    }
    out
}

/// Scores `requests` on `model`: each runs as `(context + continuation)[-(max_length + 1):][:-1]`
/// and the continuation's tokens are read from the last positions. Requests whose inputs are
/// the same tokens (the choices of one context, each a single token: MMLU's letters) share one
/// row, as lm-eval's one-token grouping does; rows run longest first in batches of at most
/// `batch_size` (right-padded; results are returned in input order).
pub fn loglikelihoods<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    requests: &[Request],
    max_length: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Scored>, EvalError> {
    // Each request's input row and the token each of its positions predicts.
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut row_of: std::collections::HashMap<Vec<u32>, usize> = std::collections::HashMap::new();
    let mut placed = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.continuation.is_empty() {
            return Err(EvalError::Request(format!("request {i}: the continuation has no tokens")));
        }
        if r.continuation.len() > max_length {
            return Err(EvalError::Request(format!(
                "request {i}: a continuation of {} tokens does not fit the window of {max_length}",
                r.continuation.len()
            )));
        }
        let full: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
        let window = &full[full.len().saturating_sub(max_length + 1)..];
        let input = window[..window.len() - 1].to_vec();
        let targets = window[1..].to_vec();
        let row = *row_of.entry(input.clone()).or_insert_with(|| {
            rows.push(input);
            rows.len() - 1
        });
        placed.push((row, targets));
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].len()));
    let mut by_row: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
    for (i, (row, _)) in placed.iter().enumerate() {
        by_row[*row].push(i);
    }
    let mut out = vec![Scored { loglik: 0.0, is_greedy: true, tokens: 0 }; requests.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let inputs: Vec<Vec<u32>> = chunk.iter().map(|&r| rows[r].clone()).collect();
        let (ids, mask) = right_pad(&inputs, 0);
        let width = mask[0].len();
        // Per scored position: its flat row in [batch * width] and its target.
        let (mut at, mut target) = (Vec::new(), Vec::new());
        for (b, &r) in chunk.iter().enumerate() {
            let n = inputs[b].len();
            for &i in &by_row[r] {
                let c = requests[i].continuation.len();
                for t in (n - c)..n {
                    at.push((b * width + t) as i64);
                    target.push(placed[i].1[t] as i64);
                }
            }
        }
        let hidden = model.hidden_states(token_tensor::<B>(&ids, device), &mask)?;
        let [bsz, seq, e] = hidden.dims();
        let hidden = hidden.reshape([bsz * seq, e]);
        // The head runs on the scored positions only, a bounded number at a time (never the
        // whole [batch, seq, vocab] logits).
        let (mut picked, mut greedy) = (Vec::with_capacity(at.len()), Vec::with_capacity(at.len()));
        for (rows, tg) in at.chunks(HEAD_ROWS).zip(target.chunks(HEAD_ROWS)) {
            let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(rows.to_vec(), [rows.len()]), device);
            let logits = model.logits_exact(hidden.clone().select(0, positions).unsqueeze_dim(0)).squeeze_dim::<2>(0);
            let (p, g) = score_rows(logits, tg, device)?;
            picked.extend(p);
            greedy.extend(g);
        }
        let mut k = 0;
        for &r in chunk {
            for &i in &by_row[r] {
                let c = requests[i].continuation.len();
                let span = k..k + c;
                out[i] = Scored {
                    loglik: span.clone().map(|j| picked[j] as f64).sum(),
                    is_greedy: span.clone().all(|j| greedy[j] as i64 == target[j]),
                    tokens: c,
                };
                k += c;
            }
        }
    }
    Ok(out)
}

/// Positions whose logits are computed at once (`HEAD_ROWS x vocab` f32: 25 MB at a 49k vocabulary).
const HEAD_ROWS: usize = 128;

/// Each row's log-probability of its target and its argmax, from `logits: [rows, vocab]`: fused
/// on the host where the host kernels serve the backend, else as burn's `log_softmax`.
fn score_rows<B: Backend>(logits: Tensor<B, 2>, targets: &[i64], device: &B::Device) -> Result<(Vec<f32>, Vec<u32>), EvalError> {
    let [n, vocab] = logits.dims();
    if secateur_models::host::enabled::<B>(device) {
        let t: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
        let scored = secateur_models::host::log_softmax_pick(&secateur_models::host::to_host(logits), vocab, &t);
        return Ok(scored.into_iter().unzip());
    }
    let logp = log_softmax(logits, 1);
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [n]), device);
    let picked = logp.clone().gather(1, targets.unsqueeze_dim(1)).squeeze_dim::<1>(1);
    let greedy = logp.argmax(1).squeeze_dim::<1>(1);
    let picked: Vec<f32> = picked.into_data().convert::<f32>().to_vec().map_err(|e| EvalError::Request(format!("{e:?}")))?;
    let greedy: Vec<i64> = greedy.into_data().convert::<i64>().to_vec().map_err(|e| EvalError::Request(format!("{e:?}")))?;
    Ok((picked, greedy.into_iter().map(|g| g as u32).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `get_rolling_token_windows` + `make_disjoint_window` worked by hand from lm-eval's code.
    #[test]
    fn rolling_windows_predict_every_token_once() {
        let t: Vec<u32> = (1..=10).collect();
        let w = rolling_windows(&t, 0, 4);
        assert_eq!(w[0], Request { context: vec![0], continuation: vec![1, 2, 3, 4] });
        assert_eq!(w[1], Request { context: vec![4], continuation: vec![5, 6, 7, 8] });
        assert_eq!(w[2], Request { context: vec![6, 7, 8], continuation: vec![9, 10] });
        assert_eq!(w.len(), 3);
        let short = rolling_windows(&[7, 8], 0, 4);
        assert_eq!(short, vec![Request { context: vec![0], continuation: vec![7, 8] }]);
    }
}
