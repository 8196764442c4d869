//! Super-network training, samplers and the structural cost model.

use std::path::PathBuf;

use burn::module::{AutodiffModule, Module};
use secateur_models::extract::extract;
use secateur_models::{Cpu, CpuAutodiff, DenseLm};
use secateur_supernet::data::Example;
use secateur_supernet::nas::{Sampler, SamplerKind, StructureChoice, StructureSpace, structure_cost, train_supernet, validation_loss};
use secateur_supernet::train::TrainConfig;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn the_cost_model_counts_the_extracted_parameters() {
    for variant in ["llama_gqa", "llama_mha_tied_bias_llama3", "neox_parallel", "mpt_4heads", "bloom_4heads"] {
        let dir = fixtures().join(variant);
        let model = DenseLm::<Cpu>::load(&dir, &Default::default()).unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let mut space = StructureSpace::preset(model.spec(), None);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        for per_layer in [false, true] {
            space.per_layer = per_layer;
            let random: Vec<StructureChoice> = (0..3).map(|_| space.random(&mut rng)).collect();
            for c in [space.maximal(), space.minimal(), space.heuristic()].into_iter().chain(random) {
                let s = space.structure(&c);
                let (small, _) = extract(&model, &s, &config).unwrap();
                assert_eq!(structure_cost(model.spec(), &s, 16).0, small.num_params(), "{variant} {c:?}");
            }
        }
    }
}

fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let a = 10 + (i * 7 % 60) as u32;
            let ids = vec![1, a, 5 + (i % 3) as u32, 9, a, a, a, 2];
            Example { target: (0..ids.len()).map(|t| t >= 4).collect(), ids }
        })
        .collect()
}

#[test]
fn samplers_and_super_network_training() {
    let device = Default::default();
    let model = DenseLm::<CpuAutodiff>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let space = StructureSpace::preset(model.spec(), None);
    let grid = Sampler::new(SamplerKind::GridParams, space.clone(), &model, 22, 0);
    assert!(grid.grid.len() >= 3 && grid.grid.contains(&space.maximal()) && grid.grid.contains(&space.minimal()));
    let mag = Sampler::new(SamplerKind::CalibrateMag, space.clone(), &model, 22, 0);
    assert!(mag.grid.len() >= 3);
    let sandwich = Sampler::new(SamplerKind::Sandwich, space.clone(), &model, 22, 0);
    let step = sandwich.step(0, 3);
    assert_eq!((step.len(), &step[0], &step[3]), (4, &space.maximal(), &space.minimal()));
    let cfg = TrainConfig { epochs: 8, batch_size: 8, micro_batch_size: 8, lr: 3e-3, warmup_steps: 1, ..Default::default() };
    let data = examples(16);
    let before = validation_loss(&model.valid(), &space.structure(&space.minimal()), &data, 0, 8).unwrap();
    let (trained, report) = train_supernet(model, &sandwich, None, &data, &cfg, 0, None).unwrap();
    assert_eq!(report.steps, 16);
    let after = validation_loss(&trained.valid(), &space.structure(&space.minimal()), &data, 0, 8).unwrap();
    assert!(after < 0.7 * before, "minimal sub-network loss {before} -> {after}");
}

#[test]
fn lonas_sub_networks_slice_the_adapters_with_the_weights() {
    use burn::prelude::*;
    use secateur_elastic_lora::{LoraConfig, SearchSpace, attach, stable_param};
    use secateur_models::generate::token_tensor;
    let device = Default::default();
    let dir = fixtures().join("llama_gqa");
    let base = DenseLm::<Cpu>::load(&dir, &device).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let targets = SearchSpace::parse_targets("q,k,v,o,gate,up,down").unwrap();
    let ranks = SearchSpace::preset(base.spec(), Some(&targets), &[4]).unwrap();
    let (adapted, _) = attach(base.clone(), &ranks, &LoraConfig { alpha: 8.0, ..Default::default() }, &device).unwrap();
    let adapted = adapted
        .map_projections(|site, mut p| {
            if let Some(a) = p.adapter.as_mut() {
                let dims = a.b.val().dims();
                let v: Vec<f32> = (0..dims[0] * dims[1]).map(|k| ((k * 37 % 11) as f32 - 5.0) / 20.0).collect();
                a.b = stable_param(site, "lora_B", Tensor::from_data(TensorData::new(v, dims), &device));
            }
            Ok::<_, ()>(p)
        })
        .unwrap();
    let space = StructureSpace::preset(base.spec(), None);
    let s = space.structure(&space.choice(&[1, 0, 2, 1]));
    assert!(
        s.hidden_size.is_some()
            && s.layers[0].mlp_width < base.spec().intermediate_size
            && s.layers[0].kv_groups < base.spec().num_kv_heads
    );
    let ids = vec![vec![3u32, 17, 42, 5, 88, 23]];
    let mask = vec![vec![true; 6]];
    let sliced: Vec<f32> = adapted.forward_subnet(token_tensor::<Cpu>(&ids, &device), &mask, &s).unwrap().into_data().to_vec().unwrap();
    // Mode B: merging the adapters and then extracting is the same sub-network.
    let merged = secateur_elastic_lora::peft::merge(adapted);
    let (small, _) = extract(&merged, &s, &config).unwrap();
    let standalone: Vec<f32> = small.forward(token_tensor::<Cpu>(&ids, &device), &mask).unwrap().into_data().to_vec().unwrap();
    let d = sliced.iter().zip(&standalone).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-4, "sliced adapted super-network vs merged+extracted: {d}");
    let plain: Vec<f32> = base.forward_subnet(token_tensor::<Cpu>(&ids, &device), &mask, &s).unwrap().into_data().to_vec().unwrap();
    assert!(sliced.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3), "the adapters must matter");
}

fn flat<B: burn::prelude::Backend>(m: &DenseLm<B>) -> Vec<f32> {
    let mut v: Vec<f32> = m.embed.val().into_data().convert::<f32>().to_vec().unwrap();
    for b in &m.blocks {
        for p in [&b.attn_in[0], &b.mlp_up, &b.mlp_down] {
            v.extend(p.weight.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
    }
    v
}

#[test]
fn super_network_training_resumes_exactly() {
    let device = Default::default();
    let model = DenseLm::<CpuAutodiff>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let mut space = StructureSpace::preset(model.spec(), None);
    space.per_layer = true;
    let sampler = Sampler::new(SamplerKind::Random, space, &model, 22, 0);
    let data = examples(16);
    let cfg = TrainConfig { epochs: 2, batch_size: 4, lr: 3e-3, warmup_steps: 1, checkpoint_every: 3, ..Default::default() };
    let (whole, whole_report) = train_supernet(model.clone(), &sampler, None, &data, &cfg, 0, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let stopped = TrainConfig { stop_after: Some(5), ..cfg.clone() };
    let (_, first) = train_supernet(model.clone(), &sampler, None, &data, &stopped, 0, Some(tmp.path())).unwrap();
    assert_eq!(first.steps, 5);
    // Only the newest step directory is kept.
    let dirs: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(dirs, vec!["step-5".to_string()]);
    let (resumed, report) = train_supernet(model, &sampler, None, &data, &cfg, 0, Some(tmp.path())).unwrap();
    assert_eq!(report.resumed_from, Some(5));
    assert_eq!(report.losses, whole_report.losses);
    assert_eq!(flat(&resumed.valid()), flat(&whole.valid()), "a resumed run must take exactly the uninterrupted run's steps");
}

#[test]
fn lonas_trains_elastic_ranks_with_elastic_widths() {
    use secateur_elastic_lora::{LoraConfig, SearchSpace, attach};
    use secateur_supernet::nas::step_ranks;
    let device = Default::default();
    let base = DenseLm::<CpuAutodiff>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let targets = SearchSpace::parse_targets("q,k,v,up,down").unwrap();
    let rank_space = SearchSpace::preset(base.spec(), Some(&targets), &[8, 6, 4]).unwrap();
    let (adapted, control) = attach(base.no_grad(), &rank_space, &LoraConfig { alpha: 16.0, ..Default::default() }, &device).unwrap();
    let space = StructureSpace::preset(adapted.spec(), None);
    let sampler = Sampler::new(
        SamplerKind::Sandwich,
        space.clone(),
        &DenseLm::<CpuAutodiff>::load(&fixtures().join("llama_gqa"), &device).unwrap(),
        22,
        0,
    );
    let ranks = step_ranks(SamplerKind::Sandwich, &rank_space, 0, 0, 4);
    assert_eq!((&ranks[0], &ranks[3]), (&rank_space.maximal(), &rank_space.minimal()));
    let data = examples(16);
    let cfg = TrainConfig { epochs: 16, batch_size: 8, lr: 2e-2, warmup_steps: 1, ..Default::default() };
    let before = validation_loss(&adapted.valid(), &space.structure(&space.minimal()), &data, 0, 8).unwrap();
    let (trained, _) = train_supernet(adapted, &sampler, Some(&control), &data, &cfg, 0, None).unwrap();
    control.apply(&rank_space.minimal()).unwrap();
    let after = validation_loss(&trained.valid(), &space.structure(&space.minimal()), &data, 0, 8).unwrap();
    assert!(after < 0.8 * before, "minimal sub-network at minimal ranks: {before} -> {after}");
    // After training the maximal ranks are active again.
    control.apply(&rank_space.maximal()).unwrap();
}
