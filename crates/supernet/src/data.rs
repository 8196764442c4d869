//! LLM-Adapters / Alpaca datasets.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use secateur_models::{ChatTemplate, Message, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One LLM-Adapters record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    /// The target text the model learns to produce.
    #[serde(default)]
    pub output: String,
    /// The gold answer used for exact-match evaluation.
    #[serde(default)]
    pub answer: String,
}

/// Reads a JSON array of records or JSONL (one record per line).
pub fn read_records(path: &Path) -> Result<Vec<Record>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let bad = |reason: String| TrainError::Data { path: path.to_path_buf(), reason };
    let records: Vec<Record> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 1))))
            .collect::<Result<_, _>>()?
    };
    if records.is_empty() {
        return Err(bad("no records".into()));
    }
    Ok(records)
}

/// The Alpaca prompt of LLM-Adapters (`generate_prompt`), without the response.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// A tokenised training example: ids and, per position, whether its token is a loss target.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
}

/// How records become prompts, in training and in evaluation alike.
#[derive(Debug, Clone, Default)]
pub enum PromptFormat {
    /// LLM-Adapters' Alpaca template ([`alpaca_prompt`]); the response ends with EOS.
    #[default]
    Alpaca,
    /// The model's chat template: the instruction (and the input after a blank line) is the
    /// user's message, after `system` when given, rendered with the generation prompt; the
    /// response is the assistant's turn as the template closes it (its end-of-turn tag), and
    /// generation stops at that tag.
    Chat { template: ChatTemplate, system: Option<String> },
}

impl PromptFormat {
    fn messages(&self, record: &Record) -> Vec<Message> {
        let mut m = Vec::new();
        if let PromptFormat::Chat { system: Some(s), .. } = self {
            m.push(Message::new("system", s));
        }
        let user =
            if record.input.trim().is_empty() { record.instruction.clone() } else { format!("{}\n\n{}", record.instruction, record.input) };
        m.push(Message::new("user", &user));
        m
    }

    /// The prompt of `record`, without the response.
    pub fn prompt(&self, record: &Record) -> Result<String, TrainError> {
        match self {
            PromptFormat::Alpaca => Ok(alpaca_prompt(&record.instruction, &record.input)),
            PromptFormat::Chat { template, .. } => Ok(template.render(&self.messages(record), true)?),
        }
    }

    /// The prompt and the whole example: for a chat template, the conversation with the output
    /// as the assistant's turn (rendered without the generation prompt; the prompt must be its
    /// beginning, else the output and the end-of-turn tag follow the prompt).
    pub fn example(&self, record: &Record) -> Result<(String, String), TrainError> {
        let prompt = self.prompt(record)?;
        let full = match self {
            PromptFormat::Alpaca => format!("{prompt}{}", record.output),
            PromptFormat::Chat { template, .. } => {
                let mut m = self.messages(record);
                m.push(Message::new("assistant", &record.output));
                let full = template.render(&m, false)?;
                if full.starts_with(&prompt) {
                    full
                } else {
                    format!("{prompt}{}{}", record.output, template.end_of_turn().unwrap_or_default())
                }
            }
        };
        Ok((prompt, full))
    }

    /// `text` as token ids: with the tokenizer's special tokens for Alpaca, as the template
    /// wrote them for a chat (transformers' `apply_chat_template(tokenize=True)`).
    pub fn encode(&self, tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, TrainError> {
        Ok(match self {
            PromptFormat::Alpaca => tok.encode(text)?,
            PromptFormat::Chat { .. } => tok.encode_plain(text)?,
        })
    }

    /// The ids generation stops at: the model's EOS ids, and a chat template's end of turn.
    pub fn stop_ids(&self, tok: &TextTokenizer, eos: &[u32]) -> Vec<u32> {
        match self {
            PromptFormat::Alpaca => eos.to_vec(),
            PromptFormat::Chat { template, .. } => template.stop_ids(tok, eos),
        }
    }
}

/// Tokenises `prompt + output` (+ EOS when it fits), cut at `cutoff` tokens. With
/// `train_on_inputs` every token is a target, else only the response's.
pub fn tokenize(
    record: &Record,
    tok: &TextTokenizer,
    eos: Option<u32>,
    cutoff: usize,
    train_on_inputs: bool,
) -> Result<Example, TrainError> {
    tokenize_as(record, tok, &PromptFormat::Alpaca, eos, cutoff, train_on_inputs)
}

/// [`tokenize`] in `format`. A chat example ends with the template's end-of-turn tag instead
/// of EOS.
pub fn tokenize_as(
    record: &Record,
    tok: &TextTokenizer,
    format: &PromptFormat,
    eos: Option<u32>,
    cutoff: usize,
    train_on_inputs: bool,
) -> Result<Example, TrainError> {
    let (prompt, full) = format.example(record)?;
    let prompt_len = format.encode(tok, &prompt)?.len();
    let mut ids = format.encode(tok, &full)?;
    ids.truncate(cutoff);
    if let (Some(e), PromptFormat::Alpaca) = (eos, format)
        && ids.len() < cutoff
        && ids.last() != Some(&e)
    {
        ids.push(e);
    }
    let target = (0..ids.len()).map(|i| train_on_inputs || i >= prompt_len).collect();
    Ok(Example { ids, target })
}

/// Splits records into disjoint train and validation parts (shuffled with `seed`).
pub fn split(records: &[Record], val_size: usize, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let mut idx: Vec<usize> = (0..records.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let val_size = val_size.min(records.len().saturating_sub(1));
    let val = idx[..val_size].iter().map(|&i| records[i].clone()).collect();
    let train = idx[val_size..].iter().map(|&i| records[i].clone()).collect();
    (train, val)
}

/// A right-padded batch: ids, padding mask, and per position whether the *next* token is a
/// loss target (flattened `[batch * (seq - 1)]` weights).
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub mask: Vec<Vec<bool>>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Batch {
    /// Pads `examples` on the right with `pad`.
    pub fn new(examples: &[&Example], pad: u32) -> Self {
        let width = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(2);
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut targets = Vec::new();
        let mut weights = Vec::new();
        for e in examples {
            let n = e.ids.len();
            ids.push(e.ids.iter().copied().chain(std::iter::repeat_n(pad, width - n)).collect());
            mask.push((0..width).map(|t| t < n).collect());
            for t in 1..width {
                targets.push(if t < n { e.ids[t] } else { pad });
                weights.push(if t < n && e.target[t] { 1.0 } else { 0.0 });
            }
        }
        Self { ids, mask, targets, weights }
    }

    /// Number of target tokens.
    pub fn target_tokens(&self) -> usize {
        self.weights.iter().filter(|w| **w > 0.0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_matches_llm_adapters() {
        let p = alpaca_prompt("Add 2 and 3.", "");
        assert!(p.starts_with("Below is an instruction that describes a task. Write"));
        assert!(p.ends_with("### Instruction:\nAdd 2 and 3.\n\n### Response:\n"));
        assert!(alpaca_prompt("Q", "ctx").contains("### Input:\nctx\n\n### Response:\n"));
    }

    #[test]
    fn splits_are_disjoint_and_cover() {
        let recs: Vec<Record> = (0..20)
            .map(|i| Record { instruction: format!("q{i}"), input: String::new(), output: String::new(), answer: String::new() })
            .collect();
        let (train, val) = split(&recs, 5, 1);
        assert_eq!((train.len(), val.len()), (15, 5));
        for v in &val {
            assert!(!train.contains(v));
        }
    }

    #[test]
    fn batch_targets_shift_by_one_and_skip_padding() {
        let a = Example { ids: vec![1, 2, 3], target: vec![false, false, true] };
        let b = Example { ids: vec![4, 5], target: vec![false, true] };
        let batch = Batch::new(&[&a, &b], 0);
        assert_eq!(batch.ids, vec![vec![1, 2, 3], vec![4, 5, 0]]);
        assert_eq!(batch.targets, vec![2, 3, 5, 0]);
        assert_eq!(batch.weights, vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(batch.target_tokens(), 2);
    }
}
