//! Evaluation: exact-match accuracy of generated answers, and perplexity.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use secateur_models::generate::token_tensor;
use secateur_models::{CausalLm, GenerateOptions, Projection, TextTokenizer, generate};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::{PromptFormat, Record};

/// How an answer is read from generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// The last number in the output, compared with tolerance 1e-3.
    Math,
    /// The first option letter (A-E) in the output.
    MultipleChoice,
}

/// The last number in `text` (commas inside numbers are dropped), as LLM-Adapters extracts it.
pub fn last_number(text: &str) -> Option<f64> {
    let cleaned = text.replace(',', "");
    let mut best = None;
    let bytes = cleaned.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i] == b'-' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
            i += 1;
        }
        if i < bytes.len() && bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            best = cleaned[start..i].parse::<f64>().ok().or(best);
        } else {
            i = start + 1;
        }
    }
    best
}

/// The first standalone option letter A-E in `text`.
pub fn first_option(text: &str) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).find_map(|i| {
        let c = chars[i];
        let alone = |j: Option<&char>| j.is_none_or(|c| !c.is_ascii_alphanumeric());
        (('A'..='E').contains(&c) && alone(i.checked_sub(1).and_then(|j| chars.get(j))) && alone(chars.get(i + 1))).then_some(c)
    })
}

/// Whether `output` answers `gold` correctly.
pub fn is_correct(output: &str, gold: &str, kind: AnswerKind) -> bool {
    match kind {
        AnswerKind::Math => match (last_number(output), last_number(gold)) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-3,
            _ => false,
        },
        AnswerKind::MultipleChoice => first_option(output).is_some() && first_option(output) == first_option(gold),
    }
}

/// Accuracy and outputs of an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    pub outputs: Vec<String>,
}

/// Greedy generation on every record's prompt (batched), then exact match with its answer.
pub fn accuracy<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    tok: &TextTokenizer,
    records: &[Record],
    kind: AnswerKind,
    max_new_tokens: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Accuracy, TrainError> {
    accuracy_as(model, tok, &PromptFormat::Alpaca, records, kind, max_new_tokens, batch_size, device)
}

/// [`accuracy`] with the prompts in `format` (a chat template's turns stop at its end of turn).
#[allow(clippy::too_many_arguments)]
pub fn accuracy_as<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    tok: &TextTokenizer,
    format: &PromptFormat,
    records: &[Record],
    kind: AnswerKind,
    max_new_tokens: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Accuracy, TrainError> {
    if records.is_empty() {
        return Err(TrainError::Config("no examples to evaluate (the split is empty)".into()));
    }
    let context = model.spec().context_length();
    if max_new_tokens == 0 || max_new_tokens >= context {
        return Err(TrainError::Config(format!("--max-new-tokens {max_new_tokens} must be in 1..{context} (the context window)")));
    }
    let opts = GenerateOptions { max_new_tokens, eos_token_ids: format.stop_ids(tok, &model.spec().eos_token_ids), ..Default::default() };
    // Prompts longer than the window keep their last tokens (the question comes last).
    let room = context - max_new_tokens;
    let mut truncated = 0;
    let bar = secateur_runs::Progress::new("evaluating", "examples", records.len(), 0, records.len() >= 32);
    let mut outputs = Vec::with_capacity(records.len());
    for chunk in records.chunks(batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|r| {
                let ids = format.encode(tok, &format.prompt(r)?)?;
                if ids.len() > room {
                    truncated += 1;
                    return Ok(ids[ids.len() - room..].to_vec());
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        for ids in generate(model, &prompts, &opts, device)? {
            outputs.push(tok.decode(&ids)?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} prompts were longer than the context window ({room} tokens left for the prompt) and keep only their last tokens"
        );
    }
    let correct = records.iter().zip(&outputs).filter(|(r, o)| is_correct(o, &r.answer, kind)).count();
    Ok(Accuracy { correct, total: records.len(), accuracy: correct as f64 / records.len().max(1) as f64, outputs })
}

/// Perplexity `exp(mean NLL)` of token sequences (every next-token prediction counts).
pub fn perplexity<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    seqs: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> Result<f64, TrainError> {
    let mut nll = 0.0;
    let mut count = 0usize;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let width = chunk.iter().map(Vec::len).max().unwrap_or(0);
        if width < 2 {
            continue;
        }
        let (ids, mask) = secateur_models::generate::right_pad(chunk, 0);
        let logits = model.forward(token_tensor::<B>(&ids, device), &mask)?;
        let [b, s, v] = logits.dims();
        let logp: Vec<f32> = log_softmax(logits.narrow(1, 0, s - 1), 2).into_data().convert::<f32>().to_vec().expect("f32");
        for (bi, seq) in chunk.iter().enumerate() {
            for t in 1..seq.len() {
                nll -= logp[(bi * (s - 1) + t - 1) * v + seq[t] as usize] as f64;
                count += 1;
            }
        }
        let _ = b;
    }
    Ok((nll / count.max(1) as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_extracted_like_llm_adapters() {
        assert_eq!(last_number("She has 3 apples, then 1,250 more: 1253."), Some(1253.0));
        assert_eq!(last_number("the answer is -4.5"), Some(-4.5));
        assert_eq!(last_number("no digits"), None);
        assert!(is_correct("so 12 + 30 = 42", "42", AnswerKind::Math));
        assert!(is_correct("42.0004", "42", AnswerKind::Math));
        assert!(!is_correct("41.99", "42", AnswerKind::Math));
        assert_eq!(first_option("The answer is B."), Some('B'));
        assert_eq!(first_option("Because A-type"), Some('A'));
        assert_eq!(first_option("BEST"), None);
        assert!(is_correct("answer: C", "C", AnswerKind::MultipleChoice));
    }
}
