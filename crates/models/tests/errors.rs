//! Bad input gives a typed error naming the file and the field or tensor at fault.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{B, fixtures};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use secateur_models::{DenseLm, ModelError, TextTokenizer};

fn copy_fixture(variant: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(variant);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join(variant)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

/// Rewrites `dir/model.safetensors` through `edit` (name -> (dtype, shape, bytes)).
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load(dir: &Path) -> ModelError {
    DenseLm::<B>::load(dir, &Default::default()).expect_err("loading should fail")
}

#[test]
fn missing_directory_names_config_file() {
    let err = load(Path::new("/nonexistent/secateur-model"));
    match &err {
        ModelError::Io { path, .. } => assert!(path.ends_with("config.json")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("/nonexistent/secateur-model/config.json"));
}

#[test]
fn invalid_json_is_reported_with_its_file() {
    let (_t, dir) = copy_fixture("llama_gqa");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(matches!(load(&dir), ModelError::Json { path, .. } if path.ends_with("config.json")));
}

#[test]
fn unsupported_model_type() {
    let (_t, dir) = copy_fixture("llama_gqa");
    edit_config(&dir, |v| v["model_type"] = "gpt2".into());
    match load(&dir) {
        ModelError::UnsupportedModelType { model_type, .. } => assert_eq!(model_type, "gpt2"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn config_fields_out_of_range_name_the_field() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("llama_gqa", Box::new(|v| v["num_key_value_heads"] = 3.into()), "num_key_value_heads"),
        ("llama_gqa", Box::new(|v| v["num_attention_heads"] = 0.into()), "num_attention_heads"),
        ("llama_gqa", Box::new(|v| v["rms_norm_eps"] = (-1.0).into()), "norm eps"),
        ("llama_gqa", Box::new(|v| v["hidden_act"] = "swoosh".into()), "hidden_act"),
        ("llama_gqa", Box::new(|v| v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0})), "rope_scaling.rope_type"),
        ("neox_parallel", Box::new(|v| v["rotary_pct"] = 0.0.into()), "rotary_pct"),
        ("bloom_4heads", Box::new(|v| v["n_head"] = 5.into()), "n_head"),
        ("mpt_4heads", Box::new(|v| v["attn_config"]["alibi"] = false.into()), "attn_config.alibi"),
        ("mpt_4heads", Box::new(|v| v["attn_config"]["clip_qkv"] = (-1.0).into()), "attn_config.clip_qkv"),
    ];
    for (variant, edit, field) in cases {
        let (_t, dir) = copy_fixture(variant);
        edit_config(&dir, edit);
        match load(&dir) {
            ModelError::InvalidConfig { field: f, path, .. } => {
                assert_eq!(f, field, "{variant}");
                assert!(path.ends_with("config.json"));
            }
            other => panic!("{variant}/{field}: unexpected {other:?}"),
        }
    }
}

#[test]
fn missing_field_is_a_json_error() {
    let (_t, dir) = copy_fixture("llama_gqa");
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let err = load(&dir);
    assert!(matches!(&err, ModelError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("hidden_size"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_fixture("llama_gqa");
    rewrite_weights(&dir, |t| {
        t.remove("model.layers.1.mlp.down_proj.weight");
    });
    match load(&dir) {
        ModelError::MissingTensor { name, path } => {
            assert_eq!(name, "model.layers.1.mlp.down_proj.weight");
            assert!(path.ends_with("model.safetensors"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let (_t, dir) = copy_fixture("neox_parallel");
    rewrite_weights(&dir, |t| {
        let e = t.get_mut("gpt_neox.layers.0.attention.query_key_value.weight").unwrap();
        e.1 = vec![e.1[1], e.1[0]];
    });
    match load(&dir) {
        ModelError::ShapeMismatch { name, expected, found, .. } => {
            assert_eq!(name, "gpt_neox.layers.0.attention.query_key_value.weight");
            assert_eq!(expected, vec![96, 32]);
            assert_eq!(found, vec![32, 96]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let (_t, dir) = copy_fixture("bloom_4heads");
    rewrite_weights(&dir, |t| {
        let e = t.get_mut("transformer.ln_f.weight").unwrap();
        e.0 = Dtype::I32;
    });
    match load(&dir) {
        ModelError::UnsupportedDtype { name, dtype, .. } => {
            assert_eq!(name, "transformer.ln_f.weight");
            assert_eq!(dtype, "I32");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn no_weights_and_truncated_weights() {
    let (_t, dir) = copy_fixture("mpt_4heads");
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load(&dir), ModelError::Safetensors { path, .. } if path == weights));
    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(load(&dir), ModelError::NoWeights { .. }));
}

#[test]
fn sharded_checkpoint_with_missing_shard() {
    let (_t, dir) = copy_fixture("llama_linear_f16_sharded");
    let shard = dir.join("model-00003-of-00010.safetensors");
    std::fs::remove_file(&shard).unwrap();
    assert!(matches!(load(&dir), ModelError::Io { path, .. } if path == shard));
}

#[test]
fn tokenizer_errors_name_the_file() {
    let (_t, dir) = copy_fixture("llama_gqa");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, "[]").unwrap();
    assert!(matches!(TextTokenizer::from_file(&path), Err(ModelError::Tokenizer { path: p, .. }) if p == path));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(TextTokenizer::from_file(&path), Err(ModelError::Io { .. })));
}

#[test]
fn input_errors() {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join("llama_gqa"), &device).unwrap();
    let ids = secateur_models::generate::token_tensor::<B>(&[vec![1, 2, 3]], &device);
    let err = model.forward(ids, &[vec![true, true]]).unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)));
    let opts = secateur_models::GenerateOptions::default();
    let err = secateur_models::generate(&model, &[vec![5000]], &opts, &device).unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
}
