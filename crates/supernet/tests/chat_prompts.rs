//! `--chat` training examples against transformers' `apply_chat_template` on the chat fixtures
//! (`scripts/make_chat_fixtures.py`, its `training` cases): the prompt is the user's turn with
//! the generation prompt, the example the same conversation with the output as the assistant's
//! turn, and only the response's tokens are targets.

use std::path::{Path, PathBuf};

use secateur_models::{ChatTemplate, TextTokenizer};
use secateur_supernet::data::{PromptFormat, Record, tokenize_as};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn chat_examples_are_transformers_conversations() {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("chat/templates.json")).unwrap()).unwrap();
    let tok = TextTokenizer::from_file(&fixtures().join("llama_gqa/tokenizer.json")).unwrap();
    let (mut equal, mut fallback, mut refused) = (0, 0, 0);
    for t in v["templates"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (bos, eos) = (t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap());
        let template =
            ChatTemplate::new(t["template"].as_str().unwrap(), &[("bos_token", bos), ("eos_token", eos)], Path::new("templates.json"));
        for case in t["training"].as_array().unwrap() {
            let record: Record = serde_json::from_value(case["record"].clone()).unwrap();
            let format = PromptFormat::Chat { template: template.clone(), system: case["system"].as_str().map(String::from) };
            let Some(want_prompt) = case["prompt"].as_str() else {
                assert!(format.example(&record).is_err(), "{name}: transformers refuses {case}");
                refused += 1;
                continue;
            };
            let want_full = case["full"].as_str().unwrap();
            let (prompt, full) = format.example(&record).unwrap();
            assert_eq!(prompt, want_prompt, "{name}: prompt");
            if want_full.starts_with(want_prompt) {
                assert_eq!(full, want_full, "{name}: example");
                equal += 1;
            } else {
                // A template whose prompt is not the start of the conversation: the output and
                // the end-of-turn tag follow the prompt.
                assert_eq!(full, format!("{prompt}{}{}", record.output, template.end_of_turn().unwrap()), "{name}: fallback");
                fallback += 1;
            }
            let ex = tokenize_as(&record, &tok, &format, Some(2), 4096, false).unwrap();
            let prompt_ids = tok.encode_plain(&prompt).unwrap();
            assert_eq!(ex.ids, tok.encode_plain(&full).unwrap(), "{name}: ids as the template wrote them, no EOS added");
            let first = ex.target.iter().position(|&t| t).unwrap();
            assert_eq!(first, prompt_ids.len(), "{name}: targets start after the prompt");
            assert!(ex.target[first..].iter().all(|&t| t));
        }
    }
    assert_eq!((equal, fallback, refused), (11, 2, 1));
}
