//! Adapters against stock PEFT (fixtures from scripts/make_peft_fixtures.py).

use std::path::PathBuf;

use burn::prelude::*;
use safetensors::tensor::SafeTensors;
use secateur_elastic_lora::peft::{export_peft, import_peft, merge};
use secateur_elastic_lora::{LoraConfig, Scaling, SearchSpace, SubnetConfig, attach};
use secateur_models::generate::token_tensor;
use secateur_models::{Cpu, DenseLm, Projection};

type B = Cpu;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}
fn peft_dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("peft_{variant}"))
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Right-padded reference inputs of the models fixture.
fn inputs(variant: &str) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let bytes = std::fs::read(models().join(variant).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let i64s =
        |n: &str| -> Vec<i64> { st.tensor(n).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect() };
    let s = st.tensor("input_ids").unwrap().shape()[1];
    let ids = i64s("input_ids").chunks(s).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    let mask = i64s("attention_mask").chunks(s).map(|r| r.iter().map(|&x| x != 0).collect()).collect();
    (ids, mask)
}

fn logits<P: Projection<B>>(model: &secateur_models::CausalLm<B, P>, variant: &str) -> Vec<f32> {
    let (ids, mask) = inputs(variant);
    model.forward(token_tensor::<B>(&ids, &Default::default()), &mask).unwrap().into_data().to_vec().unwrap()
}

fn max_diff_real(a: &[f32], b: &[f32], mask: &[Vec<bool>], vocab: usize) -> f32 {
    let s = mask[0].len();
    let mut worst = 0f32;
    for (bi, row) in mask.iter().enumerate() {
        for (t, &real) in row.iter().enumerate() {
            if real {
                let at = (bi * s + t) * vocab;
                for i in at..at + vocab {
                    worst = worst.max((a[i] - b[i]).abs());
                }
            }
        }
    }
    worst
}

#[test]
fn imported_peft_adapters_give_peft_logits_and_merge_like_peft() {
    for variant in ["llama_gqa", "neox_parallel"] {
        let device = Default::default();
        let base = DenseLm::<B>::load(&models().join(variant), &device).unwrap();
        let vocab = base.spec().vocab_size;
        let adapted = import_peft(base, &peft_dir(variant), &device).unwrap();
        let bytes = std::fs::read(peft_dir(variant).join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, mask) = inputs(variant);
        let ours = logits(&adapted, variant);
        let d = max_diff_real(&ours, &f32s(&st, "logits"), &mask, vocab);
        assert!(d <= 1e-4, "{variant}: adapted logits differ from PEFT by {d}");

        let merged = merge(adapted);
        let d = max_diff_real(&logits(&merged, variant), &ours, &mask, vocab);
        assert!(d <= 1e-4, "{variant}: merged logits differ from unmerged by {d}");
        let spec = merged.spec().clone();
        let mut checked = 0;
        for (site, p) in merged.projections() {
            let name = format!("merged.{}.weight", spec.hf_module(site.layer, site.kind));
            if st.tensor(&name).is_err() {
                continue;
            }
            let want = f32s(&st, &name);
            let got: Vec<f32> = p.weight.val().into_data().to_vec().unwrap();
            let d = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-5, "{variant} {name}: merged weight differs from PEFT's by {d}");
            checked += 1;
        }
        assert!(checked >= 4, "{variant}: only {checked} merged weights compared");
    }
}

#[test]
fn export_round_trips_peft_files_with_true_ranks() {
    let variant = "llama_gqa";
    let device = Default::default();
    let base = DenseLm::<B>::load(&models().join(variant), &device).unwrap();
    let adapted = import_peft(base.clone(), &peft_dir(variant), &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = export_peft(&adapted, tmp.path(), "llama_gqa").unwrap();

    // Same tensor names, shapes and values as PEFT's own file.
    let ours = std::fs::read(tmp.path().join("adapter_model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let theirs = std::fs::read(peft_dir(variant).join("adapter_model.safetensors")).unwrap();
    let theirs = SafeTensors::deserialize(&theirs).unwrap();
    let mut a: Vec<String> = ours.names().into_iter().map(String::from).collect();
    let mut b: Vec<String> = theirs.names().into_iter().map(String::from).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for n in &a {
        assert_eq!(ours.tensor(n).unwrap().shape(), theirs.tensor(n).unwrap().shape(), "{n}");
        assert_eq!(ours.tensor(n).unwrap().data(), theirs.tensor(n).unwrap().data(), "{n}");
    }
    // The config gives every module PEFT's rank and scale.
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["rank_pattern"]["model.layers.1.mlp.down_proj"], 4);
    assert_eq!(config["rank_pattern"]["model.layers.0.self_attn.k_proj"], 6);
    assert_eq!(config["alpha_pattern"]["model.layers.1.mlp.down_proj"], 12.0);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 10);
    // Re-importing the export gives the same model.
    let again = import_peft(base, tmp.path(), &device).unwrap();
    assert_eq!(logits(&again, variant), logits(&adapted, variant));
}

#[test]
fn elastic_rank_slices_the_super_adapter() {
    let variant = "llama_gqa";
    let device = Default::default();
    let base = DenseLm::<B>::load(&models().join(variant), &device).unwrap();
    let space = SearchSpace::preset(base.spec(), None, &[8, 6, 4]).unwrap();
    let cfg = LoraConfig { alpha: 16.0, scaling: Scaling::MaxRank, seed: 3 };
    let (adapted, ranks) = attach(base.clone(), &space, &cfg, &device).unwrap();
    // B starts at zero: the adapter is a no-op.
    assert_eq!(logits(&adapted, variant), logits(&base, variant));
    // Give B random values so that ranks matter.
    let adapted = adapted
        .map_projections(|_, mut p| {
            if let Some(ad) = p.adapter.as_mut() {
                let shape = ad.b.val().dims();
                ad.b = burn::module::Param::from_tensor(Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 0.5), &device));
            }
            Ok::<_, ()>(p)
        })
        .unwrap();
    let full = logits(&adapted, variant);
    ranks.apply(&space.heuristic()).unwrap(); // rank 6 everywhere
    let mid = logits(&adapted, variant);
    assert_ne!(full, mid);
    // Exported at rank 6 and re-imported (PEFT scale alpha'/6 with alpha' = 6·16/8): same logits.
    let tmp = tempfile::tempdir().unwrap();
    let config = export_peft(&adapted, tmp.path(), variant).unwrap();
    if let Ok(keep) = std::env::var("SECATEUR_KEEP_EXPORT") {
        // For checking by hand that stock PEFT loads the export (scripts/check_peft_export.py).
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(tmp.path().join(f), PathBuf::from(&keep).join(f)).unwrap();
        }
        std::fs::write(PathBuf::from(&keep).join("secateur_logits.json"), serde_json::to_string(&mid).unwrap()).unwrap();
    }
    assert_eq!(config["r"], 6);
    assert_eq!(config["lora_alpha"], 12.0);
    let sub = import_peft(base, tmp.path(), &device).unwrap();
    let d = logits(&sub, variant).iter().zip(&mid).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d <= 1e-5, "exported sub-adapter differs by {d}");
    // Every adapted site runs at the configured rank; an invalid config is rejected.
    assert!(ranks.ranks().values().all(|&r| r == 6));
    assert!(ranks.apply(&SubnetConfig(vec![3; space.groups.len()])).is_err());
}
