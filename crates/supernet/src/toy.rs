//! The embedded default of `secateur shears`: a generated pretraining corpus, a word-level
//! tokenizer, a tiny LLaMA config, and a downstream task of one- and two-step arithmetic word
//! problems in the LLM-Adapters format (the math-reasoning setting of the papers).
//!
//! Everything is generated from a seed, so the corpus and the task are redistributable and
//! reproducible. The corpus holds short stories and arithmetic facts; it never holds a question
//! in the Alpaca format, so a model pretrained on it cannot answer the task before fine-tuning.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::data::Record;

const NAMES: &[&str] = &["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe"];
const ITEMS: &[&str] = &["apples", "books", "coins", "pens", "cards", "eggs", "stickers", "marbles"];
const FRIENDS: &[&str] = &["a friend", "his sister", "her brother", "the teacher"];
/// Largest operand of the task.
pub const MAX_OPERAND: u32 = 20;
/// Numbers in the vocabulary: 0..=MAX_NUMBER.
pub const MAX_NUMBER: u32 = 100;
const SPECIAL: &[&str] = &["<unk>", "<pad>", "<s>", "</s>"];
/// Id of `</s>`.
pub const EOS: u32 = 3;
/// Id of `<pad>`.
pub const PAD: u32 = 1;

/// Words of the LLM-Adapters Alpaca prompt and of the stories (the tokenizer splits on
/// whitespace and punctuation).
const WORDS: &str = "Below is an instruction that describes a task , paired with input provides further context . \
    Write response appropriately completes the request ### Instruction : Input Response \
    has buys more gives to friend his sister her brother teacher How many does have now ? The answer \
    Now Then finds loses then and plus minus equals is are one two three four five six seven eight nine ten \
    In morning afternoon evening day next after each so all total left together + - = there were";

/// The vocabulary: special tokens, words, names, items and the numbers 0..=100.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    let mut push = |w: &str| {
        if !v.iter().any(|x| x == w) {
            v.push(w.to_string());
        }
    };
    for w in WORDS.split_whitespace() {
        push(w);
    }
    for w in NAMES.iter().chain(ITEMS) {
        push(w);
    }
    for f in FRIENDS {
        for w in f.split_whitespace() {
            push(w);
        }
    }
    for n in 0..=MAX_NUMBER {
        push(&n.to_string());
    }
    v
}

/// A Hugging Face `tokenizer.json`: word level, split on whitespace and punctuation.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab = vocabulary();
    let added: Vec<_> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let map: serde_json::Map<String, serde_json::Value> = vocab.iter().enumerate().map(|(i, w)| (w.clone(), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
    })
}

/// The tiny LLaMA's `config.json`.
pub fn tiny_llama_config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocabulary().len(),
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 2,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "torch_dtype": "float32"
    })
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// One generated story of the pretraining corpus.
fn story(rng: &mut StdRng) -> String {
    let name = pick(rng, NAMES);
    let item = pick(rng, ITEMS);
    let mut count = rng.random_range(1..=MAX_OPERAND);
    let mut s = format!("{name} has {count} {item} .");
    for _ in 0..rng.random_range(1..=3) {
        if rng.random_bool(0.5) || count == 0 {
            let b = rng.random_range(1..=MAX_OPERAND);
            s += &match rng.random_range(0..3) {
                0 => format!(" {name} buys {b} more {item} ."),
                1 => format!(" In the morning {name} finds {b} more {item} ."),
                _ => format!(" Then {name} buys {b} more {item} ."),
            };
            count += b;
        } else {
            let b = rng.random_range(1..=count);
            let friend = pick(rng, FRIENDS);
            s += &format!(" {name} gives {b} {item} to {friend} .");
            count -= b;
        }
        if count > MAX_NUMBER {
            break;
        }
    }
    s + &format!(" Now {name} has {count} {item} .")
}

/// One arithmetic fact of the corpus.
fn fact(rng: &mut StdRng) -> String {
    let a = rng.random_range(0..=MAX_OPERAND * 2);
    let b = rng.random_range(0..=MAX_OPERAND);
    if rng.random_bool(0.5) {
        format!("{a} + {b} = {} .", a + b)
    } else {
        let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
        format!("{hi} - {lo} = {} .", hi - lo)
    }
}

/// The pretraining corpus: `n` documents, each a few stories and facts.
pub fn corpus(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let parts: Vec<String> =
                (0..rng.random_range(2..=5)).map(|_| if rng.random_bool(0.6) { story(&mut rng) } else { fact(&mut rng) }).collect();
            parts.join(" ")
        })
        .collect()
}

/// One word problem: one step (buy or give) or two steps (buy, then give).
pub fn word_problem(rng: &mut StdRng) -> Record {
    let name = pick(rng, NAMES);
    let item = pick(rng, ITEMS);
    let friend = pick(rng, FRIENDS);
    let a = rng.random_range(1..=MAX_OPERAND);
    let question = format!("How many {item} does {name} have now ?");
    let (instruction, output, answer) = match rng.random_range(0..3) {
        0 => {
            let b = rng.random_range(1..=MAX_OPERAND);
            (
                format!("{name} has {a} {item} . {name} buys {b} more {item} . {question}"),
                format!("{name} has {a} + {b} = {} {item} . The answer is {} .", a + b, a + b),
                a + b,
            )
        }
        1 => {
            let b = rng.random_range(1..=a);
            (
                format!("{name} has {a} {item} . {name} gives {b} {item} to {friend} . {question}"),
                format!("{name} has {a} - {b} = {} {item} . The answer is {} .", a - b, a - b),
                a - b,
            )
        }
        _ => {
            let b = rng.random_range(1..=MAX_OPERAND);
            let c = rng.random_range(1..=a + b);
            (
                format!("{name} has {a} {item} . {name} buys {b} more {item} . Then {name} gives {c} {item} to {friend} . {question}"),
                format!("{a} + {b} = {} . {} - {c} = {} . The answer is {} .", a + b, a + b, a + b - c, a + b - c),
                a + b - c,
            )
        }
    };
    Record { instruction, input: String::new(), output, answer: answer.to_string() }
}

/// The task's fixed splits: (train, validation, test), disjoint by instruction text.
pub fn arithmetic_task(train: usize, val: usize, test: usize, seed: u64) -> (Vec<Record>, Vec<Record>, Vec<Record>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::with_capacity(train + val + test);
    while all.len() < train + val + test {
        let r = word_problem(&mut rng);
        if seen.insert(r.instruction.clone()) {
            all.push(r);
        }
    }
    let test_set = all.split_off(train + val);
    let val_set = all.split_off(train);
    (all, val_set, test_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_is_consistent_and_disjoint() {
        let (train, val, test) = arithmetic_task(300, 50, 50, 7);
        assert_eq!((train.len(), val.len(), test.len()), (300, 50, 50));
        for r in train.iter().chain(&val).chain(&test) {
            let ans: u32 = r.answer.parse().unwrap();
            assert!(r.output.ends_with(&format!("The answer is {ans} .")), "{r:?}");
            assert!(crate::eval::is_correct(&r.output, &r.answer, crate::eval::AnswerKind::Math));
        }
        let train_q: std::collections::HashSet<_> = train.iter().map(|r| &r.instruction).collect();
        assert!(val.iter().chain(&test).all(|r| !train_q.contains(&r.instruction)));
        assert_eq!(arithmetic_task(300, 50, 50, 7).2, test, "reproducible");
    }

    #[test]
    fn the_tokenizer_knows_every_word() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tokenizer_json().to_string()).unwrap();
        let tok = secateur_models::TextTokenizer::from_file(&path).unwrap();
        let (train, _, _) = arithmetic_task(200, 0, 0, 1);
        let texts = corpus(50, 2)
            .into_iter()
            .chain(train.iter().map(|r| format!("{}{}", crate::data::alpaca_prompt(&r.instruction, &r.input), r.output)));
        for t in texts {
            let ids = tok.encode(&t).unwrap();
            assert!(!ids.contains(&0), "unknown word in {t:?}: {:?}", tok.decode(&ids));
        }
        assert_eq!(tok.token_id("</s>"), Some(EOS));
        assert_eq!(tok.decode(&tok.encode("Tom has 12 apples .").unwrap()).unwrap(), "Tom has 12 apples .");
    }
}
