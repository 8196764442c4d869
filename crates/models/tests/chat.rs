//! Chat templates against transformers' `apply_chat_template` (fixtures written by
//! `scripts/make_chat_fixtures.py`).

use std::path::{Path, PathBuf};

use secateur_models::{ChatTemplate, Message, ModelError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

fn templates() -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("templates.json")).unwrap()).unwrap();
    v["templates"].as_array().unwrap().clone()
}

fn template(t: &serde_json::Value) -> ChatTemplate {
    let (bos, eos) = (t["bos_token"].as_str().unwrap(), t["eos_token"].as_str().unwrap());
    ChatTemplate::new(t["template"].as_str().unwrap(), &[("bos_token", bos), ("eos_token", eos)], Path::new("templates.json"))
}

#[test]
fn every_template_renders_as_transformers_does() {
    let (mut rendered, mut refused) = (0, 0);
    for t in templates() {
        let name = t["name"].as_str().unwrap();
        let chat = template(&t);
        for case in t["cases"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let add_gen = case["add_generation_prompt"].as_bool().unwrap();
            match (chat.render(&messages, add_gen), case.get("rendered")) {
                (Ok(ours), Some(want)) => {
                    assert_eq!(ours, want.as_str().unwrap(), "{name}, add_generation_prompt {add_gen}: {messages:?}");
                    rendered += 1;
                }
                // raise_exception: a typed error carrying the template's message.
                (Err(ModelError::ChatTemplate { path, reason }), None) => {
                    assert_eq!(path, Path::new("templates.json"));
                    let want = case["error"].as_str().unwrap();
                    assert!(reason.contains(want), "{name}: {reason:?} lacks {want:?}");
                    refused += 1;
                }
                (ours, _) => panic!("{name}, add_generation_prompt {add_gen}, {messages:?}: ours {ours:?}, transformers {case}"),
            }
        }
    }
    assert_eq!((rendered, refused), (62, 8));
}

#[test]
fn the_end_of_turn_is_the_tag_after_an_assistant_message() {
    let want = [
        ("smollm2", "<|im_end|>"),
        ("chatml", "<|im_end|>"),
        ("llama2", "</s>"),
        ("llama3", "<|eot_id|>"),
        ("zephyr", "</s>"),
        ("gemma", "<end_of_turn>"),
        ("features", "</s>"), // no tag after the turn: the eos token
    ];
    for t in templates() {
        let name = t["name"].as_str().unwrap();
        let (_, end) = want.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(template(&t).end_of_turn().as_deref(), Some(*end), "{name}");
    }
}

#[test]
fn templates_load_from_a_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No template at all.
    assert!(ChatTemplate::from_dir(dir).unwrap().is_none());
    // A string, with AddedToken-style special tokens.
    let cfg = serde_json::json!({"chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
        "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_dir(dir).unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "a"), Message::new("assistant", "b")], true).unwrap(), "<s>a</s>b</s>");
    // A list of named templates: the default one.
    let cfg = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    assert_eq!(ChatTemplate::from_dir(dir).unwrap().unwrap().render(&[Message::new("user", "a")], false).unwrap(), "D1");
    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(dir.join("chat_template.jinja"), "J{{ messages[0].role }}\n").unwrap();
    assert_eq!(ChatTemplate::from_dir(dir).unwrap().unwrap().render(&[Message::new("user", "a")], false).unwrap(), "Juser");
    // A template that does not parse fails on load, naming its file.
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}{{ m.content }").unwrap();
    match ChatTemplate::from_dir(dir) {
        Err(e @ ModelError::ChatTemplate { .. }) => assert!(e.to_string().contains("chat_template.jinja"), "{e}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 7}"#).unwrap();
    let e = ChatTemplate::from_dir(dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("neither a string"), "{e}");
}
