//! The projection-site API that downstream crates build on.

mod common;

use burn::module::Module;
use burn::prelude::*;
use common::{B, fixtures, reference};
use secateur_models::generate::token_tensor;
use secateur_models::{Dense, DenseLm, Projection, Site, SiteKind};

/// A projection that records which site it is and scales its output.
#[derive(Module, Debug)]
struct Scaled<B: Backend> {
    inner: Dense<B>,
    factor: f64,
}

impl<B: Backend> Projection<B> for Scaled<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.inner.forward(x).mul_scalar(self.factor)
    }
}

#[test]
fn sites_are_named_and_shaped_per_family() {
    let device = Default::default();
    let llama = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let sites = llama.sites();
    assert_eq!(sites.len(), 2 * 7);
    assert_eq!(sites[0], (Site::new(0, SiteKind::Q), [32, 32]));
    assert_eq!(sites[1], (Site::new(0, SiteKind::K), [16, 32]));
    assert_eq!(sites[6], (Site::new(0, SiteKind::Down), [32, 48]));
    // The sites the model reports are the shapes of the tensors it holds.
    for ((site, shape), (site2, p)) in sites.iter().zip(llama.projections()) {
        assert_eq!(*site, site2);
        assert_eq!(*shape, p.shape());
    }
    assert_eq!(llama.spec().hf_module(1, SiteKind::V), "model.layers.1.self_attn.v_proj");

    let neox = DenseLm::<B>::load(&fixtures().join("neox_parallel"), &device).unwrap();
    assert_eq!(neox.sites()[0], (Site::new(0, SiteKind::Qkv), [96, 32]));
    assert_eq!(neox.spec().hf_module(0, SiteKind::Qkv), "gpt_neox.layers.0.attention.query_key_value");
}

#[test]
fn parameter_count_matches_transformers() {
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("summary.json")).unwrap()).unwrap();
    let device = Default::default();
    for variant in common::VARIANTS {
        let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
        let expected = summary["variants"][variant]["params"].as_u64().unwrap() as usize;
        assert_eq!(model.num_params(), expected, "{variant}");
    }
}

#[test]
fn swapping_projections_changes_the_model_exactly_where_asked() {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let r = reference("llama_gqa");
    let base: Vec<f32> = model.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
    let mut seen = Vec::new();
    let identity = model
        .clone()
        .map_projections(|site, inner| {
            seen.push(site);
            Ok::<_, ()>(Scaled { inner, factor: 1.0 })
        })
        .unwrap();
    assert_eq!(seen.len(), 14);
    let same: Vec<f32> = identity.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
    assert_eq!(base, same);
    // Zeroing the last block's down projection must change the logits.
    let zeroed = model
        .map_projections(|site, inner| {
            let factor = if site == Site::new(1, SiteKind::Down) { 0.0 } else { 1.0 };
            Ok::<_, ()>(Scaled { inner, factor })
        })
        .unwrap();
    let changed: Vec<f32> = zeroed.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
    assert!(base.iter().zip(&changed).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn save_new_round_trips_every_family() {
    let device = Default::default();
    for variant in common::VARIANTS {
        let dir = fixtures().join(variant);
        let model = DenseLm::<B>::load(&dir, &device).unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        secateur_models::weights::save_new(&model, &config, tmp.path()).unwrap();
        let again = DenseLm::<B>::load(tmp.path(), &device).unwrap();
        let r = reference(variant);
        let a: Vec<f32> = model.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
        let b: Vec<f32> = again.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
        assert_eq!(a, b, "{variant}");
    }
}
