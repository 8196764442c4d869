//! Shears from Rust: Wanda sparsity, LoRA and NLS on the embedded tiny LLaMA, in one call.
//!
//! `cargo run --release --example shears` (add `--features secateur/cuda` and use
//! `secateur::CudaAutodiff` to train on a GPU).
//!
//! The settings are small (one epoch on a few hundred examples) so that it runs in under a
//! minute: its numbers show the API, not the method; the `secateur` defaults train for three
//! epochs on 2000 examples (see `docs/results/`).

use secateur::{CpuAutodiff, ShearsConfig, Stderr, shears};

fn main() -> Result<(), secateur::PipelineError> {
    let config = ShearsConfig {
        sparsity: 0.5,
        epochs: 1,
        train_size: Some(320),
        test_size: 40,
        out: Some("runs/example-shears".into()),
        force: true,
        ..Default::default()
    };
    let result = shears::<CpuAutodiff>(&config, &Default::default(), &Stderr)?;
    println!("{}", result.table);
    let best = result.rows.iter().max_by(|a, b| a.accuracy.total_cmp(&b.accuracy)).expect("rows");
    println!("best: {} ({:.1}%)", best.name, best.accuracy * 100.0);
    Ok(())
}
