//! Measured latency of a model on this machine: a batched forward pass (prefill) and greedy
//! decoding with the KV cache. Used to compare extracted sub-networks with their maximal model
//! in one run, and as a measured search objective.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::generate::{GenerateOptions, generate, token_tensor};
use crate::nn::Projection;
use crate::transformer::CausalLm;

/// What to time and how often.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySetup {
    /// Prefill: `batch` sequences of `prompt` tokens in one forward pass.
    pub batch: usize,
    pub prompt: usize,
    /// Decoding: one sequence, an 8-token prompt, then `new_tokens` greedy tokens.
    pub new_tokens: usize,
    /// Timed repetitions after one warm-up; the median is reported.
    pub repeats: usize,
}

impl Default for LatencySetup {
    fn default() -> Self {
        Self { batch: 8, prompt: 64, new_tokens: 32, repeats: 5 }
    }
}

/// Median timings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub prefill_ms: f64,
    pub decode_ms_per_token: f64,
}

impl Latency {
    /// Decoded tokens per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        1000.0 / self.decode_ms_per_token
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `model` (token ids are fixed pseudo-random values, so every model sees the same input).
pub fn measure<B: Backend, P: Projection<B>>(model: &CausalLm<B, P>, setup: &LatencySetup, device: &B::Device) -> Result<Latency> {
    Ok(measure_many(&[model], setup, device)?[0])
}

/// Times several models round-robin (one warm-up round, then `repeats` rounds, each timing every
/// model once), so that drift of the machine's speed during the run affects all of them alike.
pub fn measure_many<B: Backend, P: Projection<B>>(
    models: &[&CausalLm<B, P>],
    setup: &LatencySetup,
    device: &B::Device,
) -> Result<Vec<Latency>> {
    let mut prefill = vec![Vec::new(); models.len()];
    let mut decode = vec![Vec::new(); models.len()];
    for round in 0..=setup.repeats.max(1) {
        for (i, model) in models.iter().enumerate() {
            let (p, d) = time_once(model, setup, device)?;
            if round > 0 {
                prefill[i].push(p);
                decode[i].push(d);
            }
        }
    }
    Ok(prefill.into_iter().zip(decode).map(|(p, d)| Latency { prefill_ms: median(p), decode_ms_per_token: median(d) }).collect())
}

/// One timing of the prefill and of decoding, in milliseconds (decoding: per token).
fn time_once<B: Backend, P: Projection<B>>(model: &CausalLm<B, P>, setup: &LatencySetup, device: &B::Device) -> Result<(f64, f64)> {
    let vocab = model.spec().vocab_size as u32;
    let ids = |rows: usize, len: usize| -> Vec<Vec<u32>> {
        (0..rows).map(|r| (0..len).map(|t| ((r * 131 + t * 31 + 7) as u32) % vocab).collect()).collect()
    };
    let (batch, prompt) = (setup.batch.max(1), setup.prompt.max(1));
    let prompts = ids(batch, prompt);
    let mask = vec![vec![true; prompt]; batch];
    let opts = GenerateOptions { max_new_tokens: setup.new_tokens.max(1), ..Default::default() };
    let t = Instant::now();
    let logits = model.forward(token_tensor::<B>(&prompts, device), &mask)?;
    // Reading one value back waits for the whole computation.
    let _ = logits.narrow(1, prompt - 1, 1).sum().into_scalar();
    let p = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let out = generate(model, &ids(1, 8), &opts, device)?;
    let d = t.elapsed().as_secs_f64() * 1000.0 / out[0].len().max(1) as f64;
    Ok((p, d))
}
