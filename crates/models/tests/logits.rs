//! Logits and greedy generation against transformers (fixtures from scripts/make_fixtures.py).

mod common;

use common::{fixtures, reference, B, VARIANTS};
use secateur_models::generate::token_tensor;
use secateur_models::{generate, DenseLm, GenerateOptions};

const TOL: f32 = 1e-4;

fn max_diff_at_real_tokens(variant: &str) -> f32 {
    let device = Default::default();
    let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
    let r = reference(variant);
    let logits = model
        .forward(token_tensor::<B>(&r.ids, &device), &r.mask)
        .unwrap();
    assert_eq!(logits.dims(), r.shape, "{variant}: logits shape");
    let ours: Vec<f32> = logits.into_data().to_vec().unwrap();
    let [_, s, v] = r.shape;
    let mut worst = 0f32;
    for (b, row) in r.mask.iter().enumerate() {
        for (t, &real) in row.iter().enumerate() {
            if !real {
                continue;
            }
            let at = (b * s + t) * v;
            for i in at..at + v {
                worst = worst.max((ours[i] - r.logits[i]).abs());
            }
        }
    }
    worst
}

#[test]
fn logits_match_transformers_for_every_variant() {
    let mut report = Vec::new();
    for variant in VARIANTS {
        let d = max_diff_at_real_tokens(variant);
        report.push(format!("{variant}: max |diff| = {d:.2e}"));
        assert!(d.is_finite() && d <= TOL, "{variant}: max |diff| {d} > {TOL}\n{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_cache() {
    let device = Default::default();
    for variant in VARIANTS {
        let model = DenseLm::<B>::load(&fixtures().join(variant), &device).unwrap();
        let r = reference(variant);
        for use_cache in [true, false] {
            let opts = GenerateOptions {
                max_new_tokens: r.gen_greedy.len(),
                use_cache,
                ..Default::default()
            };
            let out = generate(&model, &[r.gen_prompt.clone()], &opts, &device).unwrap();
            assert_eq!(out[0], r.gen_greedy, "{variant} (cache: {use_cache})");
        }
    }
}
