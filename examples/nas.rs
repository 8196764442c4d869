//! Two-stage NAS from Rust: a sandwich-trained super-network of the embedded tiny LLaMA, searched
//! with NSGA-II (validation loss against parameters); the front is extracted into standalone
//! checkpoints under `runs/example-nas/`.
//!
//! `cargo run --release --example nas`
//!
//! The settings are small (one epoch on a few hundred examples) so that it runs in under a
//! minute: its numbers show the API, not the method; the `secateur` defaults train for three
//! epochs on 2000 examples (see `docs/results/`).

use secateur::pipelines::NasStrategy;
use secateur::{CpuAutodiff, NasConfig, Stderr, nas};

fn main() -> Result<(), secateur::PipelineError> {
    let mut config = NasConfig { strategy: NasStrategy::Sandwich, budget: 8, ..Default::default() };
    config.common.epochs = 1;
    config.common.train_size = Some(160);
    config.common.val_size = 20;
    config.common.test_size = 20;
    config.common.out = Some("runs/example-nas".into());
    config.common.force = true;
    let result = nas::<CpuAutodiff>(&config, &Default::default(), &Stderr)?;
    println!("{}", result.table);
    for row in &result.rows {
        println!("{}: {} parameters, {}", row.name, row.parameters, row.dir.display());
    }
    Ok(())
}
