//! Text generation: greedy and nucleus sampling, batched, with or without the KV cache.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::nn::Projection;
use crate::transformer::{CausalLm, KvCache};

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
    /// Stop a row at any of these tokens (the token is kept in the output).
    pub eos_token_ids: Vec<u32>,
    /// Reuse keys and values of past tokens (true) or recompute the whole sequence each step.
    pub use_cache: bool,
    /// The longest prompt plus generation allowed (default: the model's context length; RoPE
    /// and ALiBi models run longer, as lm-eval's `--max_length` lets them).
    pub max_context: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 32, temperature: 0.0, top_p: 1.0, seed: 0, eos_token_ids: Vec::new(), use_cache: true, max_context: None }
    }
}

/// Generates continuations of `prompts` (left-padded into one batch); returns the new tokens
/// of each prompt, each ending at its first EOS or after `max_new_tokens`.
pub fn generate<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &B::Device,
) -> Result<Vec<Vec<u32>>> {
    generate_until(model, prompts, opts, device, &mut |_, _| false)
}

/// [`generate`], with `stop(row, new_tokens)` asked after each new token of a row: `true` ends
/// that row there (as an EOS token does; e.g. when the decoded text holds a stop sequence).
pub fn generate_until<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &B::Device,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.spec().vocab_size;
    if prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::InvalidInput("a prompt is empty".into()));
    }
    if let Some(&t) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::InvalidInput(format!("token id {t} is outside the vocabulary of {vocab}")));
    }
    if !(opts.temperature >= 0.0 && opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(ModelError::InvalidInput("temperature must be >= 0 and top_p in (0, 1]".into()));
    }
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = opts.max_context.unwrap_or_else(|| model.spec().context_length());
    if width.saturating_add(opts.max_new_tokens) > context {
        return Err(ModelError::InvalidInput(format!(
            "a prompt of {width} tokens plus {} new tokens exceeds the model's context window of {context} tokens",
            opts.max_new_tokens
        )));
    }
    // Left padding: every row's last slot is a real token.
    let mut ids: Vec<Vec<u32>> =
        prompts.iter().map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()).collect()).collect();
    let mut mask: Vec<Vec<bool>> =
        prompts.iter().map(|p| std::iter::repeat_n(false, width - p.len()).chain(std::iter::repeat_n(true, p.len())).collect()).collect();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut cache = KvCache::new(model.blocks.len(), b);
    let mut step_ids = ids.clone();
    let mut step_mask = mask.clone();
    for _ in 0..opts.max_new_tokens {
        let tensor = token_tensor::<B>(&step_ids, device);
        let logits =
            if opts.use_cache { model.forward_cached(tensor, &step_mask, &mut cache)? } else { model.forward(tensor, &step_mask)? };
        let [_, s, v] = logits.dims();
        let last: Vec<f32> = logits
            .narrow(1, s - 1, 1)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| ModelError::InvalidInput(format!("cannot read logits: {e:?}")))?;
        let mut next = Vec::with_capacity(b);
        for (r, row) in last.chunks(v).enumerate() {
            let tok = if done[r] {
                opts.eos_token_ids.first().copied().unwrap_or(0)
            } else {
                let t = pick(row, opts, &mut rng);
                out[r].push(t);
                if opts.eos_token_ids.contains(&t) || stop(r, &out[r]) {
                    done[r] = true;
                }
                t
            };
            next.push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        for r in 0..b {
            ids[r].push(next[r]);
            mask[r].push(true);
        }
        if opts.use_cache {
            step_ids = next.iter().map(|&t| vec![t]).collect();
            step_mask = vec![vec![true]; b];
        } else {
            step_ids = ids.clone();
            step_mask = mask.clone();
        }
    }
    Ok(out)
}

/// Right-pads token sequences to one width with `pad`; returns the ids and the mask (true at
/// real tokens).
pub fn right_pad(seqs: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let ids = seqs.iter().map(|s| s.iter().copied().chain(std::iter::repeat_n(pad, width - s.len())).collect()).collect();
    let mask = seqs.iter().map(|s| (0..width).map(|t| t < s.len()).collect()).collect();
    (ids, mask)
}

/// Token ids as a `[batch, seq]` tensor (rows must have equal length).
pub fn token_tensor<B: Backend>(ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = ids.len();
    let s = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// Greedy argmax (first maximum) or nucleus sampling from one row of logits.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    if opts.temperature == 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = opts.temperature as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &x)| (i, ((x as f64 - max) / t).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // Keep tokens while the mass before them is below top_p (the first always stays).
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        if kept > 0 && mass >= opts.top_p as f64 {
            break;
        }
        mass += p.1;
        kept += 1;
    }
    let probs = &probs[..kept];
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs[kept - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_only_the_head() {
        let opts = GenerateOptions { temperature: 1.0, top_p: 0.5, ..Default::default() };
        // Token 2 holds ~0.84 of the mass: with top_p 0.5 it is the only candidate.
        let logits = [0.0, 0.0, 3.0, 1.0];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            assert_eq!(pick(&logits, &opts, &mut rng), 2);
        }
        let greedy = GenerateOptions::default();
        assert_eq!(pick(&[0.1, 0.5, 0.5], &greedy, &mut rng), 1);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let opts = GenerateOptions { temperature: 1.0, top_p: 1.0, ..Default::default() };
        let logits = [0.0f32, (3.0f32).ln()];
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20000;
        let ones = (0..n).filter(|_| pick(&logits, &opts, &mut rng) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
