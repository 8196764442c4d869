//! Project tasks: `cargo xtask <task>`.
//!
//! - `fixtures`: regenerate the models crate's reference fixtures with transformers
//!   (`python3 scripts/make_fixtures.py`; needs scripts/requirements.txt installed).
//! - `bench`: run the forward/decode benchmark and the PyTorch baseline of the same config.

use std::process::{Command, ExitCode};

fn run(cmd: &mut Command) -> bool {
    eprintln!("$ {cmd:?}");
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            false
        }
    }
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ok = match task.as_str() {
        "fixtures" => run(Command::new("python3").arg("scripts/make_fixtures.py").current_dir(root)),
        "bench" => {
            run(Command::new("cargo")
                .args(["bench", "-p", "secateur-models", "--bench", "forward"])
                .current_dir(root))
                && run(Command::new("python3").arg("scripts/bench_torch.py").current_dir(root))
        }
        _ => {
            eprintln!("usage: cargo xtask <fixtures|bench>");
            false
        }
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
