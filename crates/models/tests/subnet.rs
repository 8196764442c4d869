//! Elastic sub-networks: the sliced forward pass of the super-network and the extracted
//! standalone model agree, for every family.

mod common;

use common::{fixtures, reference, B, VARIANTS};
use secateur_models::extract::extract;
use secateur_models::generate::token_tensor;
use secateur_models::{DenseLm, Family, LayerStructure, PositionKind, SubnetStructure};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn the_full_structure_is_the_model() {
    let device = Default::default();
    for variant in VARIANTS {
        let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
        let r = reference(variant);
        let full: Vec<f32> = model.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
        let sub: Vec<f32> = model
            .forward_subnet(token_tensor::<B>(&r.ids, &device), &r.mask, &SubnetStructure::full(model.spec()))
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert!(max_diff(&full, &sub) < 1e-5, "{variant}");
    }
}

#[test]
fn extracted_models_equal_the_sliced_super_network() {
    let device = Default::default();
    for variant in VARIANTS {
        let dir = fixtures().join(variant);
        let model = DenseLm::<B>::load(&dir, &device).unwrap();
        let spec = model.spec().clone();
        let alibi = matches!(spec.position, PositionKind::Alibi { .. });
        let width = if spec.family == Family::Bloom { spec.intermediate_size } else { spec.intermediate_size / 2 };
        let groups = if spec.family == Family::Llama && !alibi { spec.num_kv_heads.div_ceil(2) } else { spec.num_kv_heads };
        let layers: Vec<usize> = (0..spec.num_layers).filter(|l| *l != 0 || spec.num_layers == 1).collect();
        let structure = SubnetStructure { layers: layers.iter().map(|&layer| LayerStructure { layer, mlp_width: width, kv_groups: groups }).collect() };
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let (small, small_cfg) = extract(&model, &structure, &config).unwrap();
        assert!(small.num_params() < model.num_params(), "{variant}");
        let r = reference(variant);
        let sliced: Vec<f32> = model.forward_subnet(token_tensor::<B>(&r.ids, &device), &r.mask, &structure).unwrap().into_data().to_vec().unwrap();
        // Saved and loaded back as an ordinary checkpoint with the smaller config.
        let tmp = tempfile::tempdir().unwrap();
        secateur_models::weights::save_new(&small, &small_cfg, tmp.path()).unwrap();
        let loaded = DenseLm::<B>::load(tmp.path(), &device).unwrap();
        assert_eq!(loaded.num_params(), small.num_params());
        let standalone: Vec<f32> = loaded.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
        let d = max_diff(&sliced, &standalone);
        assert!(d < 1e-5, "{variant}: extracted model differs from the sliced super-network by {d}");
        let full: Vec<f32> = model.forward(token_tensor::<B>(&r.ids, &device), &r.mask).unwrap().into_data().to_vec().unwrap();
        assert!(max_diff(&full, &sliced) > 1e-3, "{variant}: the sub-network should differ from the full model");
    }
}

#[test]
fn invalid_structures_are_rejected_with_a_reason() {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let ids = token_tensor::<B>(&[vec![1, 2, 3]], &device);
    let mask = vec![vec![true; 3]];
    let cases = [
        (SubnetStructure { layers: vec![] }, "no block"),
        (SubnetStructure { layers: vec![LayerStructure { layer: 5, mlp_width: 8, kv_groups: 1 }] }, "does not exist"),
        (SubnetStructure { layers: vec![LayerStructure { layer: 0, mlp_width: 0, kv_groups: 1 }] }, "MLP width"),
        (SubnetStructure { layers: vec![LayerStructure { layer: 0, mlp_width: 8, kv_groups: 3 }] }, "key/value groups"),
        (
            SubnetStructure {
                layers: vec![LayerStructure { layer: 1, mlp_width: 8, kv_groups: 1 }, LayerStructure { layer: 0, mlp_width: 8, kv_groups: 1 }],
            },
            "in order",
        ),
    ];
    for (s, reason) in cases {
        let err = model.forward_subnet(ids.clone(), &mask, &s).unwrap_err().to_string();
        assert!(err.contains(reason), "{err}");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("bloom_4heads/config.json")).unwrap()).unwrap();
    let bloom = DenseLm::<B>::load(&fixtures().join("bloom_4heads"), &device).unwrap();
    let s = SubnetStructure { layers: vec![LayerStructure { layer: 0, mlp_width: 64, kv_groups: 4 }] };
    assert!(extract(&bloom, &s, &config).unwrap_err().to_string().contains("MLP width"));
}
