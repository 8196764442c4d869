//! The training loop on the tiny LLaMA fixture.

use std::path::PathBuf;

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use secateur_elastic_lora::{AdaptedLm, LoraConfig, RankControl, SearchSpace, attach};
use secateur_models::{CpuAutodiff, DenseLm};
use secateur_supernet::data::Example;
use secateur_supernet::train::{Strategy, TrainConfig, lr_at, train};

type AD = CpuAutodiff;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/llama_gqa")
}

fn setup(choices: &[usize]) -> (AdaptedLm<AD>, RankControl) {
    let device = Default::default();
    let base = DenseLm::<AD>::load(&fixture(), &device).unwrap().no_grad();
    let space = SearchSpace::preset(base.spec(), None, choices).unwrap();
    attach(base, &space, &LoraConfig { alpha: 16.0, seed: 1, ..Default::default() }, &device).unwrap()
}

/// A toy task: after a 4-token prompt, copy its first token three times.
fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let a = 10 + (i * 7 % 60) as u32;
            let ids = vec![1, a, 5 + (i % 3) as u32, 9, a, a, a, 2];
            let target = (0..ids.len()).map(|t| t >= 4).collect();
            Example { ids, target }
        })
        .collect()
}

fn adapter_values(model: &AdaptedLm<AD>) -> Vec<f32> {
    model
        .projections()
        .into_iter()
        .filter_map(|(_, p)| p.adapter.as_ref())
        .flat_map(|a| {
            let mut v: Vec<f32> = a.a.val().inner().into_data().to_vec().unwrap();
            v.extend(a.b.val().inner().into_data().to_vec::<f32>().unwrap());
            v
        })
        .collect()
}

fn base_values(model: &AdaptedLm<AD>) -> Vec<f32> {
    model
        .projections()
        .into_iter()
        .flat_map(|(_, p)| p.base.weight.val().inner().into_data().to_vec::<f32>().unwrap())
        .chain(model.embed.val().inner().into_data().to_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn lora_training_lowers_the_loss_and_touches_only_adapters() {
    let (model, ranks) = setup(&[8]);
    let before = base_values(&model);
    let cfg = TrainConfig {
        strategy: Strategy::Fixed,
        epochs: 12,
        batch_size: 8,
        micro_batch_size: 4,
        lr: 1e-2,
        warmup_steps: 2,
        ..Default::default()
    };
    let (model, report) = train(model, &ranks, &examples(16), &cfg, 0, None).unwrap();
    assert_eq!(report.steps, 24);
    let first = report.losses[..2].iter().sum::<f64>() / 2.0;
    let last = report.losses[22..].iter().sum::<f64>() / 2.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert_eq!(base_values(&model), before, "the base must stay frozen");
    assert_eq!(report.trainable_params, 2 * (8 * (32 + 32) + 8 * (32 + 16) * 2 + 8 * (32 + 48) + 8 * (48 + 32)));
    // The trained adapter, as an inference module, changes the model's predictions.
    let valid = model.valid();
    assert!(valid.projections().iter().any(|(_, p)| p.adapter.is_some()));
}

#[test]
fn nls_draws_a_sub_adapter_per_step_and_sandwich_trains_max_and_min() {
    let (model, ranks) = setup(&[8, 6, 4]);
    let cfg = TrainConfig { strategy: Strategy::Nls, epochs: 2, batch_size: 4, micro_batch_size: 2, lr: 1e-3, ..Default::default() };
    let (model, report) = train(model, &ranks, &examples(16), &cfg, 0, None).unwrap();
    let distinct: std::collections::HashSet<_> = report.configs.iter().collect();
    assert!(distinct.len() >= 6, "NLS should visit many sub-adapters, saw {}", distinct.len());
    for c in &report.configs {
        assert_eq!(c.0.len(), ranks.space.groups.len());
        assert!(c.0.iter().all(|&i| i < 3));
    }
    let sandwich = TrainConfig { strategy: Strategy::Sandwich { random: 2 }, epochs: 1, ..cfg };
    let configs = secateur_supernet::train::step_configs(&sandwich, &ranks, 0);
    assert_eq!(configs.len(), 4);
    assert_eq!(configs[0], ranks.space.maximal());
    assert_eq!(configs[3], ranks.space.minimal());
    let (_, report) = train(model, &ranks, &examples(8), &sandwich, 0, None).unwrap();
    assert_eq!(report.steps, 2);
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_run() {
    let data = examples(16);
    let cfg = TrainConfig {
        strategy: Strategy::Nls,
        epochs: 2,
        batch_size: 4,
        micro_batch_size: 2,
        lr: 5e-3,
        warmup_steps: 1,
        checkpoint_every: 2,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (model, ranks) = setup(&[8, 4]);
    let (full, full_report) = train(model, &ranks, &data, &cfg, 0, Some(&tmp.path().join("a"))).unwrap();

    // A run killed after its step-4 checkpoint, then restarted on the same directory.
    let (model, ranks) = setup(&[8, 4]);
    let (_, partial) =
        train(model, &ranks, &data, &TrainConfig { stop_after: Some(4), ..cfg.clone() }, 0, Some(&tmp.path().join("c"))).unwrap();
    assert_eq!(partial.steps, 4);
    let (model, ranks) = setup(&[8, 4]);
    let (resumed, report) = train(model, &ranks, &data, &cfg, 0, Some(&tmp.path().join("c"))).unwrap();
    assert_eq!(report.resumed_from, Some(4));
    assert_eq!(report.losses, full_report.losses);
    assert_eq!(report.configs, full_report.configs);
    assert_eq!(adapter_values(&resumed), adapter_values(&full));
    assert!(tmp.path().join("c/state.json").is_file());
}

#[test]
fn schedule_warms_up_then_decays_to_zero() {
    let cfg = TrainConfig { lr: 1.0, warmup_steps: 4, ..Default::default() };
    assert!((lr_at(&cfg, 0, 20) - 0.25).abs() < 1e-12);
    assert!((lr_at(&cfg, 3, 20) - 1.0).abs() < 1e-12);
    assert!((lr_at(&cfg, 4, 20) - 1.0).abs() < 1e-12);
    assert!((lr_at(&cfg, 12, 20) - 0.5).abs() < 1e-12);
    assert!(lr_at(&cfg, 19, 20) < 0.02);
}

#[test]
fn global_norm_clipping_matches_pytorch() {
    use burn::optim::GradientsParams;
    let (model, _) = setup(&[4]);
    let device = Default::default();
    let data = examples(4);
    let batch = secateur_supernet::data::Batch::new(&data.iter().collect::<Vec<_>>(), 0);
    // Give B non-zero values so both factors get gradients.
    let model = model
        .map_projections(|site, mut p| {
            if let Some(a) = p.adapter.as_mut() {
                let dims = a.b.val().dims();
                a.b = secateur_elastic_lora::stable_param(site, "lora_B", Tensor::ones(dims, &device).mul_scalar(0.1));
            }
            Ok::<_, ()>(p)
        })
        .unwrap();
    let logits = model.forward(secateur_models::generate::token_tensor::<AD>(&batch.ids, &device), &batch.mask).unwrap();
    let loss = secateur_supernet::train::lm_loss(logits, &batch, 1.0);
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let before = secateur_supernet::train::clip_global_norm(&model, &mut grads, 1e-3);
    assert!(before > 1e-3);
    let after = secateur_supernet::train::clip_global_norm(&model, &mut grads, f64::INFINITY);
    assert!((after - 1e-3).abs() < 1e-6, "norm after clipping {after}");
}
