//! secateur's side of `cargo xtask bench-real`: a worker that builds one model (SmolLM2-135M's
//! config with random weights, or a real checkpoint) and times the rows it is sent on stdin,
//! one JSON line each. The rows and their work are defined in `scripts/bench_real.py`'s
//! docstring (the PyTorch side does the same work).
//!
//! `bench_real [--config FILE | --model DIR]`; stdin: one row name per line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use secateur::burn::module::{AutodiffModule, Module};
use secateur::burn::tensor::{Distribution, Tensor};
use secateur::lora::{LoraConfig, Scaling, SearchSpace, attach};
use secateur::models::generate::token_tensor;
use secateur::models::{ArchSpec, DenseLm, GenerateOptions, SiteKind, generate};
use secateur::quant::QuantConfig;
use secateur::quant::checkpoint::quantize_model;
use secateur::sparsity::{Pattern, PruneConfig, ScoreMethod, prune};
use secateur::supernet::data::Example;
use secateur::supernet::train::{Strategy, TrainConfig, train};
use secateur::{Cpu, CpuAutodiff};
use serde_json::json;

/// Deterministic token ids in `[3, vocab)` (the same formula as the PyTorch side).
fn ids(batch: usize, len: usize, vocab: usize, salt: usize) -> Vec<Vec<u32>> {
    (0..batch).map(|b| (0..len).map(|t| (3 + (b * 7919 + t * 104_729 + salt * 31) % (vocab - 3)) as u32).collect()).collect()
}

/// Resets this process's peak resident memory (Linux `clear_refs` 5), so that each row's peak is its own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, in MB (`VmHWM`).
fn peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Stops the worker with a message (its parent, `cargo xtask bench-real`, reports the side as skipped).
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench_real: {msg}");
    std::process::exit(2)
}

fn main() {
    secateur::models::host::tune_allocator();
    let mut args = std::env::args().skip(1);
    let (mut config, mut model_dir) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--model" => model_dir = args.next().map(PathBuf::from),
            other => fail(format!("unknown argument {other} (expected --config FILE or --model DIR)")),
        }
    }
    let device = Default::default();
    let model: DenseLm<Cpu> = match (&model_dir, &config) {
        (Some(dir), _) => DenseLm::load(dir, &device).unwrap_or_else(|e| fail(e)),
        (None, Some(cfg)) => DenseLm::init_random(ArchSpec::from_config_file(cfg).unwrap_or_else(|e| fail(e)), 0.02, 0, &device),
        (None, None) => fail("--config FILE or --model DIR"),
    };
    let vocab = model.spec().vocab_size;
    let stdout = std::io::stdout();
    let say = |v: serde_json::Value| {
        let mut out = stdout.lock();
        writeln!(out, "{v}").unwrap();
        out.flush().unwrap();
    };
    say(json!({"ready": true, "side": "secateur", "params": model.num_params(), "threads": rayon_threads()}));
    let mut int4 = None;
    for line in std::io::stdin().lock().lines() {
        let row = line.expect("stdin");
        let row = row.trim();
        if row.is_empty() {
            continue;
        }
        reset_peak();
        let t0 = Instant::now();
        let seconds = match row {
            "prefill_1x512" | "prefill_8x128" => {
                let (b, s) = if row == "prefill_1x512" { (1, 512) } else { (8, 128) };
                let x = ids(b, s, vocab, 1);
                let mask = vec![vec![true; s]; b];
                let logits = model.forward(token_tensor::<Cpu>(&x, &device), &mask).expect("forward");
                let _ = logits.into_data();
                t0.elapsed().as_secs_f64()
            }
            "prefill_1x512_bf16" => {
                if secateur::models::bf16::set_inference(true).is_err() {
                    say(json!({"row": row, "skip": "this CPU has no AVX-512 BF16"}));
                    continue;
                }
                let x = ids(1, 512, vocab, 1);
                let mask = vec![vec![true; 512]];
                // Pack the weights first (a model load does this once), then time a pass.
                let _ = model.forward(token_tensor::<Cpu>(&x, &device), &mask).expect("forward").into_data();
                let t = Instant::now();
                let _ = model.forward(token_tensor::<Cpu>(&x, &device), &mask).expect("forward").into_data();
                let s = t.elapsed().as_secs_f64();
                secateur::models::bf16::set_inference(false).expect("off");
                s
            }
            "decode_f32" | "decode_int4" | "first_token_f32" | "first_token_int4" => {
                // `first_token_*`: the prompt and one new token (what decoding pays before its loop).
                let prompt: Vec<u32> = ids(1, 16, vocab, 2).remove(0);
                let new = if row.starts_with("first") { 1 } else { 64 };
                let opts = GenerateOptions { max_new_tokens: new, ..Default::default() };
                if row.ends_with("f32") {
                    let t = Instant::now();
                    let out = generate(&model, std::slice::from_ref(&prompt), &opts, &device).expect("generate");
                    assert_eq!(out[0].len(), new);
                    t.elapsed().as_secs_f64()
                } else {
                    let q = int4.get_or_insert_with(|| {
                        quantize_model(model.clone(), QuantConfig { bits: 4, group_size: Some(128) }).expect("quantize")
                    });
                    reset_peak();
                    let t = Instant::now();
                    let out = generate(q, std::slice::from_ref(&prompt), &opts, &device).expect("generate");
                    assert_eq!(out[0].len(), new);
                    t.elapsed().as_secs_f64()
                }
            }
            "kernels_int4" | "kernels_head" => {
                // The INT4 projections or the int8 head of one decoded token, kernels alone (x 20).
                let q = int4.get_or_insert_with(|| {
                    quantize_model(model.clone(), QuantConfig { bits: 4, group_size: Some(128) }).expect("quantize")
                });
                let x = vec![0.5f32; 1536];
                let t = Instant::now();
                for _ in 0..20 {
                    if row == "kernels_int4" {
                        for (_, p) in q.projections() {
                            std::hint::black_box(p.matvec(&x[..p.packed.in_features], 1));
                        }
                    } else {
                        std::hint::black_box(q.head_q8.as_ref().expect("int8 head").matvec(&x[..576], 1));
                    }
                }
                t.elapsed().as_secs_f64() / 20.0
            }
            "quantize_rtn" => {
                let q = quantize_model(model.clone(), QuantConfig { bits: 4, group_size: Some(128) }).expect("quantize");
                drop(q);
                t0.elapsed().as_secs_f64()
            }
            "wanda" => {
                let calibration = ids(32, 256, vocab, 3);
                let cfg = PruneConfig {
                    method: ScoreMethod::Wanda,
                    pattern: Pattern::Unstructured { ratio: 0.5 },
                    batch_size: 8,
                    progress: false,
                };
                let out = prune(model.clone(), &calibration, &cfg).expect("prune");
                drop(out);
                t0.elapsed().as_secs_f64()
            }
            "lora_step" => lora_steps(&model, 3) / 3.0,
            "matmul_proj" | "matmul_head" => {
                // x [512, 576] times Wᵀ (W [n, 576], row-major like a projection), as the model does.
                let n = if row == "matmul_proj" { 1536 } else { vocab };
                let reps = if row == "matmul_proj" { 20 } else { 2 };
                let x = Tensor::<Cpu, 2>::random([512, 576], Distribution::Normal(0.0, 1.0), &device);
                let w = Tensor::<Cpu, 2>::random([n, 576], Distribution::Normal(0.0, 1.0), &device);
                let _ = x.clone().matmul(w.clone().transpose()).into_data();
                let t = Instant::now();
                for _ in 0..reps {
                    let _ = x.clone().matmul(w.clone().transpose()).into_data();
                }
                t.elapsed().as_secs_f64() / reps as f64
            }
            "matmul_proj_bf16" | "matmul_head_bf16" => {
                if !secateur::models::bf16::available() {
                    say(json!({"row": row, "skip": "this CPU has no AVX-512 BF16"}));
                    continue;
                }
                let n = if row == "matmul_proj_bf16" { 1536 } else { vocab };
                let reps = if row == "matmul_proj_bf16" { 20 } else { 2 };
                let x: Vec<f32> =
                    Tensor::<Cpu, 2>::random([512, 576], Distribution::Normal(0.0, 1.0), &device).into_data().to_vec().unwrap();
                let w: Vec<f32> = Tensor::<Cpu, 2>::random([n, 576], Distribution::Normal(0.0, 1.0), &device).into_data().to_vec().unwrap();
                let w = secateur::models::bf16::Bf16Weight::pack(&w, n, 576);
                std::hint::black_box(secateur::models::bf16::matmul(&x, 512, &w));
                let t = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(secateur::models::bf16::matmul(&x, 512, &w));
                }
                t.elapsed().as_secs_f64() / reps as f64
            }
            other => {
                say(json!({"row": other, "skip": "unknown row"}));
                continue;
            }
        };
        say(json!({"row": row, "seconds": seconds, "peak_rss_mb": peak_mb()}));
    }
}

/// Seconds for `steps` optimizer steps of LoRA (rank 32, alpha 64, on q, k, v, up and down) at
/// batch 8 x 64 tokens, every token a target, AdamW, gradient clipping at 1.0.
fn lora_steps(model: &DenseLm<Cpu>, steps: usize) -> f64 {
    let device = Default::default();
    let base: DenseLm<CpuAutodiff> = DenseLm::<CpuAutodiff>::from_inner(model.clone()).no_grad();
    let targets = [SiteKind::Q, SiteKind::K, SiteKind::V, SiteKind::Up, SiteKind::Down];
    let space = SearchSpace::preset(base.spec(), Some(&targets), &[32]).expect("space");
    let (adapted, ranks) = attach(base, &space, &LoraConfig { alpha: 64.0, scaling: Scaling::MaxRank, seed: 0 }, &device).expect("attach");
    let vocab = model.spec().vocab_size;
    let examples: Vec<Example> =
        ids(8 * steps, 64, vocab, 4).into_iter().map(|ids| Example { target: vec![true; ids.len()], ids }).collect();
    let cfg =
        TrainConfig { strategy: Strategy::Fixed, steps: Some(steps), batch_size: 8, micro_batch_size: 8, lr: 1e-4, ..Default::default() };
    let (_, report) = train(adapted, &ranks, &examples, &cfg, 0, None).expect("train");
    report.seconds
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
