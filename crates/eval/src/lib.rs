//! Standard evaluations of language models, scored exactly as lm-evaluation-harness (v0.4.9)
//! scores them with its Hugging Face model:
//!
//! - rolling perplexity (`ppl:FILE`): `loglikelihood_rolling` windows, `word_perplexity`,
//!   `byte_perplexity`, `bits_per_byte` with lm-eval's definitions, and token perplexity;
//! - multiple choice by log-likelihood (`mc:FILE` and the named tasks of [`tasks::Named`]):
//!   `acc` and `acc_norm` with their standard errors;
//! - generation: `gsm8k` (few-shot, greedy `generate_until`, the `strict-match` and
//!   `flexible-extract` filters, `exact_match`) and `gen:FILE` (LLM-Adapters records, the
//!   pipelines' answer extraction).
//!
//! [`loglik`] encodes and scores requests; [`tasks`] reads task files and holds lm-eval's
//! templates; [`evaluate`] runs one task on any [`CausalLm`].

pub mod generation;
pub mod loglik;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::Backend;
use secateur_models::{ArchSpec, CausalLm, ChatTemplate, Message, Projection, TextTokenizer};
use serde::Serialize;

pub use generation::{GenDoc, RegexFilter};
pub use loglik::{Encoder, Request, Scored, loglikelihoods};
pub use tasks::{McDoc, Named, TaskSpec};

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] secateur_models::ModelError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A task file row that cannot be used (line 0: the file as a whole).
    #[error("{path}: line {line}: {reason}")]
    Data { path: PathBuf, line: usize, reason: String },
    /// A task specification that cannot work.
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Run(#[from] secateur_runs::RunError),
    #[error(transparent)]
    Train(#[from] secateur_supernet::TrainError),
    /// A request the model cannot score.
    #[error("{0}")]
    Request(String),
}

/// lm-eval's `--apply_chat_template` (few-shot examples in one user turn, its default) with
/// `--system_instruction`: each context is rendered by the model's chat template as a user
/// message after the system prompt, with the generation prompt, and choices follow it with no
/// `target_delimiter`.
#[derive(Clone, Copy)]
pub struct Chat<'a> {
    pub template: &'a ChatTemplate,
    /// The system instruction (lm-eval's `--system_instruction`).
    pub system: Option<&'a str>,
}

impl Chat<'_> {
    /// The system message for a task's `description`: the system instruction and the
    /// description joined by the few-shot delimiter (`"\n\n"`), either alone, or none when empty.
    pub fn system_prompt(&self, description: &str) -> Option<String> {
        let p = match (self.system, description.is_empty()) {
            (Some(s), false) => format!("{s}\n\n{description}"),
            (Some(s), true) => s.to_string(),
            (None, _) => description.to_string(),
        };
        (!p.is_empty()).then_some(p)
    }

    /// `messages` rendered with the generation prompt. As lm-eval's `HFLM.apply_chat_template`,
    /// a template that refuses them is tried once more without the system messages.
    pub fn render_messages(&self, messages: &[Message]) -> Result<String, EvalError> {
        match self.template.render(messages, true) {
            Ok(s) => Ok(s),
            Err(e) if messages.iter().any(|m| m.role == "system") => {
                let rest: Vec<Message> = messages.iter().filter(|m| m.role != "system").cloned().collect();
                self.template.render(&rest, true).map_err(|_| e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The prompt of one user message after an optional system message.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, EvalError> {
        let mut messages: Vec<Message> = system.map(|s| Message::new("system", s)).into_iter().collect();
        messages.push(Message::new("user", user));
        self.render_messages(&messages)
    }
}

/// Settings of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalConfig {
    /// Few-shot examples before each context (MMLU, from its dev file).
    pub num_fewshot: usize,
    /// Evaluate the first N documents of each task only.
    pub limit: Option<usize>,
    /// Requests per forward pass.
    pub batch_size: usize,
    /// The window (lm-eval's `max_length`): the longest sequence a request runs as.
    pub max_length: usize,
    /// Generation tasks: the longest answer generated (default: lm-eval's 256 for `gsm8k`, 64
    /// for `gen:FILE`).
    pub max_new_tokens: Option<usize>,
}

/// One task's metrics.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub file: PathBuf,
    pub documents: usize,
    pub requests: usize,
    /// `acc`, `acc_norm` (multiple choice); `word_perplexity`, `byte_perplexity`,
    /// `bits_per_byte`, `token_perplexity` (perplexity).
    pub metrics: BTreeMap<String, f64>,
    /// Standard errors of the mean of the per-document metrics (multiple choice only).
    pub stderr: BTreeMap<String, f64>,
    /// Per document: its requests' scores and the prediction.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// What one document scored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub doc: usize,
    /// Its line in the task file (multiple choice).
    pub line: Option<usize>,
    pub requests: Vec<Scored>,
    /// Multiple choice: the gold choice, the predictions by `acc` and `acc_norm`.
    pub gold: Option<usize>,
    pub prediction: Option<usize>,
    pub prediction_norm: Option<usize>,
    /// Perplexity: the document's words and UTF-8 bytes.
    pub words: Option<usize>,
    pub bytes: Option<usize>,
    /// Generation: the greedy output.
    pub output: Option<String>,
    /// Generation: the output after each answer filter (`strict-match`, `flexible-extract`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: BTreeMap<String, String>,
}

/// The window lm-eval uses by default for a model: `max_position_embeddings` (or `n_positions`,
/// `n_ctx`) from its config, else 2048.
pub fn default_max_length(model_dir: &Path, spec: &ArchSpec) -> usize {
    let config: Option<serde_json::Value> =
        std::fs::read_to_string(model_dir.join("config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    for key in ["n_positions", "max_position_embeddings", "n_ctx"] {
        if let Some(n) = config.as_ref().and_then(|c| c.get(key)).and_then(serde_json::Value::as_u64) {
            return n as usize;
        }
    }
    spec.max_position_embeddings.unwrap_or(2048)
}

/// lm-eval's `prefix_token_id`: the tokenizer's BOS token (from `tokenizer_config.json`), else its
/// EOS token, else the config's BOS / first EOS id.
pub fn prefix_token(model_dir: &Path, spec: &ArchSpec, tok: &TextTokenizer) -> Result<u32, EvalError> {
    let config: Option<serde_json::Value> =
        std::fs::read_to_string(model_dir.join("tokenizer_config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let named = |key: &str| {
        let v = config.as_ref()?.get(key)?;
        let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
        tok.token_id(s)
    };
    named("bos_token")
        .or_else(|| named("eos_token"))
        .or(spec.bos_token_id)
        .or_else(|| spec.eos_token_ids.first().copied())
        .ok_or_else(|| EvalError::Spec(format!("{}: no BOS or EOS token to start a document with", model_dir.display())))
}

/// Mean and standard error of the mean (lm-eval's `mean_stderr`: sample standard deviation over
/// the square root of n).
fn mean_stderr(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// First index of the largest value (numpy's `argmax`).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Words of a document as lm-eval counts them: `len(re.split(r"\s+", doc))`.
pub fn count_words(doc: &str) -> usize {
    let mut n = 1;
    let mut in_space = false;
    for c in doc.chars() {
        let ws = loglik::python_whitespace(c);
        if ws && !in_space {
            n += 1;
        }
        in_space = ws;
    }
    n
}

/// Runs one task on `model`.
pub fn evaluate<B: Backend, P: Projection<B>>(
    model: &CausalLm<B, P>,
    enc: &Encoder,
    spec: &TaskSpec,
    cfg: &EvalConfig,
    device: &B::Device,
) -> Result<TaskResult, EvalError> {
    let file = match spec {
        TaskSpec::Perplexity(p) | TaskSpec::MultipleChoice(p) | TaskSpec::Generation(p) => p.clone(),
        TaskSpec::Named { file, .. } => file.clone(),
    };
    let limit = cfg.limit.unwrap_or(usize::MAX);
    let mut metrics = BTreeMap::new();
    let mut stderr = BTreeMap::new();
    let mut samples = Vec::new();
    let requests_total;
    if let TaskSpec::Generation(path) = spec {
        let records: Vec<_> = secateur_supernet::data::read_records(path)?.into_iter().take(limit).collect();
        // The pipelines' prompts: Alpaca, or with --chat the instruction as the user's turn.
        let format = match &enc.chat {
            Some(c) => secateur_supernet::PromptFormat::Chat { template: c.template.clone(), system: c.system.map(String::from) },
            None => secateur_supernet::PromptFormat::Alpaca,
        };
        let acc = secateur_supernet::eval::accuracy_as(
            model,
            enc.tokenizer,
            &format,
            &records,
            secateur_supernet::eval::AnswerKind::Math,
            cfg.max_new_tokens.unwrap_or(64),
            cfg.batch_size,
            device,
        )?;
        requests_total = records.len();
        let scores: Vec<f64> = records
            .iter()
            .zip(&acc.outputs)
            .map(|(r, o)| f64::from(u8::from(secateur_supernet::eval::is_correct(o, &r.answer, secateur_supernet::eval::AnswerKind::Math))))
            .collect();
        let (m, s) = mean_stderr(&scores);
        metrics.insert("exact_match".into(), m);
        stderr.insert("exact_match".into(), s);
        for (d, o) in acc.outputs.into_iter().enumerate() {
            samples.push(Sample { doc: d, output: Some(o), ..Sample::default() });
        }
    } else if let TaskSpec::Named { task: Named::Gsm8k, file, fewshot_file } = spec {
        let docs: Vec<_> = generation::gsm8k_docs(file, fewshot_file.as_deref(), cfg.num_fewshot)?.into_iter().take(limit).collect();
        // handle_stop_sequences: the tokenizer's EOS text joins `until`.
        let mut until: Vec<String> = generation::GSM8K_UNTIL.iter().map(|s| s.to_string()).collect();
        if let Some(eos) = model.spec().eos_token_ids.first().and_then(|&e| enc.tokenizer.token(e))
            && !until.contains(&eos)
        {
            until.push(eos);
        }
        let contexts: Vec<String> = match &enc.chat {
            Some(chat) => docs.iter().map(|d| chat.render(chat.system_prompt("").as_deref(), &d.context)).collect::<Result<_, _>>()?,
            None => docs.iter().map(|d| d.context.clone()).collect(),
        };
        let max_gen = cfg.max_new_tokens.unwrap_or(generation::GSM8K_MAX_GEN_TOKS);
        let outputs = generation::generate_texts(model, enc, &contexts, &until, max_gen, cfg.max_length, cfg.batch_size, device)?;
        requests_total = docs.len();
        let filters = [generation::RegexFilter::strict_match(), generation::RegexFilter::flexible_extract()];
        let mut scores = vec![Vec::new(); filters.len()];
        for (n, (d, o)) in docs.iter().zip(outputs).enumerate() {
            let mut filtered = BTreeMap::new();
            for (f, sc) in filters.iter().zip(&mut scores) {
                let answer = f.apply(&o);
                sc.push(f64::from(u8::from(generation::gsm8k_exact_match(&answer, &d.target))));
                filtered.insert(f.name.to_string(), answer);
            }
            samples.push(Sample { doc: n, line: Some(d.line), output: Some(o), filtered, ..Sample::default() });
        }
        for (f, sc) in filters.iter().zip(&scores) {
            let (m, s) = mean_stderr(sc);
            metrics.insert(format!("exact_match,{}", f.name), m);
            stderr.insert(format!("exact_match,{}", f.name), s);
        }
    } else if let TaskSpec::Perplexity(path) = spec {
        let docs: Vec<String> = tasks::perplexity_docs(path)?.into_iter().take(limit).collect();
        let mut windows = Vec::new();
        let mut owner = Vec::new();
        for (d, doc) in docs.iter().enumerate() {
            for w in enc.rolling(doc, cfg.max_length)? {
                windows.push(w);
                owner.push(d);
            }
        }
        let scored = loglikelihoods(model, &windows, cfg.max_length, cfg.batch_size, device)?;
        requests_total = windows.len();
        let (mut ll, mut words, mut bytes, mut tokens) = (0.0, 0usize, 0usize, 0usize);
        for (d, doc) in docs.iter().enumerate() {
            let reqs: Vec<Scored> = scored.iter().zip(&owner).filter(|(_, o)| **o == d).map(|(s, _)| *s).collect();
            let (w, b) = (count_words(doc), doc.len());
            ll += reqs.iter().map(|s| s.loglik).sum::<f64>();
            tokens += reqs.iter().map(|s| s.tokens).sum::<usize>();
            words += w;
            bytes += b;
            samples.push(Sample {
                doc: d,
                line: None,
                requests: reqs,
                gold: None,
                prediction: None,
                prediction_norm: None,
                words: Some(w),
                bytes: Some(b),
                ..Sample::default()
            });
        }
        metrics.insert("word_perplexity".into(), (-ll / words as f64).exp());
        metrics.insert("byte_perplexity".into(), (-ll / bytes as f64).exp());
        metrics.insert("bits_per_byte".into(), -ll / bytes as f64 / std::f64::consts::LN_2);
        metrics.insert("token_perplexity".into(), (-ll / tokens as f64).exp());
    } else {
        let mut docs: Vec<McDoc> = tasks::mc_docs(spec, cfg.num_fewshot)?.into_iter().take(limit).collect();
        if let Some(chat) = &enc.chat {
            docs = docs.into_iter().map(|d| d.into_chat(chat)).collect::<Result<_, _>>()?;
        }
        let mut requests = Vec::new();
        for d in &docs {
            // One context (its encoding shared by the choices), or one per choice (partial scoring).
            let encoded = match &d.shared_continuation {
                None => {
                    let conts: Vec<String> = (0..d.choices.len()).map(|i| d.pair(i).1).collect();
                    enc.pairs(&d.pair(0).0, &conts.iter().map(String::as_str).collect::<Vec<_>>())?
                }
                Some(_) => (0..d.choices.len()).map(|i| d.pair(i)).map(|(c, k)| enc.pair(&c, &k)).collect::<Result<_, _>>()?,
            };
            for (i, r) in encoded.into_iter().enumerate() {
                if r.context.len() + r.continuation.len() > cfg.max_length + 1 {
                    return Err(EvalError::Data {
                        path: file.clone(),
                        line: d.line,
                        reason: format!(
                            "choice {i}: {} tokens of context and continuation do not fit the window of {} (--max-length)",
                            r.context.len() + r.continuation.len(),
                            cfg.max_length
                        ),
                    });
                }
                requests.push(r);
            }
        }
        requests_total = requests.len();
        let scored = loglikelihoods(model, &requests, cfg.max_length, cfg.batch_size, device)?;
        let (mut acc, mut acc_norm) = (Vec::new(), Vec::new());
        let mut at = 0;
        for (n, d) in docs.iter().enumerate() {
            let reqs = scored[at..at + d.choices.len()].to_vec();
            at += d.choices.len();
            let lls: Vec<f64> = reqs.iter().map(|s| s.loglik).collect();
            // lm-eval: acc_norm divides by the length in characters of each choice as
            // `doc_to_choice` gives it.
            let normed: Vec<f64> = lls.iter().zip(&d.choices).map(|(l, c)| l / c.chars().count() as f64).collect();
            let (p, pn) = (argmax(&lls), argmax(&normed));
            acc.push(f64::from(u8::from(p == d.gold)));
            acc_norm.push(f64::from(u8::from(pn == d.gold)));
            samples.push(Sample {
                doc: n,
                line: Some(d.line),
                requests: reqs,
                gold: Some(d.gold),
                prediction: Some(p),
                prediction_norm: Some(pn),
                ..Sample::default()
            });
        }
        for (name, v) in [("acc", &acc), ("acc_norm", &acc_norm)] {
            let (m, s) = mean_stderr(v);
            metrics.insert(name.into(), m);
            stderr.insert(name.into(), s);
        }
    }
    Ok(TaskResult { task: spec.name(), file, documents: samples.len(), requests: requests_total, metrics, stderr, samples })
}

/// The results as a markdown table: one row per task and metric.
pub fn markdown(results: &[TaskResult]) -> String {
    let mut t = String::from("| Task | Metric | Value | Stderr | Documents | Requests |\n|---|---|---|---|---|---|\n");
    for r in results {
        for (name, v) in &r.metrics {
            let se = r.stderr.get(name).map_or("-".to_string(), |s| format!("{s:.4}"));
            t += &format!("| {} | {name} | {v:.4} | {se} | {} | {} |\n", r.task, r.documents, r.requests);
        }
    }
    t
}

/// Writes `results.json` (the tasks' metrics and `settings`) and `samples-TASK.jsonl` (one line
/// per document) into `dir`, each file atomically.
pub fn write_results(dir: &Path, results: &[TaskResult], settings: &serde_json::Value) -> Result<(), EvalError> {
    let json = serde_json::json!({"settings": settings, "results": results});
    secateur_runs::write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(&json).expect("JSON").as_bytes())?;
    for r in results {
        let name: String = r.task.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let lines: String = r.samples.iter().map(|s| serde_json::to_string(s).expect("JSON") + "\n").collect();
        secateur_runs::write_atomic(&dir.join(format!("samples-{name}.jsonl")), lines.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_as_python_re_split() {
        // len(re.split(r"\s+", s)) in Python.
        assert_eq!(count_words("a b"), 2);
        assert_eq!(count_words("a  b\n"), 3);
        assert_eq!(count_words(" a"), 2);
        assert_eq!(count_words("abc"), 1);
    }

    #[test]
    fn stderr_is_lm_evals() {
        let (m, s) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        // sample std 0.5, / sqrt(4)
        assert!((s - 0.25).abs() < 1e-12);
    }
}
