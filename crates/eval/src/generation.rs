//! Generation tasks scored as lm-evaluation-harness (v0.4.9) scores them: greedy
//! `generate_until` of its Hugging Face model (`lm_eval/models/huggingface.py`), the regex
//! answer filters (`lm_eval/filters/extraction.py`) and `exact_match` with its normalisations
//! (`lm_eval/api/metrics.py: exact_match_hf_evaluate`), configured as `lm_eval/tasks/gsm8k/gsm8k.yaml`.

use std::path::Path;

use burn::prelude::Backend;
use regex::Regex;
use secateur_models::generate::{GenerateOptions, generate_until};
use secateur_models::{CausalLm, Projection};

use crate::loglik::Encoder;
use crate::tasks::{read_rows, str_field};
use crate::{EvalError, loglik::python_whitespace};

/// A generation document: the prompt (few-shot examples included) and the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenDoc {
    /// Its line (JSONL) or index (JSON array) in the task file, 1-based.
    pub line: usize,
    pub context: String,
    /// lm-eval's `doc_to_target`: for GSM8K the whole `answer`, its `#### N` line included.
    pub target: String,
}

/// GSM8K's stop sequences (`generation_kwargs.until`); the tokenizer's EOS text is added as
/// lm-eval's `handle_stop_sequences` does.
pub const GSM8K_UNTIL: [&str; 3] = ["Question:", "</s>", "<|im_end|>"];

/// lm-eval's default `max_gen_toks` of its Hugging Face model (GSM8K sets none of its own).
pub const GSM8K_MAX_GEN_TOKS: usize = 256;

/// GSM8K's `doc_to_text`: `"Question: {{question}}\nAnswer:"`.
fn gsm8k_text(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}

/// The documents of a GSM8K file (rows `{"question", "answer"}`), each prompt preceded by the
/// first `num_fewshot` rows of `fewshot_file` (lm-eval's `first_n` sampler; its default sampler
/// draws them at random) as `"Question: q\nAnswer: a\n\n"` (`target_delimiter` `" "`,
/// `fewshot_delimiter` `"\n\n"`). A few-shot file that is the test file skips the document itself.
pub fn gsm8k_docs(file: &Path, fewshot_file: Option<&Path>, num_fewshot: usize) -> Result<Vec<GenDoc>, EvalError> {
    let read = |path: &Path| -> Result<Vec<(usize, String, String)>, EvalError> {
        read_rows(path)?
            .into_iter()
            .map(|(line, row)| Ok((line, str_field(path, line, &row, "question")?, str_field(path, line, &row, "answer")?)))
            .collect()
    };
    let docs = read(file)?;
    let shots = match (num_fewshot, fewshot_file) {
        (0, _) => Vec::new(),
        (_, None) => return Err(EvalError::Spec(format!("gsm8k --num-fewshot {num_fewshot} needs a train file: gsm8k:TEST,TRAIN"))),
        (_, Some(f)) => {
            let rows = read(f)?;
            let same = f == file;
            if rows.len() < num_fewshot + usize::from(same) {
                return Err(EvalError::Spec(format!("{}: {} rows, fewer than --num-fewshot {num_fewshot}", f.display(), rows.len())));
            }
            rows
        }
    };
    Ok(docs
        .iter()
        .map(|(line, q, a)| {
            // get_context: sample n (n + 1 from the test split), drop the document itself, keep n.
            let take = num_fewshot + usize::from(fewshot_file == Some(file));
            let prefix: String = shots
                .iter()
                .take(take)
                .filter(|(_, sq, sa)| !(fewshot_file == Some(file) && sq == q && sa == a))
                .take(num_fewshot)
                .map(|(_, sq, sa)| format!("{} {sa}\n\n", gsm8k_text(sq)))
                .collect();
            GenDoc { line: *line, context: format!("{prefix}{}", gsm8k_text(q)), target: a.clone() }
        })
        .collect())
}

/// lm-eval's `generate_until` with greedy decoding: each context encoded without special tokens
/// and left-truncated to `max_length - max_gen_toks` tokens, at most `max_gen_toks` new tokens,
/// a row ending at its EOS or once its decoded text holds a stop sequence, the text then cut
/// before the first of `until`. Contexts run longest first in batches of `batch_size`.
#[allow(clippy::too_many_arguments)]
pub fn generate_texts<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    enc: &Encoder,
    contexts: &[String],
    until: &[String],
    max_gen_toks: usize,
    max_length: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<String>, EvalError> {
    if max_gen_toks == 0 || max_gen_toks >= max_length {
        return Err(EvalError::Spec(format!("--max-new-tokens {max_gen_toks} must be in 1..{max_length} (the window, --max-length)")));
    }
    let room = max_length - max_gen_toks;
    let tok = enc.tokenizer;
    let mut encoded = Vec::with_capacity(contexts.len());
    for c in contexts {
        let ids = enc.encode(c)?;
        encoded.push(if ids.len() > room { ids[ids.len() - room..].to_vec() } else { ids });
    }
    let mut order: Vec<usize> = (0..contexts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    let opts = GenerateOptions {
        max_new_tokens: max_gen_toks,
        eos_token_ids: model.spec().eos_token_ids.clone(),
        max_context: Some(max_length),
        ..Default::default()
    };
    let mut out = vec![String::new(); contexts.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        let mut stop = |_: usize, new: &[u32]| tok.decode(new).is_ok_and(|t| until.iter().any(|u| !u.is_empty() && t.contains(u.as_str())));
        let generated = generate_until(model, &prompts, &opts, device, &mut stop)?;
        for (&i, ids) in chunk.iter().zip(generated) {
            let mut s = tok.decode(&ids)?;
            for u in until.iter().filter(|u| !u.is_empty()) {
                if let Some(at) = s.find(u.as_str()) {
                    s.truncate(at);
                }
            }
            out[i] = s;
        }
    }
    Ok(out)
}

/// lm-eval's `RegexFilter` followed by `take_first`: the `group_select`-th match of `findall`
/// (negative counts from the end; of a match with several groups, its first non-empty group),
/// stripped, or `[invalid]`.
#[derive(Debug, Clone)]
pub struct RegexFilter {
    pub name: &'static str,
    regex: Regex,
    group_select: isize,
}

impl RegexFilter {
    /// GSM8K's `strict-match`: `#### (\-?[0-9\.\,]+)`, the first match.
    pub fn strict_match() -> Self {
        Self { name: "strict-match", regex: Regex::new(r"#### (\-?[0-9\.\,]+)").expect("regex"), group_select: 0 }
    }

    /// GSM8K's `flexible-extract`: `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the last match.
    pub fn flexible_extract() -> Self {
        Self { name: "flexible-extract", regex: Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("regex"), group_select: -1 }
    }

    /// The filtered answer of one response.
    pub fn apply(&self, resp: &str) -> String {
        // Python's re.findall: per match, the whole match (no groups), its group (one), or the
        // tuple of its groups (several; "" where a group did not take part).
        let groups = self.regex.captures_len() - 1;
        let matches: Vec<Vec<String>> = self
            .regex
            .captures_iter(resp)
            .map(|c| {
                if groups == 0 {
                    vec![c[0].to_string()]
                } else {
                    (1..=groups).map(|g| c.get(g).map_or(String::new(), |m| m.as_str().to_string())).collect()
                }
            })
            .collect();
        if matches.is_empty() {
            return "[invalid]".into();
        }
        let n = matches.len() as isize;
        let at = if self.group_select < 0 { n + self.group_select } else { self.group_select };
        let Some(m) = usize::try_from(at).ok().and_then(|i| matches.get(i)) else {
            // Python would raise IndexError; lm-eval has no such configuration.
            return "[invalid]".into();
        };
        match m.iter().find(|g| !g.is_empty()) {
            Some(g) => g.trim_matches(python_whitespace).to_string(),
            None if m.len() > 1 => "[invalid]".into(),
            None => String::new(),
        }
    }
}

/// GSM8K's `exact_match`: `regexes_to_ignore` `","`, `"\$"`, `"(?s).*#### "`, `"\.$"` removed
/// from prediction and reference in that order, then both lower-cased (`ignore_case`), compared.
pub fn gsm8k_exact_match(prediction: &str, reference: &str) -> bool {
    gsm8k_normalise(prediction) == gsm8k_normalise(reference)
}

fn gsm8k_normalise(s: &str) -> String {
    let s = s.replace([',', '$'], "");
    // (?s).*#### : everything up to the last "#### " (greedy).
    let s = match s.rfind("#### ") {
        Some(at) => s[at + "#### ".len()..].to_string(),
        None => s,
    };
    // Python's `\.$`: a dot at the end, or just before a final newline.
    let s = if let Some(rest) = s.strip_suffix(".\n") {
        format!("{rest}\n")
    } else if let Some(rest) = s.strip_suffix('.') {
        rest.to_string()
    } else {
        s
    };
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked from lm-eval's code and Python's `re` (the fixture script checks many more).
    #[test]
    fn filters_and_exact_match_as_lm_eval() {
        let strict = RegexFilter::strict_match();
        let flex = RegexFilter::flexible_extract();
        let out = "She pays 3 * $2 = $6.\n#### 6\n\nThe end 7";
        assert_eq!(strict.apply(out), "6");
        assert_eq!(flex.apply(out), "7");
        assert_eq!(strict.apply("no answer"), "[invalid]");
        assert_eq!(flex.apply("costs $1,200.50."), "$1,200.50.");
        assert!(gsm8k_exact_match("$1,200.", "Reasoning... #### 1200"));
        assert!(!gsm8k_exact_match("[invalid]", "#### 5"));
    }
}
