//! Shared helpers of the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::tensor::{Dtype, SafeTensors};

pub type B = secateur_models::Cpu;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub const VARIANTS: &[&str] = &[
    "llama_gqa",
    "llama_mha_tied_bias_llama3",
    "llama_linear_f16_sharded",
    "mistral_window",
    "neox_parallel",
    "neox_sequential",
    "bloom_4heads",
    "bloom_6heads_postln",
    "mpt_6heads_clip",
    "mpt_4heads",
];

/// Reference tensors written by scripts/make_fixtures.py.
pub struct Reference {
    pub ids: Vec<Vec<u32>>,
    pub mask: Vec<Vec<bool>>,
    /// `[batch][seq][vocab]` flattened, with its shape.
    pub logits: Vec<f32>,
    pub shape: [usize; 3],
    pub gen_prompt: Vec<u32>,
    pub gen_greedy: Vec<u32>,
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64);
    let v = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    (v, t.shape().to_vec())
}

pub fn reference(variant: &str) -> Reference {
    let bytes = std::fs::read(fixtures().join(variant).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = i64s(&st, "input_ids");
    let (mask, _) = i64s(&st, "attention_mask");
    let rows = |v: Vec<i64>| -> Vec<Vec<i64>> { v.chunks(shape[1]).map(|c| c.to_vec()).collect() };
    let lt = st.tensor("logits").unwrap();
    let logits: Vec<f32> = lt.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let ls = lt.shape();
    Reference {
        ids: rows(ids).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect(),
        mask: rows(mask).into_iter().map(|r| r.into_iter().map(|x| x != 0).collect()).collect(),
        logits,
        shape: [ls[0], ls[1], ls[2]],
        gen_prompt: i64s(&st, "gen_prompt").0.into_iter().map(|x| x as u32).collect(),
        gen_greedy: i64s(&st, "gen_greedy").0.into_iter().map(|x| x as u32).collect(),
    }
}
