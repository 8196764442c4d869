//! Importance reordering leaves every family's function unchanged.

use std::path::PathBuf;

use secateur_models::generate::token_tensor;
use secateur_models::{Cpu, DenseLm, PositionKind};
use secateur_supernet::reorder::{descending, importance, reorder};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

const VARIANTS: &[&str] = &[
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

fn logits(m: &DenseLm<Cpu>) -> Vec<f32> {
    let ids = vec![vec![3u32, 17, 42, 5, 88, 23, 61], vec![9, 31, 77, 2, 54, 19, 4]];
    let mask = vec![vec![true; 7], vec![true, true, true, true, true, false, false]];
    m.forward(token_tensor::<Cpu>(&ids, &Default::default()), &mask).unwrap().into_data().to_vec().unwrap()
}

#[test]
fn reordered_models_compute_the_same_logits() {
    let calib: Vec<Vec<u32>> = (0..6).map(|s| (0..9).map(|t| ((s * 13 + t * 7) % 90 + 3) as u32).collect()).collect();
    for variant in VARIANTS {
        let model = DenseLm::<Cpu>::load(&fixtures().join(variant), &Default::default()).unwrap();
        let before = logits(&model);
        let imp = importance(&model, &calib, 4).unwrap();
        assert_eq!(imp.neurons[0].len(), model.spec().intermediate_size);
        assert_eq!(imp.groups[0].len(), model.spec().num_kv_heads);
        assert!(imp.blocks.iter().all(|b| b.is_finite() && *b >= 0.0));
        let alibi = matches!(model.spec().position, PositionKind::Alibi { .. });
        let reordered = reorder(model.clone(), &imp, !alibi).unwrap();
        let after = logits(&reordered);
        let d = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{variant}: reordering changed the logits by {d}");
        // The weights really moved, and the most important neuron now comes first.
        let w0: Vec<f32> = reordered.blocks[0].mlp_up.weight.val().into_data().to_vec().unwrap();
        let w1: Vec<f32> = model.blocks[0].mlp_up.weight.val().into_data().to_vec().unwrap();
        assert_ne!(w0, w1, "{variant}");
        let again = importance(&reordered, &calib, 4).unwrap();
        assert_eq!(descending(&again.neurons[0])[0], 0, "{variant}");
        // Embedding channels moved too, most important first.
        assert_eq!(imp.channels.len(), model.spec().hidden_size);
        let e0: Vec<f32> = reordered.embed.val().into_data().to_vec().unwrap();
        assert_ne!(e0, model.embed.val().into_data().to_vec::<f32>().unwrap(), "{variant}");
        assert_eq!(descending(&again.channels)[0], 0, "{variant}");
        if alibi {
            assert!(reorder(model, &imp, true).is_err(), "{variant}: ALiBi heads must not be reordered");
        } else if model.spec().num_kv_heads > 1 {
            assert_eq!(descending(&again.groups[0])[0], 0, "{variant}");
        }
    }
}
