//! `cargo xtask pretrain-tiny`: runs `examples/pretrain_tiny.rs` (release build), which
//! pretrains the tiny LLaMA of the embedded default and writes it as a Hugging Face checkpoint.

use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Output checkpoint directory (default: `assets/tiny-llama`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: &Args) -> bool {
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-p", "secateur", "--example", "pretrain_tiny", "--", "--steps", &args.steps.to_string()]);
    if let Some(out) = &args.out {
        cmd.arg("--out").arg(out);
    }
    crate::run(&mut cmd)
}
