//! Project tasks: `cargo xtask <task>`, one module per task, flags declared with clap
//! (`cargo xtask help <task>` lists them).
//!
//! - `fixtures`: regenerate the reference fixtures with transformers and PEFT
//!   (`scripts/make_*.py`; needs scripts/requirements.txt installed).
//! - `bench`: run the forward/decode benchmark and the PyTorch baseline of the same config.
//! - `bench-real`: secateur against PyTorch + PEFT and llama.cpp at SmolLM2-135M's scale, rows
//!   interleaved, into `docs/results/bench-real.{json,md}` (see [`bench_real`]).
//! - `recipe sqft | shears | nas | lonas`: the papers' tables at small scale on the embedded
//!   default, into `runs/recipe-<name>/report.md` (see [`recipe`]).
//! - `smollm2 fetch | prune | all`: the recipes on the real SmolLM2-135M-Instruct, into
//!   `docs/results/smollm2-*.md` (see [`smollm2`]).
//! - `pretrain-tiny`: pretrain the embedded tiny LLaMA (`examples/pretrain_tiny.rs`).

mod bench;
mod bench_real;
mod fixtures;
mod nas_summary;
mod pretrain;
mod recipe;
mod smollm2;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "secateur's project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the reference fixtures with transformers and PEFT.
    Fixtures,
    /// The forward / decode benchmark, then the PyTorch baseline of the same config.
    Bench,
    /// secateur vs PyTorch and llama.cpp at SmolLM2-135M's scale, into docs/results/bench-real.*.
    BenchReal(bench_real::Args),
    /// Run a paper's table at small scale on the embedded default.
    Recipe {
        #[arg(value_enum)]
        name: recipe::Recipe,
    },
    /// Pretrain the embedded tiny LLaMA on the generated corpus.
    PretrainTiny(pretrain::Args),
    /// The papers' recipes on the real SmolLM2-135M-Instruct (see [`smollm2`]).
    Smollm2(smollm2::Args),
}

/// Runs a command in the repository root, echoing it; whether it succeeded.
pub(crate) fn run(cmd: &mut Command) -> bool {
    let cmd = cmd.current_dir(root());
    eprintln!("$ {cmd:?}");
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            false
        }
    }
}

/// The repository root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> ExitCode {
    let ok = match Xtask::parse().task {
        Task::Fixtures => fixtures::run(),
        Task::Bench => bench::run(),
        Task::BenchReal(args) => bench_real::run(&args),
        Task::Recipe { name } => recipe::run(name),
        Task::PretrainTiny(args) => pretrain::run(&args),
        Task::Smollm2(args) => smollm2::run(&args),
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
