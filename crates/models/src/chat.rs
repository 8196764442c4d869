//! Chat templates: the Jinja template of a model's `tokenizer_config.json` (or
//! `chat_template.jinja`, or GGUF's `tokenizer.chat_template`, which the import carries over),
//! rendered as transformers' `apply_chat_template` renders it: `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods (`.strip()`, `.startswith()`, ...),
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes,
//! and the special tokens (`bos_token`, `eos_token`, ...) in the context.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A model's chat template with the special tokens its context names.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// The Jinja source.
    pub source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` as the template sees them.
    pub special_tokens: Vec<(String, String)>,
    /// Where the template came from (for errors).
    pub path: PathBuf,
}

/// A special token of `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_text(v: &Json) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v.get("content").and_then(Json::as_str).map(str::to_string))
}

impl ChatTemplate {
    /// A template from its source, with the special tokens of its context.
    pub fn new(source: &str, special_tokens: &[(&str, &str)], path: &Path) -> Self {
        Self {
            source: source.to_string(),
            special_tokens: special_tokens.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            path: path.to_path_buf(),
        }
    }

    /// The chat template of the checkpoint directory `dir`: `chat_template.jinja` if present,
    /// else `chat_template` of `tokenizer_config.json` (a string, or a list of named templates:
    /// the one named `default`). `None` when the model has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Json { path: config_path.clone(), source: e })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Json::Null,
            Err(e) => return Err(ModelError::io(&config_path, e)),
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = if jinja.is_file() {
            (std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?, jinja)
        } else {
            let source = match &config["chat_template"] {
                Json::Null => return Ok(None),
                Json::String(s) => s.clone(),
                Json::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .ok_or_else(|| ModelError::ChatTemplate {
                        path: config_path.clone(),
                        reason: "`chat_template` is a list without a template named \"default\"".into(),
                    })?
                    .to_string(),
                other => {
                    return Err(ModelError::ChatTemplate {
                        path: config_path,
                        reason: format!("`chat_template` is neither a string nor a list of named templates: {other}"),
                    });
                }
            };
            (source, config_path)
        };
        let special_tokens = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .iter()
            .filter_map(|k| token_text(&config[*k]).map(|t| (k.to_string(), t)))
            .collect();
        let template = Self { source, special_tokens, path };
        template.environment()?; // parse errors now, not at the first render
        Ok(Some(template))
    }

    fn err(&self, e: Error) -> ModelError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason += &format!(": {s}");
            source = s.source();
        }
        ModelError::ChatTemplate { path: self.path.clone(), reason }
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> std::result::Result<Value, Error> {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            strftime(&format, secs).map(Value::from).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))
        });
        env.add_filter("tojson", tojson);
        env.add_template("chat", &self.source).map_err(|e| self.err(e))?;
        Ok(env)
    }

    /// The conversation rendered as the model's prompt; with `add_generation_prompt` the
    /// template's opening of an assistant turn is appended.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env.get_template("chat").map_err(|e| self.err(e))?;
        let mut ctx: std::collections::BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        template.render(Value::from_object(ctx)).map_err(|e| self.err(e))
    }

    /// The text that ends an assistant turn (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...): the
    /// first tag that follows an assistant message when the template renders one, else the
    /// `eos_token`. Generation in chat stops there.
    pub fn end_of_turn(&self) -> Option<String> {
        const MARK: &str = "\u{1}SECATEUR-ASSISTANT-TURN\u{1}";
        let rendered = self.render(&[Message::new("user", "Hi"), Message::new("assistant", MARK)], false).ok();
        let after = rendered.as_deref().and_then(|r| r.split_once(MARK)).map(|(_, a)| a.trim_start().to_string());
        let eos = self.special_tokens.iter().find(|(k, _)| k == "eos_token").map(|(_, v)| v.clone());
        if let Some(after) = after {
            if let Some(e) = eos.as_ref().filter(|e| !e.is_empty() && after.starts_with(e.as_str())) {
                return Some(e.clone());
            }
            if after.starts_with('<')
                && let Some(end) = after.find('>')
                && !after[1..end].contains(['<', ' ', '\n'])
            {
                return Some(after[..=end].to_string());
            }
        }
        eos
    }
}

impl ChatTemplate {
    /// The prompt of a conversation, ending in the opening of the assistant's turn, and its ids
    /// as transformers' `apply_chat_template(..., add_generation_prompt=True, tokenize=True)`
    /// gives them (the rendered text encoded without adding special tokens again).
    pub fn prompt(&self, tok: &crate::TextTokenizer, messages: &[Message]) -> Result<(String, Vec<u32>)> {
        let text = self.render(messages, true)?;
        let ids = tok.encode_plain(&text)?;
        Ok((text, ids))
    }

    /// The ids that end an assistant turn: the model's `eos` ids and the end-of-turn tag's id
    /// (when the tokenizer has it as one token).
    pub fn stop_ids(&self, tok: &crate::TextTokenizer, eos: &[u32]) -> Vec<u32> {
        let mut ids = eos.to_vec();
        if let Some(id) = self.end_of_turn().and_then(|t| tok.token_id(&t))
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        ids
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which transformers'
/// `tojson` filter calls: `", "` and `": "` separators, keys in their order, non-ASCII as is.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, Error> {
    let mut out = String::new();
    python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> std::result::Result<(), Error> {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => out.push_str(&Json::String(v.as_str().unwrap_or_default().to_string()).to_string()),
        kind @ (ValueKind::Seq | ValueKind::Iterable | ValueKind::Map) => {
            let map = kind == ValueKind::Map;
            // A map iterates over its keys.
            let items: Vec<Value> = v.try_iter()?.collect();
            let (open, close) = if map { ('{', '}') } else { ('[', ']') };
            out.push(open);
            let pad = |d: usize| indent.map_or(String::new(), |n| format!("\n{}", " ".repeat(n * d)));
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(if indent.is_some() { "," } else { ", " });
                }
                out.push_str(&pad(depth + 1));
                if map {
                    out.push_str(&Json::String(item.to_string()).to_string());
                    out.push_str(": ");
                    python_json(&v.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    python_json(item, indent, depth + 1, out)?;
                }
            }
            if !items.is_empty() {
                out.push_str(&pad(depth));
            }
            out.push(close);
        }
        _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot write a {} value", v.kind()))),
    }
    Ok(())
}

/// `strftime` of the UTC time `secs` after the epoch, for the directives chat templates use
/// (`%Y %y %m %d %b %B %H %M %S %%`).
fn strftime(format: &str, secs: u64) -> std::result::Result<String, String> {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    // Howard Hinnant's civil-from-days.
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('b') => out += &MONTHS[month as usize - 1][..3],
            Some('B') => out += MONTHS[month as usize - 1],
            Some('H') => out += &format!("{h:02}"),
            Some('M') => out += &format!("{m:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some('%') => out.push('%'),
            other => return Err(format!("strftime_now: directive %{} is not supported", other.map_or(String::new(), String::from))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-23 13:05:09 UTC, and the leap day 2000-02-29.
        assert_eq!(strftime("%d %b %Y, %H:%M:%S %B %y %%", 1_721_739_909).unwrap(), "23 Jul 2024, 13:05:09 July 24 %");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert!(strftime("%Q", 0).unwrap_err().contains("%Q"));
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        #[derive(Serialize)]
        struct S {
            b: (i32, &'static str, f64),
            a: std::collections::BTreeMap<String, i32>,
            c: Option<i32>,
        }
        let v = Value::from_serialize(S { b: (1, "é\n\"x\"", 0.5), a: Default::default(), c: None });
        assert_eq!(tojson(v.clone(), None).unwrap().to_string(), r#"{"b": [1, "é\n\"x\"", 0.5], "a": {}, "c": null}"#);
        assert_eq!(
            tojson(v, Some(2)).unwrap().to_string(),
            "{\n  \"b\": [\n    1,\n    \"é\\n\\\"x\\\"\",\n    0.5\n  ],\n  \"a\": {},\n  \"c\": null\n}"
        );
    }
}
