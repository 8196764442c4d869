//! Extracted sub-networks against their maximal model, in one run: parameters and MACs (exact,
//! `structure_cost`), then the latency of a forward pass (batch 8 x 128) and of greedy decoding
//! (batch 1, KV cache, 64 tokens) of each standalone extracted model. The super-network is the
//! benchmark LLaMA config (hidden 256, 4 layers, 8 heads, intermediate 688, vocab 4096) with
//! random weights; latency does not depend on the weights.
//!
//! `cargo bench -p secateur-supernet --bench subnets`

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secateur_models::extract::extract;
use secateur_models::generate::token_tensor;
use secateur_models::{ArchSpec, Cpu, DenseLm, GenerateOptions, LayerStructure, SubnetStructure, generate};
use secateur_supernet::nas::structure_cost;

const PREFILL_BATCH: usize = 8;
const PREFILL_LEN: usize = 128;
const DECODE_PROMPT: usize = 16;
const DECODE_NEW: usize = 64;

fn structure(layers: &[usize], width: usize, groups: &[usize], hidden: Option<usize>) -> SubnetStructure {
    SubnetStructure {
        layers: layers
            .iter()
            .enumerate()
            .map(|(i, &layer)| LayerStructure { layer, mlp_width: width, kv_groups: groups[i.min(groups.len() - 1)] })
            .collect(),
        hidden_size: hidden,
    }
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/llama_bench_config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("bench config")).expect("JSON");
    let spec = ArchSpec::from_config_value(&path, config.clone()).expect("bench config");
    let model = DenseLm::<Cpu>::init_random(spec.clone(), 0.02, 0, &device);
    let subnets = [
        ("maximal", SubnetStructure::full(&spec)),
        ("75pct-width-embed-heads", structure(&[0, 1, 2, 3], 516, &[6], Some(192))),
        ("3-blocks-50pct-width-heads", structure(&[0, 1, 3], 344, &[4], None)),
        (
            "heterogeneous-3-blocks-embed-192",
            SubnetStructure {
                layers: vec![
                    LayerStructure { layer: 0, mlp_width: 688, kv_groups: 8 },
                    LayerStructure { layer: 1, mlp_width: 344, kv_groups: 4 },
                    LayerStructure { layer: 3, mlp_width: 172, kv_groups: 2 },
                ],
                hidden_size: Some(192),
            },
        ),
    ];
    let ids: Vec<Vec<u32>> = (0..PREFILL_BATCH).map(|b| (0..PREFILL_LEN).map(|t| ((b * 131 + t * 17) % 4096) as u32).collect()).collect();
    let mask = vec![vec![true; PREFILL_LEN]; PREFILL_BATCH];
    let prompt: Vec<u32> = (0..DECODE_PROMPT as u32).map(|t| 3 + t * 7).collect();
    let opts = GenerateOptions { max_new_tokens: DECODE_NEW, ..Default::default() };
    let mut g = c.benchmark_group("subnets-llama-h256-l4");
    g.sample_size(10).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(2));
    for (name, s) in &subnets {
        let (small, _) = extract(&model, s, &config).expect("extract");
        let (params, macs) = structure_cost(&spec, s, PREFILL_LEN);
        assert_eq!(params, small.num_params());
        eprintln!(
            "{name}: {params} parameters ({:.3} of maximal), {macs} MACs/token at {PREFILL_LEN} keys",
            params as f64 / model.num_params() as f64
        );
        g.throughput(Throughput::Elements((PREFILL_BATCH * PREFILL_LEN) as u64));
        g.bench_function(format!("{name}/prefill_b8_s128"), |b| {
            b.iter(|| small.forward(token_tensor::<Cpu>(&ids, &device), &mask).unwrap().narrow(1, PREFILL_LEN - 1, 1).into_data())
        });
        g.throughput(Throughput::Elements(DECODE_NEW as u64));
        g.bench_function(format!("{name}/greedy_decode_b1_64tok"), |b| {
            b.iter(|| generate(&small, std::slice::from_ref(&prompt), &opts, &device).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
