//! Project tasks: `cargo xtask <task>`.
//!
//! - `fixtures`: regenerate the reference fixtures with transformers and PEFT
//!   (`scripts/make_*.py`; needs scripts/requirements.txt installed).
//! - `bench`: run the forward/decode benchmark and the PyTorch baseline of the same config.
//! - `recipe sqft | shears | nas | lonas`: run all SQFT pipelines, the Shears pipeline, NAS with
//!   every sampler with and without importance reordering (tables, a summary and the Pareto plot
//!   of test accuracy against parameters), or LoNAS (elastic LoRA with per-block widths and ranks:
//!   maximal, heuristic and NSGA-II sub-networks with parameters, MACs, accuracy and measured
//!   speed-up), on the embedded default, into `runs/recipe-<name>/report.md`.
//! - `pretrain-tiny [--steps N] [--out DIR]`: pretrain the tiny LLaMA of `secateur shears`'s
//!   embedded default on the generated corpus (seeded and reproducible) and write it as a
//!   Hugging Face checkpoint (default `assets/tiny-llama`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::module::AutodiffModule;
use secateur_models::{ArchSpec, CpuAutodiff, DenseLm, TextTokenizer};
use secateur_supernet::toy;
use secateur_supernet::train::{TrainConfig, pretrain};

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Sequence length of pretraining chunks.
const SEQ: usize = 64;

fn pretrain_tiny(args: &[String]) -> Result<(), String> {
    let mut steps = 1500usize;
    let mut out = root().join("assets/tiny-llama");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--steps" => steps = it.next().and_then(|s| s.parse().ok()).ok_or("--steps N")?,
            "--out" => out = PathBuf::from(it.next().ok_or("--out DIR")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let tok_path = out.join("tokenizer.json");
    std::fs::write(&tok_path, serde_json::to_string(&toy::tokenizer_json()).unwrap()).map_err(|e| e.to_string())?;
    let tok = TextTokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;
    // The corpus, one stream with </s> between documents, cut into SEQ-token chunks.
    let mut stream = Vec::new();
    for doc in toy::corpus(20_000, 0) {
        stream.extend(tok.encode(&doc).map_err(|e| e.to_string())?);
        stream.push(toy::EOS);
    }
    let seqs: Vec<Vec<u32>> = stream.chunks_exact(SEQ).map(<[u32]>::to_vec).collect();
    let config = toy::tiny_llama_config();
    let spec = ArchSpec::from_config_value(&out.join("config.json"), config.clone()).map_err(|e| e.to_string())?;
    let device = Default::default();
    let model = DenseLm::<CpuAutodiff>::init_random(spec, 0.02, 0, &device);
    let cfg = TrainConfig {
        batch_size: 32,
        micro_batch_size: 32,
        lr: 3e-3,
        warmup_steps: 100,
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        seed: 0,
        progress: true,
        ..Default::default()
    };
    eprintln!("pretraining on {} chunks of {SEQ} tokens ({} tokens), {steps} steps", seqs.len(), stream.len());
    let clock = Instant::now();
    let (model, losses) = pretrain(model, &seqs, steps, &cfg).map_err(|e| e.to_string())?;
    let seconds = clock.elapsed().as_secs_f64();
    secateur_models::weights::save_new(&model.valid(), &config, &out).map_err(|e| e.to_string())?;
    let tail = &losses[losses.len().saturating_sub(50)..];
    let recipe = serde_json::json!({
        "recipe": "cargo xtask pretrain-tiny",
        "corpus": {"documents": 20000, "seed": 0, "tokens": stream.len(), "chunk": SEQ},
        "steps": steps,
        "train_config": cfg,
        "first_loss": losses.first(),
        "final_loss_mean_last_50": tail.iter().sum::<f64>() / tail.len() as f64,
        "seconds": seconds,
    });
    std::fs::write(out.join("pretrain.json"), serde_json::to_string_pretty(&recipe).unwrap()).map_err(|e| e.to_string())?;
    eprintln!("{}", serde_json::to_string_pretty(&recipe).unwrap());
    Ok(())
}

/// The front (NSGA-II rows) of a `secateur nas` report as (parameters, test accuracy %).
fn front_points(report: &serde_json::Value) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("nsga2")))
        .filter_map(|r| Some((r["parameters"].as_f64()?, r["test_accuracy"].as_f64()? * 100.0)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// One line per run: the front's size, parameter range, and test accuracy at its ends.
fn nas_summary(runs: &[(String, serde_json::Value)]) -> String {
    let mut t = String::from(
        "Summary (NAS-paper ablation): the NSGA-II front of each run, test accuracy of its extracted sub-networks.\n\n| Run | Front size | Parameters (min - max) | Accuracy at the smallest | Best accuracy | Mean accuracy |\n|---|---|---|---|---|---|\n",
    );
    for (name, report) in runs {
        let pts = front_points(report);
        if pts.is_empty() {
            continue;
        }
        let best = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
        t += &format!(
            "| {name} | {} | {:.0} - {:.0} | {:.1}% | {best:.1}% | {mean:.1}% |\n",
            pts.len(),
            pts[0].0,
            pts[pts.len() - 1].0,
            pts[0].1
        );
    }
    t
}

/// Test accuracy against parameters of every run's front, one coloured series per run.
fn pareto_svg(runs: &[(String, serde_json::Value)]) -> String {
    const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    let series: Vec<(&str, Vec<(f64, f64)>)> = runs.iter().map(|(n, r)| (n.as_str(), front_points(r))).collect();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let (w, h, m) = (720.0, 440.0, 60.0);
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = (0.0, all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1);
    let span = (x1 - x0).max(1.0);
    let px = |x: f64| m + (x - x0) / span * (w - 2.0 * m - 160.0);
    let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    svg += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m - 160.0,
        h - m,
        h - m
    );
    for k in 0..=4 {
        let (xv, yv) = (x0 + span * k as f64 / 4.0, y0 + (y1 - y0) * k as f64 / 4.0);
        svg += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}k</text>", px(xv), h - m + 16.0, xv / 1000.0);
        svg += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.0}%</text>\n", m - 6.0, py(yv) + 4.0);
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">parameters</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">test accuracy</text>\n",
        (w - 160.0) / 2.0,
        h - 18.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let dashed = if name.ends_with("importance") { " stroke-dasharray=\"4 3\"" } else { "" };
        let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        svg += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\"{dashed}/>\n", path.join(" "));
        for p in pts {
            svg += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>", px(p.0), py(p.1));
        }
        let ly = m + 16.0 * i as f64;
        svg += &format!(
            "\n<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\"{dashed}/><text x=\"{}\" y=\"{:.1}\">{name}</text>\n",
            w - 150.0,
            w - 130.0,
            w - 125.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned().unwrap_or_default();
    let root = root();
    let ok = match task.as_str() {
        "fixtures" => ["make_fixtures.py", "make_wanda_fixtures.py", "make_peft_fixtures.py", "make_subnet_fixtures.py"]
            .iter()
            .all(|s| run(Command::new("python3").arg(format!("scripts/{s}")).current_dir(&root))),
        "bench" => {
            run(Command::new("cargo").args(["bench", "-p", "secateur-models", "--bench", "forward"]).current_dir(&root))
                && run(Command::new("python3").arg("scripts/bench_torch.py").current_dir(&root))
        }
        "recipe" => match args.get(1).map(String::as_str) {
            Some(name @ ("sqft" | "shears")) => {
                let out = format!("runs/recipe-{name}");
                let mut cmd = Command::new("cargo");
                cmd.args(["run", "--release", "-p", "secateur-cli", "--", name, "--out", &out]);
                if name == "sqft" {
                    cmd.args(["--pipeline", "all"]);
                }
                // `--resume` continues a run made with these arguments, or starts one.
                cmd.arg("--resume");
                let ok = run(cmd.current_dir(&root));
                if ok {
                    eprintln!("table: {out}/report.md");
                }
                ok
            }
            Some("nas") => {
                // Every sampling strategy, with and without importance reordering.
                let mut ok = true;
                let mut tables = String::new();
                let mut runs = Vec::new();
                for strategy in ["sandwich", "random", "grid-params", "calibrate-mag"] {
                    for importance in [false, true] {
                        let name = format!("{strategy}{}", if importance { "-importance" } else { "" });
                        let out = format!("runs/recipe-nas/{name}");
                        let mut cmd = Command::new("cargo");
                        cmd.args([
                            "run",
                            "--release",
                            "-p",
                            "secateur-cli",
                            "--",
                            "nas",
                            "--strategy",
                            strategy,
                            "--epochs",
                            "1",
                            "--out",
                            &out,
                        ]);
                        if importance {
                            cmd.arg("--importance");
                        }
                        cmd.arg("--resume");
                        ok &= run(cmd.current_dir(&root));
                        tables += &std::fs::read_to_string(root.join(&out).join("report.md")).unwrap_or_default();
                        tables.push('\n');
                        if let Ok(text) = std::fs::read_to_string(root.join(&out).join("report.json"))
                            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                        {
                            runs.push((name, v));
                        }
                    }
                }
                let summary = nas_summary(&runs);
                let _ = std::fs::write(root.join("runs/recipe-nas/report.md"), format!("{summary}\n{tables}"));
                let _ = std::fs::write(root.join("runs/recipe-nas/pareto.svg"), pareto_svg(&runs));
                eprintln!("table: runs/recipe-nas/report.md, plot: runs/recipe-nas/pareto.svg");
                ok
            }
            Some("lonas") => {
                let out = "runs/recipe-lonas";
                let mut cmd = Command::new("cargo");
                cmd.args([
                    "run",
                    "--release",
                    "-p",
                    "secateur-cli",
                    "--",
                    "nas",
                    "--lora",
                    "--per-layer",
                    "--strategy",
                    "sandwich",
                    "--budget",
                    "24",
                    "--out",
                    out,
                ]);
                cmd.arg("--resume");
                let ok = run(cmd.current_dir(&root));
                if ok {
                    eprintln!("table: {out}/report.md");
                }
                ok
            }
            _ => {
                eprintln!("usage: cargo xtask recipe <sqft|shears|nas|lonas>");
                false
            }
        },
        "pretrain-tiny" => match pretrain_tiny(&args[1..]) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("pretrain-tiny: {e}");
                false
            }
        },
        _ => {
            eprintln!("usage: cargo xtask <fixtures|bench|recipe sqft|recipe shears|pretrain-tiny [--steps N] [--out DIR]>");
            false
        }
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
