//! `cargo xtask bench`: prefill and decoding speed of the benchmark LLaMA (criterion), then the
//! PyTorch baseline of the same config, in one command.

use std::process::Command;

pub fn run() -> bool {
    crate::run(Command::new("cargo").args(["bench", "-p", "secateur-models", "--bench", "forward"]))
        && crate::run(Command::new("python3").arg("scripts/bench_torch.py"))
}
