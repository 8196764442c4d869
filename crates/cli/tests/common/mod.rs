//! Helpers shared by the CLI's test files.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A checkpoint of the models crate's fixtures.
pub fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(variant)
}

/// Runs the binary in `cwd` (or here): success, stdout, stderr.
pub fn secateur_in(cwd: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secateur"));
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the binary: success, stdout, stderr.
pub fn secateur(args: &[&str]) -> (bool, String, String) {
    secateur_in(None, args)
}

/// `n` small LLM-Adapters JSONL records (arithmetic word problems) in `dir`, with or without
/// their `answer` field.
pub fn records(dir: &Path, n: usize, answer: bool) -> PathBuf {
    let path = dir.join(format!("data-{n}-{answer}.jsonl"));
    let mut lines = String::new();
    for i in 0..n {
        let (a, b) = (i % 7 + 1, i % 5 + 2);
        let mut r = serde_json::json!({"instruction": format!("the cat has {a} and {b}"), "input": "", "output": format!("two {}", a + b)});
        if answer {
            r["answer"] = serde_json::json!(format!("{}", a + b));
        }
        lines += &format!("{r}\n");
    }
    std::fs::write(&path, lines).unwrap();
    path
}
