//! One NLS training step and one Wanda pruning of the benchmark LLaMA config (hidden 256,
//! 4 layers, 8 heads, intermediate 688, vocab 4096): batch 8 x 128 tokens, adapters of rank 16
//! on q, k, v, o, gate, up, down, base frozen, AdamW on the adapters; Wanda 50% with 32
//! calibration sequences of 128 tokens.
//!
//! `cargo bench -p secateur --bench shears`; the PyTorch + PEFT side is
//! `python3 scripts/bench_torch_shears.py`.

use std::path::Path;
use std::time::Duration;

use burn::module::Module;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use secateur::lora::{LoraConfig, SearchSpace, attach};
use secateur::models::{ArchSpec, Cpu, CpuAutodiff, DenseLm, SiteKind};
use secateur::sparsity::{Pattern, PruneConfig, ScoreMethod, prune};
use secateur::supernet::data::Example;
use secateur::supernet::train::{Strategy, TrainConfig, train};

fn spec() -> ArchSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/llama_bench_config.json");
    ArchSpec::from_config_file(&path).expect("bench config")
}

fn tokens(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n).map(|b| (0..len).map(|t| ((b * 131 + t * 17) % 4096) as u32).collect()).collect()
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let mut g = c.benchmark_group("shears-llama-h256-l4");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));

    let all = [SiteKind::Q, SiteKind::K, SiteKind::V, SiteKind::O, SiteKind::Gate, SiteKind::Up, SiteKind::Down];
    let examples: Vec<Example> = tokens(8, 128).into_iter().map(|ids| Example { target: vec![true; ids.len()], ids }).collect();
    let base = DenseLm::<CpuAutodiff>::init_random(spec(), 0.02, 0, &device).no_grad();
    for (name, strategy, choices) in [
        ("train_step_fixed_r16", Strategy::Fixed, vec![16]),
        ("train_step_nls_r16_only", Strategy::Nls, vec![16]),
        ("train_step_nls_16_12_8", Strategy::Nls, vec![16, 12, 8]),
    ] {
        let space = SearchSpace::preset(base.spec(), Some(&all), &choices).unwrap();
        let (model, ranks) = attach(base.clone(), &space, &LoraConfig { alpha: 32.0, ..Default::default() }, &device).unwrap();
        let cfg = TrainConfig { strategy, epochs: 1, batch_size: 8, micro_batch_size: 8, lr: 1e-4, ..Default::default() };
        g.bench_function(name, |b| {
            b.iter_batched(|| model.clone(), |m| train(m, &ranks, &examples, &cfg, 0, None).unwrap(), BatchSize::LargeInput)
        });
    }

    let dense = DenseLm::<Cpu>::init_random(spec(), 0.02, 0, &device);
    let calibration = tokens(32, 128);
    let cfg = PruneConfig { method: ScoreMethod::Wanda, pattern: Pattern::Unstructured { ratio: 0.5 }, batch_size: 8, progress: false };
    g.bench_function("wanda_50pct_32x128", |b| {
        b.iter_batched(|| dense.clone(), |m| prune(m, &calibration, &cfg).unwrap(), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
