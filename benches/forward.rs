//! Forward-pass and decoding speed of the benchmark LLaMA config (hidden 256, 4 layers,
//! 8 heads, intermediate 688, vocab 4096) on the CPU backend.
//!
//! `cargo bench -p secateur-models --bench forward`; the PyTorch side of the same config is
//! `python3 scripts/bench_torch.py`.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secateur_models::generate::token_tensor;
use secateur_models::{ArchSpec, Cpu, DenseLm, GenerateOptions, generate};
use secateur_quant::QuantConfig;
use secateur_quant::checkpoint::quantize_model;

const PREFILL_BATCH: usize = 8;
const PREFILL_LEN: usize = 128;
const DECODE_PROMPT: usize = 16;
const DECODE_NEW: usize = 64;

fn model() -> DenseLm<Cpu> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/llama_bench_config.json");
    let spec = ArchSpec::from_config_file(&path).expect("bench config");
    DenseLm::<Cpu>::init_random(spec, 0.02, 0, &Default::default())
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let model = model();
    let ids: Vec<Vec<u32>> = (0..PREFILL_BATCH).map(|b| (0..PREFILL_LEN).map(|t| ((b * 131 + t * 17) % 4096) as u32).collect()).collect();
    let mask = vec![vec![true; PREFILL_LEN]; PREFILL_BATCH];

    let mut g = c.benchmark_group("llama-h256-l4");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements((PREFILL_BATCH * PREFILL_LEN) as u64));
    g.bench_function("prefill_b8_s128", |b| {
        b.iter(|| {
            let logits = model.forward(token_tensor::<Cpu>(&ids, &device), &mask).unwrap();
            // Force the computation to finish.
            logits.narrow(1, PREFILL_LEN - 1, 1).into_data()
        })
    });
    let prompt: Vec<u32> = (0..DECODE_PROMPT as u32).map(|t| 3 + t * 7).collect();
    let opts = GenerateOptions { max_new_tokens: DECODE_NEW, ..Default::default() };
    g.throughput(Throughput::Elements(DECODE_NEW as u64));
    g.bench_function("greedy_decode_b1_64tok_kv_cache", |b| {
        b.iter(|| generate(&model, std::slice::from_ref(&prompt), &opts, &device).unwrap())
    });

    // The same model quantized to INT4 (group 128): decoding reads packed weights.
    let f32_bytes: usize = model.projections().iter().map(|(_, p)| p.shape()[0] * p.shape()[1] * 4).sum();
    let rest = (model.num_params() - f32_bytes / 4) * 4;
    let q = quantize_model(model.clone(), QuantConfig { bits: 4, group_size: Some(128) }).unwrap();
    let int4_bytes: usize = q.projections().iter().map(|(_, p)| p.weight_bytes()).sum();
    eprintln!(
        "weights in memory: f32 projections {f32_bytes} B + other {rest} B; INT4 projections {int4_bytes} B + other {rest} B; ratio {:.3}",
        (int4_bytes + rest) as f64 / (f32_bytes + rest) as f64
    );
    g.bench_function("greedy_decode_b1_64tok_kv_cache_int4", |b| {
        b.iter(|| generate(&q, std::slice::from_ref(&prompt), &opts, &device).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
