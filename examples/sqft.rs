//! SQFT from Rust: QA-SparsePEFT on the embedded tiny LLaMA, merged into a sparse INT4 model.
//!
//! `cargo run --release --example sqft`
//!
//! The settings are small (one epoch on a few hundred examples) so that it runs in under a
//! minute: its numbers show the API, not the method; the `secateur` defaults train for three
//! epochs on 2000 examples (see `docs/results/`).

use secateur::pipelines::Pipeline;
use secateur::{CpuAutodiff, SqftConfig, Stderr, sqft};

fn main() -> Result<(), secateur::PipelineError> {
    let mut config = SqftConfig { pipeline: Pipeline::QaSparsepeft, bits: 4, group_size: 32, ..Default::default() };
    config.common.epochs = 1;
    config.common.train_size = Some(320);
    config.common.test_size = 40;
    config.common.out = Some("runs/example-sqft".into());
    config.common.force = true;
    let result = sqft::<CpuAutodiff>(&config, &Default::default(), &Stderr)?;
    println!("{}", result.table);
    // The merged model keeps the base's sparsity (its zeros stay zeros through the merge).
    let merged = result.rows.last().expect("rows");
    println!("{}: sparsity {:.1}%, {} bytes on disk", merged.name, merged.sparsity * 100.0, merged.size_bytes);
    Ok(())
}
