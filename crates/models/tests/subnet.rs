//! Elastic sub-networks: the sliced forward pass of the super-network and the extracted
//! standalone model agree, for every family.

mod common;

use common::{B, VARIANTS, fixtures, reference};
use secateur_models::extract::extract;
use secateur_models::generate::token_tensor;
use secateur_models::{DenseLm, Family, LayerStructure, SubnetStructure};

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

fn config_of(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Extracts `structure`, saves and reloads it, and checks its logits against the sliced
/// super-network's; returns the written config.
fn check_extraction(variant: &str, model: &DenseLm<B>, structure: &SubnetStructure) -> serde_json::Value {
    let device = Default::default();
    let (small, small_cfg) = extract(model, structure, &config_of(&fixtures().join(variant))).unwrap();
    assert!(small.num_params() < model.num_params(), "{variant}");
    let r = reference(variant);
    let sliced: Vec<f32> =
        model.forward_subnet(token_tensor::<B>(&r.ids, &device), &r.mask, structure).unwrap().into_data().to_vec().unwrap();
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
    small_cfg
}

#[test]
fn extracted_homogeneous_models_equal_the_sliced_super_network() {
    let device = Default::default();
    for variant in VARIANTS {
        let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
        let spec = model.spec().clone();
        let (width, groups) = (spec.intermediate_size / 2, spec.num_kv_heads.div_ceil(2));
        let layers: Vec<usize> = (0..spec.num_layers).filter(|l| *l != 0 || spec.num_layers == 1).collect();
        let structure = SubnetStructure {
            layers: layers.iter().map(|&layer| LayerStructure { layer, mlp_width: width, kv_groups: groups }).collect(),
            hidden_size: None,
        };
        let cfg = check_extraction(variant, &model, &structure);
        // LLaMA configs say all of this in Hugging Face's own fields; the fused-attention
        // families cannot give fewer heads a head size of hidden / heads, so they use the extension.
        let native = spec.family == Family::Llama || groups == spec.num_kv_heads && spec.family != Family::Bloom;
        assert_eq!(cfg.get("secateur_subnet").is_none(), native, "{variant}: {cfg}");
    }
}

#[test]
fn extracted_heterogeneous_models_with_a_narrower_embedding_equal_the_sliced_super_network() {
    let device = Default::default();
    for variant in VARIANTS {
        let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
        let spec = model.spec().clone();
        assert!(spec.num_layers >= 2, "{variant}");
        // Every block differs: the first keeps all groups and 3/4 of the MLP, the others half.
        let layers = (0..spec.num_layers)
            .map(|layer| LayerStructure {
                layer,
                mlp_width: if layer == 0 { spec.intermediate_size * 3 / 4 } else { spec.intermediate_size / 2 - layer },
                kv_groups: if layer == 0 { spec.num_kv_heads } else { spec.num_kv_heads.div_ceil(2) },
            })
            .collect();
        let structure = SubnetStructure { layers, hidden_size: Some(spec.hidden_size * 3 / 4) };
        let cfg = check_extraction(variant, &model, &structure);
        let ext = &cfg["secateur_subnet"];
        assert_eq!(ext["hidden_size"], spec.hidden_size * 3 / 4, "{variant}");
        assert_eq!(ext["layers"].as_array().unwrap().len(), spec.num_layers, "{variant}");
    }
}

#[test]
fn a_narrower_embedding_in_llama_stays_a_plain_hugging_face_config() {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let mut structure = SubnetStructure::full(model.spec());
    structure.hidden_size = Some(model.spec().hidden_size - 8);
    let cfg = check_extraction("llama_gqa", &model, &structure);
    assert!(cfg.get("secateur_subnet").is_none());
    assert_eq!(cfg["hidden_size"], model.spec().hidden_size - 8);
    assert_eq!(cfg["head_dim"], model.spec().head_dim);
}

#[test]
fn invalid_structures_are_rejected_with_a_reason() {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let ids = token_tensor::<B>(&[vec![1, 2, 3]], &device);
    let mask = vec![vec![true; 3]];
    let one =
        |layer, mlp_width, kv_groups| SubnetStructure { layers: vec![LayerStructure { layer, mlp_width, kv_groups }], hidden_size: None };
    let cases = [
        (SubnetStructure { layers: vec![], hidden_size: None }, "no block"),
        (one(5, 8, 1), "does not exist"),
        (one(0, 0, 1), "MLP width"),
        (one(0, 8, 3), "key/value groups"),
        (SubnetStructure { hidden_size: Some(0), ..one(0, 8, 1) }, "embedding width"),
        (SubnetStructure { hidden_size: Some(model.spec().hidden_size + 1), ..one(0, 8, 1) }, "embedding width"),
        (
            SubnetStructure {
                layers: vec![
                    LayerStructure { layer: 1, mlp_width: 8, kv_groups: 1 },
                    LayerStructure { layer: 0, mlp_width: 8, kv_groups: 1 },
                ],
                hidden_size: None,
            },
            "in order",
        ),
    ];
    for (s, reason) in cases {
        let err = model.forward_subnet(ids.clone(), &mask, &s).unwrap_err().to_string();
        assert!(err.contains(reason), "{err}");
        let err = extract(&model, &s, &config_of(&fixtures().join("llama_gqa"))).unwrap_err().to_string();
        assert!(err.contains(reason), "{err}");
    }
}

#[test]
fn a_bad_config_extension_is_a_typed_error_naming_the_field() {
    let mut cfg = config_of(&fixtures().join("neox_parallel"));
    let layers = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    let layer = serde_json::json!({"num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16});
    let path = std::path::Path::new("x/config.json");
    cfg["secateur_subnet"] = serde_json::json!({"hidden_size": 16, "layers": vec![layer.clone(); layers + 1]});
    let err = secateur_models::ArchSpec::from_config_value(path, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("secateur_subnet.layers") && err.contains("x/config.json"), "{err}");
    let mut bad = layer.clone();
    bad["num_key_value_heads"] = 1.into();
    cfg["secateur_subnet"] = serde_json::json!({"hidden_size": 16, "layers": vec![bad; layers]});
    let err = secateur_models::ArchSpec::from_config_value(path, cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("secateur_subnet.layers[0]"), "{err}");
    cfg["secateur_subnet"] = serde_json::json!({"hidden_size": 16, "layers": vec![layer; layers], "extra": 1});
    let err = secateur_models::ArchSpec::from_config_value(path, cfg).unwrap_err().to_string();
    assert!(err.contains("extra"), "{err}");
}

/// A sliced reference: the super-network variant, the structure, ids, mask and logits.
type SubnetReference = (String, SubnetStructure, Vec<Vec<u32>>, Vec<Vec<bool>>, Vec<f32>);

/// Reads `fixtures/subnets/<stem>.{json,safetensors}` written by scripts/make_subnet_fixtures.py.
fn subnet_reference(stem: &str) -> SubnetReference {
    use safetensors::tensor::SafeTensors;
    let dir = fixtures().join("subnets");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
    let structure: SubnetStructure = serde_json::from_value(meta["structure"].clone()).unwrap();
    let bytes = std::fs::read(dir.join(format!("{stem}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<Vec<i64>> {
        let t = st.tensor(name).unwrap();
        let v: Vec<i64> = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        v.chunks(t.shape()[1]).map(<[i64]>::to_vec).collect()
    };
    let ids = ints("input_ids").into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
    let mask = ints("attention_mask").into_iter().map(|r| r.into_iter().map(|x| x != 0).collect()).collect();
    let logits = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (meta["variant"].as_str().unwrap().to_string(), structure, ids, mask, logits)
}

#[test]
fn sub_networks_match_transformers_built_from_independently_sliced_weights() {
    let device = Default::default();
    for stem in ["llama_gqa-hetero", "llama_gqa-one-block", "llama_mha_tied_bias_llama3-hetero", "llama_mha_tied_bias_llama3-one-block"] {
        let (variant, structure, ids, mask, expected) = subnet_reference(stem);
        let model = DenseLm::<B>::load(&fixtures().join(&variant), &device).unwrap();
        let sliced: Vec<f32> =
            model.forward_subnet(token_tensor::<B>(&ids, &device), &mask, &structure).unwrap().into_data().to_vec().unwrap();
        let (small, _) = extract(&model, &structure, &config_of(&fixtures().join(&variant))).unwrap();
        let standalone: Vec<f32> = small.forward(token_tensor::<B>(&ids, &device), &mask).unwrap().into_data().to_vec().unwrap();
        // Compare real (unpadded) positions only.
        let vocab = model.spec().vocab_size;
        let seq = ids[0].len();
        for (name, got) in [("sliced", &sliced), ("extracted", &standalone)] {
            let mut worst = 0f32;
            for (b, row) in mask.iter().enumerate() {
                for (t, real) in row.iter().enumerate() {
                    if *real {
                        let at = (b * seq + t) * vocab;
                        worst = worst.max(max_diff(&got[at..at + vocab], &expected[at..at + vocab]));
                    }
                }
            }
            assert!(worst < 1e-4, "{stem} ({name}): max |diff| to transformers {worst}");
        }
    }
}
