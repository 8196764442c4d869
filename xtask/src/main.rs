//! Project tasks: `cargo xtask <task>`.
//!
//! - `fixtures`: regenerate the reference fixtures with transformers and PEFT
//!   (`scripts/make_*.py`; needs scripts/requirements.txt installed).
//! - `bench`: run the forward/decode benchmark and the PyTorch baseline of the same config.
//! - `recipe sqft | shears | nas`: run all SQFT pipelines, the Shears pipeline, or NAS with every
//!   sampler with and without importance reordering, on the embedded default, and write the
//!   combined table into `runs/recipe-<name>/report.md`.
//! - `pretrain-tiny [--steps N] [--out DIR]`: pretrain the tiny LLaMA of `secateur shears`'s
//!   embedded default on the generated corpus (seeded and reproducible) and write it as a
//!   Hugging Face checkpoint (default `assets/tiny-llama`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::module::AutodiffModule;
use secateur_models::{ArchSpec, CpuAutodiff, DenseLm, TextTokenizer};
use secateur_supernet::toy;
use secateur_supernet::train::{pretrain, TrainConfig};

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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned().unwrap_or_default();
    let root = root();
    let ok = match task.as_str() {
        "fixtures" => ["make_fixtures.py", "make_wanda_fixtures.py", "make_peft_fixtures.py"]
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
                if std::path::Path::new(&root.join(&out).join("run.json")).is_file() || root.join(&out).join("report.json").is_file() {
                    cmd.arg("--resume");
                }
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
                for strategy in ["sandwich", "random", "grid-params", "calibrate-mag"] {
                    for importance in [false, true] {
                        let out = format!("runs/recipe-nas/{strategy}{}", if importance { "-importance" } else { "" });
                        let mut cmd = Command::new("cargo");
                        cmd.args(["run", "--release", "-p", "secateur-cli", "--", "nas", "--strategy", strategy, "--epochs", "1", "--out", &out]);
                        if importance {
                            cmd.arg("--importance");
                        }
                        ok &= run(cmd.current_dir(&root));
                        tables += &std::fs::read_to_string(root.join(&out).join("report.md")).unwrap_or_default();
                        tables.push('\n');
                    }
                }
                let _ = std::fs::write(root.join("runs/recipe-nas/report.md"), tables);
                eprintln!("table: runs/recipe-nas/report.md");
                ok
            }
            _ => {
                eprintln!("usage: cargo xtask recipe <sqft|shears|nas>");
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
