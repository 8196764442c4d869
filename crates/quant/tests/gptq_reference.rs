//! GPTQ against an independent PyTorch implementation (scripts/gptq_reference.py, written from
//! the paper and the reference `fasterquant`), on the random-weight fixtures with fixed
//! calibration ids: codes, scales, zero points, and the reconstruction error against RTN's.

use std::path::PathBuf;

use safetensors::SafeTensors;
use secateur_models::generate::token_tensor;
use secateur_models::{Cpu, DenseLm, Projection};
use secateur_quant::checkpoint::{QuantMeta, load_quantized, quant_config, write_quantized_with};
use secateur_quant::gptq::unpermute_columns;
use secateur_quant::{GptqConfig, QuantConfig, gptq_model};
use secateur_sparsity::{Pattern, PruneConfig, ScoreMethod, prune};

type B = Cpu;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

fn calibration() -> Vec<Vec<u32>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures/calibration.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap_or_else(|_| panic!("{name}")).data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn logits<P: Projection<B>>(m: &secateur_models::CausalLm<B, P>) -> Vec<f32> {
    let ids = vec![vec![3u32, 17, 42, 5, 88, 23, 61], vec![9, 31, 77, 2, 54, 19, 1]];
    let mask = vec![vec![true; 7], vec![true, true, true, true, true, false, false]];
    m.forward(token_tensor::<B>(&ids, &Default::default()), &mask).unwrap().into_data().to_vec().unwrap()
}

/// `rtn_bound`: every layer's reconstruction error is at most round-to-nearest's (else only the
/// model's total is).
fn check(name: &str, rtn_bound: bool) {
    let bytes = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/gptq_{name}.safetensors"))).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| meta[k].clone();
    let group: i64 = get("group_size").parse().unwrap();
    let cfg = GptqConfig {
        quant: QuantConfig { bits: get("bits").parse().unwrap(), group_size: (group > 0).then_some(group as usize) },
        damp: 0.01,
        block_size: get("block_size").parse().unwrap(),
        act_order: get("act_order") == "True",
        static_groups: get("static_groups") == "True",
    };
    let variant = get("model");
    let device = Default::default();
    let mut model = DenseLm::<B>::load(&models().join(&variant), &device).unwrap();
    let sparsity: f64 = get("sparsity").parse().unwrap();
    if sparsity > 0.0 {
        let pc = PruneConfig {
            method: ScoreMethod::Magnitude,
            pattern: Pattern::Unstructured { ratio: sparsity },
            batch_size: 1,
            progress: false,
        };
        model = prune(model, &[], &pc).unwrap().model;
    }
    let zeros_before: Vec<Vec<bool>> = model
        .projections()
        .iter()
        .map(|(_, d)| d.weight.val().into_data().to_vec::<f32>().unwrap().iter().map(|v| *v == 0.0).collect())
        .collect();
    let spec = model.spec().clone();
    // Batches of 3 sequences of unequal lengths: padding must not reach the Hessians.
    let out = gptq_model(model, &calibration(), &cfg, 3, false).unwrap();
    let (mut codes, mut differ, mut zero_differ, mut groups) = (0usize, 0usize, 0usize, 0usize);
    let mut worse = Vec::new();
    for (((site, p), report), zeros) in out.model.projections().iter().zip(&out.sites).zip(&zeros_before) {
        let module = spec.hf_module(site.layer, site.kind);
        let (o, i) = (p.packed.out_features, p.packed.in_features);
        // Ours in input order; the reference's codes are in its storage order.
        let ours = p.checkpoint_packed().unwrap().unpack();
        let want_q = st.tensor(&format!("q.{module}")).unwrap().data().to_vec();
        let want_q = match st.tensor(&format!("perm.{module}")) {
            Ok(t) => {
                let perm: Vec<usize> = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
                assert!(p.perm.is_some(), "{name} {module}: act-order expected");
                unpermute_columns(&want_q, i, &perm)
            }
            Err(_) => want_q,
        };
        assert_eq!(want_q.len(), o * i, "{name} {module}");
        codes += want_q.len();
        differ += want_q.iter().zip(&ours.q).filter(|(a, b)| a != b).count();
        let (want_s, want_z) = (f32s(&st, &format!("scale.{module}")), st.tensor(&format!("zero.{module}")).unwrap().data().to_vec());
        assert_eq!(want_s.len(), ours.scales.len(), "{name} {module}: groups");
        groups += want_s.len();
        for (a, b) in want_s.iter().zip(&ours.scales) {
            // Within one f16 step of each other (the fits see weights that may differ by float
            // summation order after the error feedback).
            let ulp = half::f16::from_f32(*a).to_f32() * (1.0 / 1024.0);
            assert!((a - b).abs() <= ulp * 1.01, "{name} {module}: scale {a} vs {b}");
        }
        zero_differ += want_z.iter().zip(&ours.zeros).filter(|(a, b)| a != b).count();
        if report.gptq_error > report.rtn_error {
            worse.push(format!("{module}: GPTQ {} vs RTN {}", report.gptq_error, report.rtn_error));
        }
        let deq = p.dequantized();
        for (k, z) in zeros.iter().enumerate() {
            if *z {
                assert_eq!(deq[k], 0.0, "{name} {module}[{k}]: a zero of the base was refilled");
            }
        }
    }
    println!("{name}: {differ} of {codes} codes and {zero_differ} of {groups} zero points differ from the reference");
    assert!(differ * 1000 <= codes, "{name}: {differ} of {codes} codes differ");
    let (total_g, total_r) = out.sites.iter().fold((0.0, 0.0), |(g, r), s| (g + s.gptq_error, r + s.rtn_error));
    println!("{name}: reconstruction error {total_g:.4} against round-to-nearest's {total_r:.4}; layers above it: {worse:?}");
    assert!(total_g < total_r, "{name}: GPTQ {total_g} vs RTN {total_r} over the model");
    if rtn_bound {
        assert!(worse.is_empty(), "{name}: reconstruction error worse than round-to-nearest's: {worse:?}");
    }
    assert!(zero_differ * 100 <= groups.max(100), "{name}: {zero_differ} of {groups} zero points differ");

    // The checkpoint (act-order g_idx included) loads back to the same model.
    let tmp = tempfile::tempdir().unwrap();
    let meta = QuantMeta { damp: Some(cfg.damp), static_groups: cfg.static_groups };
    write_quantized_with(&models().join(&variant), tmp.path(), &out.model, &meta).unwrap();
    assert_eq!(quant_config(tmp.path()).unwrap(), Some(cfg.quant));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["desc_act"], serde_json::json!(cfg.act_order && !cfg.static_groups && group > 0));
    let loaded = load_quantized::<B>(tmp.path(), &device).unwrap();
    assert_eq!(logits(&out.model), logits(&loaded), "{name}: the written checkpoint is the quantized model");
}

#[test]
fn gptq_llama_groups_match_the_reference() {
    check("llama_gqa_g16", true);
}

#[test]
fn gptq_act_order_matches_the_reference() {
    check("llama_gqa_g16_act", true);
}

#[test]
fn gptq_two_bits_static_groups_small_blocks_match_the_reference() {
    check("llama_gqa_2bit_static_act_b8", true);
}

#[test]
fn gptq_on_a_sparse_base_keeps_its_zeros_and_matches_the_reference() {
    check("llama_gqa_sparse50_g16", true);
}

/// Act-order on the sparse base: the codes still equal the reference's and the model's error is
/// below round-to-nearest's, but on 2 of the 14 layers (16- and 32-row q/k/v of this fixture)
/// GPTQ ends 3-10% above round-to-nearest, in the reference as in secateur: the act-order groups
/// hold other columns than RTN's contiguous ones, and the masked error feedback is greedy.
#[test]
fn gptq_act_order_on_a_sparse_base_keeps_its_zeros_and_matches_the_reference() {
    check("llama_gqa_sparse50_g16_act", false);
}

#[test]
fn gptq_neox_groups_inside_blocks_match_the_reference() {
    check("neox_parallel_g8_b16", true);
}

#[test]
fn gptq_bloom_per_channel_act_order_matches_the_reference() {
    check("bloom_8bit_channel_act", true);
}
