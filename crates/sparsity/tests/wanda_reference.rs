//! Wanda masks against an independent reference (scripts/make_wanda_fixtures.py, following the
//! Wanda reference code on transformers models).

use std::path::PathBuf;

use safetensors::tensor::{Dtype, SafeTensors};
use secateur_models::{Cpu, DenseLm};
use secateur_sparsity::{Pattern, PruneConfig, ScoreMethod, prune};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Relative gap under which two scores count as a near-tie (f32 vs f64 statistics).
const NEAR_TIE: f64 = 1e-5;

fn check(variant: &str, pname: &str, pattern: Pattern) {
    let calib: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(fixtures().join("calibration.json")).unwrap()).unwrap();
    let model = DenseLm::<Cpu>::load(&models().join(variant), &Default::default()).unwrap();
    let spec = model.spec().clone();
    let cfg = PruneConfig {
        method: ScoreMethod::Wanda,
        pattern,
        batch_size: 3, // unequal lengths: padding must not count
        progress: false,
    };
    let out = prune(model, &calib, &cfg).unwrap();
    let bytes = std::fs::read(fixtures().join(format!("wanda_{variant}_{pname}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut mismatched = 0;
    let mut total = 0;
    for m in &out.masks {
        let module = spec.hf_module(m.site.layer, m.site.kind);
        let r = st.tensor(&format!("mask.{module}")).unwrap();
        assert_eq!(r.shape(), &m.shape, "{variant} {module}");
        assert_eq!(r.dtype(), Dtype::U8);
        let s = st.tensor(&format!("score.{module}")).unwrap();
        let scores: Vec<f64> = s.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        let [_, inp] = m.shape;
        for (i, (&want, &got)) in r.data().iter().zip(&m.keep).enumerate() {
            total += 1;
            if (want == 1) == got {
                continue;
            }
            mismatched += 1;
            // A mismatch is allowed only where the weight's score is within NEAR_TIE of another
            // score in its comparison group (the row, or its group of M).
            let group = match pattern {
                Pattern::Unstructured { .. } => (i / inp) * inp..(i / inp + 1) * inp,
                Pattern::NM { m, .. } => (i / m) * m..(i / m + 1) * m,
            };
            let near = group.filter(|&j| j != i).any(|j| (scores[j] - scores[i]).abs() <= NEAR_TIE * scores[i].abs().max(scores[j].abs()));
            assert!(near, "{variant} {pname} {module}[{i}]: mask differs without a near-tie");
        }
    }
    assert!(mismatched * 1000 <= total, "{variant} {pname}: {mismatched} of {total} differ");
    println!("{variant} {pname}: {mismatched} near-tie differences in {total} weights");
}

#[test]
fn wanda_unstructured_half_matches_reference() {
    for v in ["llama_gqa", "neox_parallel", "bloom_6heads_postln"] {
        check(v, "unstructured_0.5", Pattern::Unstructured { ratio: 0.5 });
    }
}

#[test]
fn wanda_two_four_matches_reference() {
    for v in ["llama_gqa", "neox_parallel", "bloom_6heads_postln"] {
        check(v, "nm_2_4", Pattern::NM { n: 2, m: 4 });
    }
}
