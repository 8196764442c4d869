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
        if context.is_empty() {
            return Ok(Request { context: vec![self.prefix_token], continuation: self.encode(continuation)? });
        }
        let trimmed = context.trim_end_matches(python_whitespace);
        let (context, continuation) = if trimmed.len() < context.len() {
            (trimmed.to_string(), format!("{}{continuation}", &context[trimmed.len()..]))
        } else {
            (context.to_string(), continuation.to_string())
        };
        let whole = self.encode(&format!("{context}{continuation}"))?;
        let ctx = self.encode(&context)?;
        let n = ctx.len().min(whole.len());
        Ok(Request { context: whole[..n].to_vec(), continuation: whole[n..].to_vec() })
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
/// and the continuation's tokens are read from the last positions. Requests run longest first
/// in batches of at most `batch_size` (right-padded; results are returned in input order).
pub fn loglikelihoods<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    requests: &[Request],
    max_length: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Scored>, EvalError> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let len = |r: &Request| (r.context.len() + r.continuation.len()).min(max_length + 1);
    order.sort_by_key(|&i| std::cmp::Reverse(len(&requests[i])));
    let mut out = vec![Scored { loglik: 0.0, is_greedy: true, tokens: 0 }; requests.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        // Inputs and, per position, the token it predicts.
        let mut inputs = Vec::with_capacity(chunk.len());
        let mut targets = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let r = &requests[i];
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
            inputs.push(window[..window.len() - 1].to_vec());
            targets.push(window[1..].to_vec());
        }
        let (ids, mask) = right_pad(&inputs, 0);
        let (target_ids, _) = right_pad(&targets, 0);
        let width = mask[0].len();
        let logits = model.forward(token_tensor::<B>(&ids, device), &mask)?;
        let logp = log_softmax(logits, 2);
        let picked = logp.clone().gather(2, token_tensor::<B>(&target_ids, device).unsqueeze_dim(2)).squeeze_dim::<2>(2);
        let greedy = logp.argmax(2).squeeze_dim::<2>(2);
        let picked: Vec<f32> = picked.into_data().convert::<f32>().to_vec().map_err(|e| EvalError::Request(format!("{e:?}")))?;
        let greedy: Vec<i64> = greedy.into_data().convert::<i64>().to_vec().map_err(|e| EvalError::Request(format!("{e:?}")))?;
        for (b, &i) in chunk.iter().enumerate() {
            let n = inputs[b].len();
            let c = requests[i].continuation.len();
            let rows = (n - c)..n;
            out[i] = Scored {
                loglik: rows.clone().map(|t| picked[b * width + t] as f64).sum(),
                is_greedy: rows.clone().all(|t| greedy[b * width + t] == targets[b][t] as i64),
                tokens: c,
            };
        }
    }
    Ok(out)
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
