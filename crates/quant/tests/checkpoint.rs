//! Quantized checkpoints: write, load back, run.

use std::path::PathBuf;

use burn::prelude::*;
use secateur_models::generate::token_tensor;
use secateur_models::{Cpu, DenseLm, Projection};
use secateur_quant::QuantConfig;
use secateur_quant::checkpoint::{load_quantized, quant_config, quantize_model, write_quantized};

type B = Cpu;

fn fixture(v: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(v)
}

fn logits<P: Projection<B>>(m: &secateur_models::CausalLm<B, P>) -> Vec<f32> {
    let ids = vec![vec![3u32, 17, 42, 5, 88, 23, 61], vec![9, 31, 77, 2, 54, 19, 1]];
    let mask = vec![vec![true; 7], vec![true, true, true, true, true, false, false]];
    m.forward(token_tensor::<B>(&ids, &Default::default()), &mask).unwrap().into_data().to_vec().unwrap()
}

#[test]
fn a_written_checkpoint_loads_back_to_the_same_model() {
    let device = Default::default();
    for (variant, cfg) in [
        ("llama_gqa", QuantConfig { bits: 4, group_size: Some(16) }),
        ("neox_parallel", QuantConfig { bits: 8, group_size: None }),
        ("llama_mha_tied_bias_llama3", QuantConfig { bits: 4, group_size: Some(8) }),
    ] {
        let dense = DenseLm::<B>::load(&fixture(variant), &device).unwrap();
        let reference = logits(&dense);
        let q = quantize_model(dense, cfg).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_quantized(&fixture(variant), tmp.path(), &q).unwrap();
        assert_eq!(quant_config(tmp.path()).unwrap(), Some(cfg));
        let loaded = load_quantized::<B>(tmp.path(), &device).unwrap();
        let (a, b) = (logits(&q), logits(&loaded));
        assert_eq!(a, b, "{variant}: the loaded checkpoint is the quantized model");
        assert_ne!(a, reference);
    }
}

#[test]
fn more_bits_stay_closer_to_the_dense_model() {
    let device = Default::default();
    let dense = DenseLm::<B>::load(&fixture("llama_gqa"), &device).unwrap();
    let reference = logits(&dense);
    let err = |bits| {
        let q = quantize_model(dense.clone(), QuantConfig { bits, group_size: Some(16) }).unwrap();
        logits(&q).iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    };
    let (e2, e4, e8) = (err(2), err(4), err(8));
    assert!(e8 < e4 / 4.0 && e4 < e2, "max logit changes: 2 bits {e2}, 4 bits {e4}, 8 bits {e8}");
}

#[test]
fn quantizing_a_sparse_model_keeps_its_zeros_and_shrinks_it() {
    let device = Default::default();
    let dense = DenseLm::<B>::load(&fixture("llama_gqa"), &device).unwrap();
    // Zero every other weight of every projection.
    let sparse = dense
        .map_projections(|_, mut d: secateur_models::Dense<B>| {
            let [o, i] = d.shape();
            let mask: Vec<f32> = (0..o * i).map(|k| (k % 2) as f32).collect();
            let m = Tensor::<B, 2>::from_data(TensorData::new(mask, [o, i]), &device);
            d.weight = burn::module::Param::from_tensor(d.weight.val() * m);
            Ok::<_, ()>(d)
        })
        .unwrap();
    let q = quantize_model(sparse.clone(), QuantConfig { bits: 4, group_size: Some(16) }).unwrap();
    for ((_, d), (_, ql)) in sparse.projections().iter().zip(q.projections()) {
        let w: Vec<f32> = d.weight.val().into_data().to_vec().unwrap();
        for (a, b) in w.iter().zip(ql.dequantized()) {
            if *a == 0.0 {
                assert_eq!(b, 0.0);
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let bytes = write_quantized(&fixture("llama_gqa"), tmp.path(), &q).unwrap();
    let f32_bytes = std::fs::metadata(fixture("llama_gqa").join("model.safetensors")).unwrap().len();
    assert!(bytes < f32_bytes, "{bytes} vs {f32_bytes}");
}
