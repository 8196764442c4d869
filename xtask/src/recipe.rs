//! `cargo xtask recipe <name>`: the papers' tables at small scale, on the embedded default, each
//! run with `--resume` (a killed recipe continues where it stopped):
//!
//! - `sqft`: all SQFT pipelines with their baselines;
//! - `shears`: the Shears pipeline;
//! - `nas`: NAS with every sampler, with and without importance reordering, then a summary and
//!   the Pareto plot of test accuracy against parameters;
//! - `lonas`: LoNAS (elastic LoRA with per-block widths and ranks): maximal, heuristic and
//!   NSGA-II sub-networks with parameters, MACs, accuracy and measured speed-up.

use std::process::Command;

use crate::nas_summary::{nas_summary, pareto_svg};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Recipe {
    Sqft,
    Shears,
    Nas,
    Lonas,
}

/// `cargo run --release -p secateur-cli -- <args> --out <out> --resume`.
fn secateur(args: &[&str], out: &str) -> bool {
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-p", "secateur-cli", "--"]).args(args).args(["--out", out, "--resume"]);
    let ok = crate::run(&mut cmd);
    if ok {
        eprintln!("table: {out}/report.md");
    }
    ok
}

pub fn run(recipe: Recipe) -> bool {
    match recipe {
        Recipe::Sqft => secateur(&["sqft", "--pipeline", "all"], "runs/recipe-sqft"),
        Recipe::Shears => secateur(&["shears"], "runs/recipe-shears"),
        Recipe::Lonas => secateur(&["nas", "--lora", "--per-layer", "--strategy", "sandwich", "--budget", "24"], "runs/recipe-lonas"),
        Recipe::Nas => {
            let root = crate::root();
            let mut ok = true;
            let mut tables = String::new();
            let mut runs = Vec::new();
            for strategy in ["sandwich", "random", "grid-params", "calibrate-mag"] {
                for importance in [false, true] {
                    let name = format!("{strategy}{}", if importance { "-importance" } else { "" });
                    let out = format!("runs/recipe-nas/{name}");
                    let mut args = vec!["nas", "--strategy", strategy, "--epochs", "1"];
                    if importance {
                        args.push("--importance");
                    }
                    ok &= secateur(&args, &out);
                    tables += &std::fs::read_to_string(root.join(&out).join("report.md")).unwrap_or_default();
                    tables.push('\n');
                    if let Ok(text) = std::fs::read_to_string(root.join(&out).join("report.json"))
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    {
                        runs.push((name, v));
                    }
                }
            }
            let _ = std::fs::write(root.join("runs/recipe-nas/report.md"), format!("{}\n{tables}", nas_summary(&runs)));
            let _ = std::fs::write(root.join("runs/recipe-nas/pareto.svg"), pareto_svg(&runs));
            eprintln!("table: runs/recipe-nas/report.md, plot: runs/recipe-nas/pareto.svg");
            ok
        }
    }
}
