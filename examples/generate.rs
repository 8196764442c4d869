//! Load a Hugging Face checkpoint and generate text with the library API.
//!
//! `cargo run --release -p secateur-models --example generate -- <model-dir> "<prompt>"`

use std::path::PathBuf;

use secateur_models::{Cpu, DenseLm, GenerateOptions, TextTokenizer, generate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: generate <model-dir> <prompt>")?);
    let prompt = args.next().unwrap_or_else(|| "the cat".to_string());
    let device = Default::default();
    let model = DenseLm::<Cpu>::load(&dir, &device)?;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let opts = GenerateOptions { max_new_tokens: 24, eos_token_ids: model.spec().eos_token_ids.clone(), ..Default::default() };
    let out = generate(&model, &[tokenizer.encode(&prompt)?], &opts, &device)?;
    println!("{prompt}{}", tokenizer.decode(&out[0])?);
    Ok(())
}
