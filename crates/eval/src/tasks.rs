//! Task files and the templates of lm-evaluation-harness's tasks (v0.4.9, `lm_eval/tasks/*`),
//! each documented beside its code. Every task reads a local JSON array or JSONL file whose rows
//! carry the Hugging Face data set's own field names.

use std::path::{Path, PathBuf};

use secateur_models::Message;
use serde_json::Value;

use crate::EvalError;

/// A multiple-choice document: one request per choice. Usually one context and per-choice
/// continuations (`target_delimiter + choice`); with `partial`, one context per choice and a
/// shared continuation (WinoGrande's partial scoring).
#[derive(Debug, Clone, PartialEq)]
pub struct McDoc {
    /// Its line (JSONL) or index (JSON array) in the task file, 1-based.
    pub line: usize,
    /// The context (one, or one per choice with `partial`).
    pub contexts: Vec<String>,
    /// The choices as lm-eval's `doc_to_choice` gives them (their lengths normalise `acc_norm`).
    pub choices: Vec<String>,
    /// With `partial`: the continuation every context shares.
    pub shared_continuation: Option<String>,
    pub gold: usize,
    pub target_delimiter: String,
    /// The task's description (lm-eval's `description`, MMLU's subject line), before the
    /// contexts; a chat prompt makes it the system message.
    pub description: String,
}

impl McDoc {
    /// The (context, continuation) pair of choice `i`.
    pub fn pair(&self, i: usize) -> (String, String) {
        let d = &self.description;
        match &self.shared_continuation {
            Some(cont) => (format!("{d}{}", self.contexts[i]), format!("{}{cont}", self.target_delimiter)),
            None => (format!("{d}{}", self.contexts[0]), format!("{}{}", self.target_delimiter, self.choices[i])),
        }
    }

    /// The document as lm-eval builds it with `--apply_chat_template` (not few-shot as
    /// multi-turn): the context becomes one user message after the system prompt, rendered with
    /// the generation prompt, and `target_delimiter` becomes empty. With partial scoring
    /// (`multiple_input`), each context is a user message of its own, rendered after the system
    /// prompt's render (lm-eval's `construct_requests`: `ctx + chat_template([user: choice])`).
    pub fn into_chat(mut self, chat: &crate::Chat) -> Result<Self, EvalError> {
        let system = chat.system_prompt(&self.description);
        match self.shared_continuation {
            None => self.contexts = vec![chat.render(system.as_deref(), &self.contexts[0])?],
            Some(_) => {
                let head = match &system {
                    Some(s) => chat.render_messages(&[Message::new("system", s)])?,
                    None => String::new(),
                };
                self.contexts =
                    self.contexts.iter().map(|c| Ok(format!("{head}{}", chat.render(None, c)?))).collect::<Result<_, EvalError>>()?;
            }
        }
        self.description.clear();
        self.target_delimiter.clear();
        Ok(self)
    }
}

/// The tasks `secateur eval` runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    /// Rolling perplexity of plain text or of JSONL `text` fields.
    Perplexity(PathBuf),
    /// Greedy generation on LLM-Adapters records (what the pipelines train on), the last number
    /// of the output compared with the record's `answer`.
    Generation(PathBuf),
    /// Generic multiple choice: JSONL `{"context", "choices", "gold"[, "target_delimiter"]}`.
    MultipleChoice(PathBuf),
    /// A named task on a local copy of its data set (`mmlu` and `gsm8k` may add a file of
    /// few-shot examples: `mmlu:TEST[,DEV]`, `gsm8k:TEST[,TRAIN]`).
    Named { task: Named, file: PathBuf, fewshot_file: Option<PathBuf> },
}

/// The named multiple-choice tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    Boolq,
    Piqa,
    Siqa,
    Hellaswag,
    Winogrande,
    ArcEasy,
    ArcChallenge,
    Openbookqa,
    Mmlu,
    /// Generation: greedy, few-shot from a train file (`gsm8k:TEST[,TRAIN]`), `exact_match`
    /// after the `strict-match` and `flexible-extract` filters.
    Gsm8k,
}

impl Named {
    pub const ALL: [(&'static str, Named); 10] = [
        ("boolq", Named::Boolq),
        ("piqa", Named::Piqa),
        ("siqa", Named::Siqa),
        ("hellaswag", Named::Hellaswag),
        ("winogrande", Named::Winogrande),
        ("arc_easy", Named::ArcEasy),
        ("arc_challenge", Named::ArcChallenge),
        ("openbookqa", Named::Openbookqa),
        ("mmlu", Named::Mmlu),
        ("gsm8k", Named::Gsm8k),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, t)| *t == self).map_or("?", |(n, _)| n)
    }
}

impl TaskSpec {
    /// Parses `ppl:FILE`, `mc:FILE`, `gen:FILE` or `NAME:FILE` (`mmlu:TEST,DEV`, `gsm8k:TEST,TRAIN`).
    pub fn parse(s: &str) -> Result<Self, EvalError> {
        let bad = |why: String| EvalError::Spec(format!("--task {s:?}: {why}"));
        let (kind, file) = s.split_once(':').ok_or_else(|| bad("expected KIND:FILE, e.g. ppl:wiki.txt or arc_easy:arc.jsonl".into()))?;
        if file.is_empty() {
            return Err(bad("no file".into()));
        }
        match kind {
            "ppl" => Ok(Self::Perplexity(file.into())),
            "mc" => Ok(Self::MultipleChoice(file.into())),
            "gen" => Ok(Self::Generation(file.into())),
            _ => {
                let names: Vec<&str> = Named::ALL.iter().map(|(n, _)| *n).collect();
                let task = Named::ALL
                    .iter()
                    .find(|(n, _)| *n == kind)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| bad(format!("unknown task kind {kind:?}: use ppl, mc, gen or one of {}", names.join(", "))))?;
                let (file, fewshot_file) = match file.split_once(',') {
                    Some((t, d)) if matches!(task, Named::Mmlu | Named::Gsm8k) => (t.into(), Some(d.into())),
                    Some(_) => return Err(bad("only mmlu and gsm8k take a second (few-shot) file".into())),
                    None => (file.into(), None),
                };
                Ok(Self::Named { task, file, fewshot_file })
            }
        }
    }

    /// The files the task reads (its data, and the few-shot file when given).
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Self::Perplexity(p) | Self::MultipleChoice(p) | Self::Generation(p) => vec![p.as_path()],
            Self::Named { file, fewshot_file, .. } => std::iter::once(file.as_path()).chain(fewshot_file.as_deref()).collect(),
        }
    }

    /// The task's name in results (`ppl`, `mc`, `arc_easy`) and its file.
    pub fn name(&self) -> String {
        let stem = |p: &Path| p.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
        match self {
            Self::Perplexity(p) => format!("ppl:{}", stem(p)),
            Self::MultipleChoice(p) => format!("mc:{}", stem(p)),
            Self::Generation(p) => format!("gen:{}", stem(p)),
            Self::Named { task, .. } => task.name().to_string(),
        }
    }
}

/// Rows of a JSON array or JSONL file, each with its 1-based line (JSONL) or index (array).
pub fn read_rows(path: &Path) -> Result<Vec<(usize, Value)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let bad = |line: usize, reason: String| EvalError::Data { path: path.to_path_buf(), line, reason };
    let rows: Vec<(usize, Value)> = if text.trim_start().starts_with('[') {
        let v: Vec<Value> = serde_json::from_str(&text).map_err(|e| bad(e.line(), format!("not a JSON array of rows: {e}")))?;
        v.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect()
    } else {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            rows.push((i + 1, serde_json::from_str(line).map_err(|e| bad(i + 1, format!("not JSON: {e}")))?));
        }
        rows
    };
    if rows.is_empty() {
        return Err(bad(0, "no rows".into()));
    }
    Ok(rows)
}

/// The documents of a perplexity file: each JSONL row's `text`, or the whole file as one document
/// when it is not JSONL.
pub fn perplexity_docs(path: &Path) -> Result<Vec<String>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    if !is_jsonl {
        if text.is_empty() {
            return Err(EvalError::Data { path: path.to_path_buf(), line: 0, reason: "empty text".into() });
        }
        return Ok(vec![text]);
    }
    read_rows(path)?
        .into_iter()
        .map(|(line, row)| {
            let t = str_field(path, line, &row, "text")?;
            if t.is_empty() {
                return Err(EvalError::Data { path: path.to_path_buf(), line, reason: "field `text` is empty".into() });
            }
            Ok(t)
        })
        .collect()
}

fn field<'a>(path: &Path, line: usize, row: &'a Value, name: &str) -> Result<&'a Value, EvalError> {
    row.get(name).ok_or_else(|| EvalError::Data { path: path.to_path_buf(), line, reason: format!("no field `{name}`") })
}

pub(crate) fn str_field(path: &Path, line: usize, row: &Value, name: &str) -> Result<String, EvalError> {
    let v = field(path, line, row, name)?;
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(EvalError::Data { path: path.to_path_buf(), line, reason: format!("field `{name}` is not a string") }),
    }
}

fn strings(path: &Path, line: usize, v: &Value, name: &str) -> Result<Vec<String>, EvalError> {
    let bad = || EvalError::Data { path: path.to_path_buf(), line, reason: format!("field `{name}` is not a list of strings") };
    v.as_array().ok_or_else(bad)?.iter().map(|c| c.as_str().map(str::to_string).ok_or_else(bad)).collect()
}

fn index(path: &Path, line: usize, v: &Value, name: &str) -> Result<usize, EvalError> {
    let bad = || EvalError::Data { path: path.to_path_buf(), line, reason: format!("field `{name}` is not a non-negative integer") };
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize).ok_or_else(bad),
        Value::String(s) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// lm-eval's HellaSwag `preprocess`: strip, ` [title]` to `. `, drop `[...]`, collapse double spaces.
fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim_matches(crate::loglik::python_whitespace).replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", t): each `[` up to the first `]` after it.
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(a) = rest.find('[') {
        match rest[a..].find(']') {
            Some(b) => {
                out += &rest[..a];
                rest = &rest[a + b + 1..];
            }
            None => break,
        }
    }
    out += rest;
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// One row of a named task as lm-eval builds its document.
fn named_doc(task: Named, path: &Path, line: usize, row: &Value) -> Result<McDoc, EvalError> {
    let s = |name: &str| str_field(path, line, row, name);
    let f = |name: &str| field(path, line, row, name);
    let doc = |context: String, choices: Vec<String>, gold: usize| McDoc {
        line,
        contexts: vec![context],
        choices,
        shared_continuation: None,
        gold,
        target_delimiter: " ".into(),
        description: String::new(),
    };
    Ok(match task {
        // super_glue/boolq/default.yaml: "{{passage}}\nQuestion: {{question}}?\nAnswer:", ["no", "yes"], label.
        Named::Boolq => doc(format!("{}\nQuestion: {}?\nAnswer:", s("passage")?, s("question")?), vec!["no".into(), "yes".into()], {
            let v = f("label")?;
            match v {
                Value::Bool(b) => usize::from(*b),
                _ => index(path, line, v, "label")?,
            }
        }),
        // piqa/piqa.yaml: "Question: {{goal}}\nAnswer:", [sol1, sol2], label.
        Named::Piqa => {
            doc(format!("Question: {}\nAnswer:", s("goal")?), vec![s("sol1")?, s("sol2")?], index(path, line, f("label")?, "label")?)
        }
        // siqa/siqa.yaml: "Q: {{context}} {{question}}\nA:", [answerA, answerB, answerC], int(label) - 1.
        Named::Siqa => {
            let label = index(path, line, f("label")?, "label")?;
            if label == 0 {
                return Err(EvalError::Data { path: path.to_path_buf(), line, reason: "field `label` counts from 1".into() });
            }
            doc(format!("Q: {} {}\nA:", s("context")?, s("question")?), vec![s("answerA")?, s("answerB")?, s("answerC")?], label - 1)
        }
        // hellaswag/utils.py: ctx = ctx_a + " " + ctx_b.capitalize(); query = preprocess(activity_label + ": " + ctx);
        // choices = [preprocess(ending) for ending in endings]; gold = int(label).
        Named::Hellaswag => {
            let ctx = format!("{} {}", s("ctx_a")?, capitalize(&s("ctx_b")?));
            let query = hellaswag_preprocess(&format!("{}: {ctx}", s("activity_label")?));
            let endings = strings(path, line, f("endings")?, "endings")?;
            doc(query, endings.iter().map(|e| hellaswag_preprocess(e)).collect(), index(path, line, f("label")?, "label")?)
        }
        // winogrande/preprocess_winogrande.py: partial scoring. Contexts: sentence[:idx] + option
        // for idx = sentence.index("_"); continuation: sentence[idx + 1:].strip(); gold: answer "1" / "2".
        Named::Winogrande => {
            let sentence = s("sentence")?;
            let idx = sentence.find('_').ok_or_else(|| EvalError::Data {
                path: path.to_path_buf(),
                line,
                reason: "field `sentence` has no `_` blank".into(),
            })?;
            let options = [s("option1")?, s("option2")?];
            let gold = match s("answer")?.as_str() {
                "1" => 0,
                "2" => 1,
                other => {
                    return Err(EvalError::Data {
                        path: path.to_path_buf(),
                        line,
                        reason: format!("field `answer` is {other:?}, not \"1\" or \"2\""),
                    });
                }
            };
            let contexts: Vec<String> = options.iter().map(|o| format!("{}{o}", &sentence[..idx])).collect();
            McDoc {
                line,
                choices: contexts.clone(),
                contexts,
                shared_continuation: Some(sentence[idx + 1..].trim_matches(crate::loglik::python_whitespace).to_string()),
                gold,
                target_delimiter: " ".into(),
                description: String::new(),
            }
        }
        // arc/arc_easy.yaml (and arc_challenge): "Question: {{question}}\nAnswer:", choices.text,
        // choices.label.index(answerKey).
        Named::ArcEasy | Named::ArcChallenge | Named::Openbookqa => {
            let choices = f("choices")?;
            let text = strings(path, line, field(path, line, choices, "text")?, "choices.text")?;
            let labels = strings(path, line, field(path, line, choices, "label")?, "choices.label")?;
            let key = s("answerKey")?;
            // openbookqa/openbookqa.yaml: question_stem, choices.label.index(answerKey.lstrip()).
            let key = key.trim_start().to_string();
            let gold = labels.iter().position(|l| *l == key).ok_or_else(|| EvalError::Data {
                path: path.to_path_buf(),
                line,
                reason: format!("`answerKey` {key:?} is not one of choices.label {labels:?}"),
            })?;
            let context = if task == Named::Openbookqa { s("question_stem")? } else { format!("Question: {}\nAnswer:", s("question")?) };
            doc(context, text, gold)
        }
        // mmlu/default/_default_template_yaml: "{{question.strip()}}\nA. {{choices[0]}}\nB. ...\nAnswer:",
        // choices ["A", "B", "C", "D"], answer (an index).
        Named::Gsm8k => return Err(EvalError::Spec("gsm8k is a generation task, not multiple choice".into())),
        Named::Mmlu => {
            let options = strings(path, line, f("choices")?, "choices")?;
            if options.len() != 4 {
                return Err(EvalError::Data {
                    path: path.to_path_buf(),
                    line,
                    reason: format!("field `choices` has {} entries, MMLU has 4", options.len()),
                });
            }
            let q = s("question")?;
            let context = format!(
                "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                q.trim_matches(crate::loglik::python_whitespace),
                options[0],
                options[1],
                options[2],
                options[3]
            );
            doc(context, ["A", "B", "C", "D"].map(String::from).to_vec(), index(path, line, f("answer")?, "answer")?)
        }
    })
}

/// The documents of a multiple-choice task, with `num_fewshot` examples of `fewshot_file` (MMLU's
/// `first_n` sampler over its dev split) before each context.
pub fn mc_docs(spec: &TaskSpec, num_fewshot: usize) -> Result<Vec<McDoc>, EvalError> {
    let (path, task) = match spec {
        TaskSpec::MultipleChoice(p) => (p, None),
        TaskSpec::Named { task, file, .. } => (file, Some(*task)),
        TaskSpec::Perplexity(_) | TaskSpec::Generation(_) => {
            return Err(EvalError::Spec(format!("{}: not a multiple-choice task", spec.name())));
        }
    };
    let mut docs = Vec::new();
    for (line, row) in read_rows(path)? {
        let d = match task {
            Some(t) => named_doc(t, path, line, &row)?,
            None => {
                let choices = strings(path, line, field(path, line, &row, "choices")?, "choices")?;
                let gold = index(path, line, field(path, line, &row, "gold")?, "gold")?;
                let target_delimiter = match row.get("target_delimiter") {
                    Some(Value::String(s)) => s.clone(),
                    None => " ".into(),
                    Some(_) => {
                        return Err(EvalError::Data {
                            path: path.clone(),
                            line,
                            reason: "field `target_delimiter` is not a string".into(),
                        });
                    }
                };
                McDoc {
                    line,
                    contexts: vec![str_field(path, line, &row, "context")?],
                    choices,
                    shared_continuation: None,
                    gold,
                    target_delimiter,
                    description: String::new(),
                }
            }
        };
        if d.choices.is_empty() {
            return Err(EvalError::Data { path: path.clone(), line, reason: "the choice list is empty".into() });
        }
        if d.gold >= d.choices.len() {
            return Err(EvalError::Data {
                path: path.clone(),
                line,
                reason: format!("gold index {} is out of range for {} choices", d.gold, d.choices.len()),
            });
        }
        docs.push(d);
    }
    if let TaskSpec::Named { task: Named::Mmlu, fewshot_file, .. } = spec {
        // "{description}{example}{target_delimiter}{target}{fewshot_delimiter}..." then the query;
        // the description (each subject's YAML): "The following are multiple choice questions
        // (with answers) about {subject}.\n\n", the subject from the rows' `subject` field.
        let mut prefix = String::new();
        if num_fewshot > 0 {
            let dev = fewshot_file.as_ref().ok_or_else(|| EvalError::Spec("mmlu few-shot needs a dev file: mmlu:TEST,DEV".into()))?;
            let rows = read_rows(dev)?;
            if rows.len() < num_fewshot {
                return Err(EvalError::Spec(format!("{}: {} rows, fewer than --num-fewshot {num_fewshot}", dev.display(), rows.len())));
            }
            // The `first_n` sampler: the dev split's first rows, in order.
            for (line, row) in rows.iter().take(num_fewshot) {
                let d = named_doc(Named::Mmlu, dev, *line, row)?;
                prefix += &format!("{} {}\n\n", d.contexts[0], d.choices[d.gold]);
            }
        }
        for (d, (_, row)) in docs.iter_mut().zip(read_rows(path)?) {
            d.description = match row.get("subject").and_then(Value::as_str) {
                Some(subject) => {
                    format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "))
                }
                None => String::new(),
            };
            d.contexts[0] = format!("{prefix}{}", d.contexts[0]);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocessing_as_lm_eval() {
        // lm-eval: preprocess("Removing ice from car: [header] Then, the man [title] writes.") ->
        assert_eq!(hellaswag_preprocess(" Removing ice: [header] Then, the man [title] writes. "), "Removing ice: Then, the man. writes.");
        assert_eq!(capitalize("then, the MAN"), "Then, the man");
    }
}
