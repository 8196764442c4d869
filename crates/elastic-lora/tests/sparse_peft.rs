//! SparsePEFT and QA-SparsePEFT: merges keep sparsity and quantization exactly.

use std::path::PathBuf;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use secateur_elastic_lora::sparse_peft::{SparsePeftLm, attach_sparse_peft, merge_quantized, merge_sparse};
use secateur_elastic_lora::{LoraConfig, SearchSpace, stable_param};
use secateur_models::generate::token_tensor;
use secateur_models::{Cpu, CpuAutodiff, Dense, DenseLm, Projection};
use secateur_quant::QuantConfig;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/llama_gqa")
}

/// The fixture with every other weight of every projection zeroed.
fn sparse<B: Backend>(device: &B::Device) -> DenseLm<B> {
    DenseLm::<B>::load(&fixture(), device)
        .unwrap()
        .map_projections(|_, mut d: Dense<B>| {
            let [o, i] = d.shape();
            let m: Vec<f32> = (0..o * i).map(|k| ((k / 3) % 2) as f32).collect();
            d.weight = Param::from_tensor((d.weight.val() * Tensor::<B, 2>::from_data(TensorData::new(m, [o, i]), device)).detach());
            Ok::<_, ()>(d)
        })
        .unwrap()
}

/// Random non-zero B factors, so that the adapters change the model.
fn randomize<B: Backend>(m: SparsePeftLm<B>, device: &B::Device) -> SparsePeftLm<B> {
    m.map_projections(|site, mut p| {
        if let Some(a) = p.adapter.as_mut() {
            let dims = a.b.val().dims();
            a.b = stable_param(site, "lora_B", Tensor::random(dims, Distribution::Normal(0.0, 0.3), device));
        }
        Ok::<_, ()>(p)
    })
    .unwrap()
}

fn logits<P: Projection<Cpu>>(m: &secateur_models::CausalLm<Cpu, P>, rows: usize) -> Vec<f32> {
    let ids: Vec<Vec<u32>> = (0..rows).map(|r| vec![3 + r as u32, 17, 42, 5, 88, 23]).collect();
    let mask = vec![vec![true; 6]; rows];
    m.forward(token_tensor::<Cpu>(&ids, &Default::default()), &mask).unwrap().into_data().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn sparse_peft_merge_keeps_the_zeros_and_the_logits() {
    let device = Default::default();
    let base = sparse::<Cpu>(&device);
    let space = SearchSpace::preset(base.spec(), None, &[8, 4]).unwrap();
    let (m, ranks) = attach_sparse_peft(base.clone(), &space, &LoraConfig { alpha: 16.0, ..Default::default() }, None, &device).unwrap();
    let m = randomize(m, &device);
    ranks.apply(&space.heuristic()).unwrap();
    let unmerged = logits(&m, 2);
    assert!(max_diff(&unmerged, &logits(&base, 2)) > 1e-2, "the adapters must matter");
    let merged = merge_sparse(m);
    let q0: Vec<f32> = merged.blocks[0].attn_in[0].weight.val().into_data().to_vec().unwrap();
    let b0: Vec<f32> = base.blocks[0].attn_in[0].weight.val().into_data().to_vec().unwrap();
    assert_ne!(q0, b0, "an adapted projection changes when merged");
    assert!(max_diff(&logits(&merged, 2), &unmerged) < 1e-4);
    for ((_, b), (_, w)) in base.projections().iter().zip(merged.projections()) {
        let (b, w): (Vec<f32>, Vec<f32>) = (b.weight.val().into_data().to_vec().unwrap(), w.weight.val().into_data().to_vec().unwrap());
        for (x, y) in b.iter().zip(&w) {
            assert_eq!(*x == 0.0, *y == 0.0, "zero positions must be the base's");
        }
    }
}

#[test]
fn qa_sparse_peft_merges_into_an_int4_model_with_the_same_forward() {
    let device = Default::default();
    let base = sparse::<Cpu>(&device);
    let space = SearchSpace::preset(base.spec(), None, &[8, 4]).unwrap();
    let qc = QuantConfig { bits: 4, group_size: Some(16) };
    let (m, _) = attach_sparse_peft(base.clone(), &space, &LoraConfig { alpha: 16.0, ..Default::default() }, Some(qc), &device).unwrap();
    let m = randomize(m, &device);
    let (qa8, qa1) = (logits(&m, 8), logits(&m, 1));
    let merged = merge_quantized(m).unwrap();
    // 8 rows: the dequantizing matmul, the same forward to rounding.
    assert!(max_diff(&logits(&merged, 8), &qa8) < 1e-4, "{}", max_diff(&logits(&merged, 8), &qa8));
    // 1 row: the INT4 decoding kernel, which quantizes its activations to int8 per block (as
    // llama.cpp does): the same forward up to that rounding.
    let one = logits(&merged, 1);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = one.iter().zip(&qa1).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(&qa1);
    // Measured 0.008-0.011 on this random model (its adapters draw from the backend's shared
    // random state, so the value varies with the tests running beside it).
    assert!(rel < 3e-2, "relative difference {rel}");
    for ((_, b), (_, q)) in base.projections().iter().zip(merged.projections()) {
        let b: Vec<f32> = b.weight.val().into_data().to_vec().unwrap();
        for (x, y) in b.iter().zip(q.dequantized()) {
            if *x == 0.0 {
                assert_eq!(y, 0.0, "a pruned weight stays zero in the INT4 model");
            }
        }
    }
}

#[test]
fn straight_through_gradients_equal_the_unquantized_gradients() {
    type AD = CpuAutodiff;
    let device = Default::default();
    let base = sparse::<AD>(&device);
    let space = SearchSpace::preset(base.spec(), None, &[4]).unwrap();
    let cfg = LoraConfig { alpha: 8.0, seed: 2, ..Default::default() };
    let (qa, _) = attach_sparse_peft(base, &space, &cfg, Some(QuantConfig { bits: 4, group_size: Some(16) }), &device).unwrap();
    // One layer; the same base values (the dequantized base), the same adapter; a loss linear in
    // the output, so the upstream gradient is the same and the STE must pass it through unchanged.
    let mut q = qa.blocks.into_iter().next().unwrap().attn_in.into_iter().next().unwrap();
    let a = q.adapter.as_mut().unwrap();
    let dims = a.b.val().dims();
    let vals: Vec<f32> = (0..dims[0] * dims[1]).map(|k| ((k * 13 % 7) as f32 - 3.0) / 10.0).collect();
    a.b = Param::from_tensor(Tensor::<AD, 2>::from_data(TensorData::new(vals, dims), &device));
    let mut p = q.clone();
    p.quant = None;
    let x = Tensor::<AD, 3>::random([2, 3, 32], Distribution::Normal(0.0, 1.0), &device);
    let g = Tensor::<AD, 3>::random([2, 3, 32], Distribution::Normal(0.0, 1.0), &device);
    let grads = |l: &secateur_elastic_lora::sparse_peft::SparsePeftLinear<AD>| {
        let loss = (l.forward(x.clone()) * g.clone()).sum();
        let gr = loss.backward();
        let a = l.adapter.as_ref().unwrap();
        let ga: Vec<f32> = a.a.val().grad(&gr).unwrap().into_data().to_vec().unwrap();
        let gb: Vec<f32> = a.b.val().grad(&gr).unwrap().into_data().to_vec().unwrap();
        (ga, gb)
    };
    let ((pa, pb), (qa_, qb)) = (grads(&p), grads(&q));
    assert!(pa.iter().any(|v| *v != 0.0) && pb.iter().any(|v| *v != 0.0));
    assert!(max_diff(&pa, &qa_) < 1e-5 && max_diff(&pb, &qb) < 1e-5, "{} {}", max_diff(&pa, &qa_), max_diff(&pb, &qb));
    // The forward values do differ: the quantized path is really quantized.
    assert!(
        max_diff(&p.forward(x.clone()).into_data().to_vec::<f32>().unwrap(), &q.forward(x).into_data().to_vec::<f32>().unwrap()) > 1e-4
    );
}
