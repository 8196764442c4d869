//! Full-parameter pretraining from Rust: the tiny LLaMA that `secateur shears` embeds as its
//! default base, pretrained on the generated corpus (seeded and reproducible) and written as a
//! Hugging Face checkpoint (default `assets/tiny-llama`). `cargo xtask pretrain-tiny` runs it.
//!
//! `cargo run --release -p secateur --example pretrain_tiny -- [--steps N] [--out DIR]`

use std::path::PathBuf;
use std::time::Instant;

use secateur::CpuAutodiff;
use secateur::burn::module::AutodiffModule;
use secateur::models::{ArchSpec, DenseLm, TextTokenizer};
use secateur::supernet::toy;
use secateur::supernet::train::{TrainConfig, pretrain};

/// Sequence length of pretraining chunks.
const SEQ: usize = 64;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut steps = 1500usize;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-llama");
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
    secateur::models::weights::save_new(&model.valid(), &config, &out).map_err(|e| e.to_string())?;
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
