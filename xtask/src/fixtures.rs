//! `cargo xtask fixtures`: the reference checkpoints, logits, Wanda masks, PEFT adapters and
//! sub-networks, made by transformers and PEFT (`scripts/make_*.py`, pinned in
//! `scripts/requirements.txt`).

use std::process::Command;

const SCRIPTS: [&str; 4] = ["make_fixtures.py", "make_wanda_fixtures.py", "make_peft_fixtures.py", "make_subnet_fixtures.py"];

pub fn run() -> bool {
    SCRIPTS.iter().all(|s| crate::run(Command::new("python3").arg(format!("scripts/{s}"))))
}
