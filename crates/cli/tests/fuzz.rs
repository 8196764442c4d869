//! Mutation fuzzing (proptest, bounded) of every parser of untrusted files: safetensors headers
//! and indexes, `config.json`, GPTQ `quantization_config`, `tokenizer.json`, datasets,
//! calibration files, search caches and run records. The property is always the same: the
//! parser returns a value or a typed error, and never panics. Each target prints how many
//! inputs it ran. The defects of this kind found so far (a `head_dim` that overflows, an index
//! with an empty `weight_map`, GPTQ `bits` of 0 or 64) are kept as plain regression tests in
//! `tests/faults.rs`; proptest shrinks and prints any new failing input.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use secateur::models::{ArchSpec, Cpu, DenseLm, TextTokenizer};

mod common;
use common::fixture;

/// Inputs per target: 192 in CI (bounded time), `SECATEUR_FUZZ_CASES` for longer local runs.
fn cases() -> u32 {
    std::env::var("SECATEUR_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(192)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// A JSON value of the kinds hostile files hold.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1i64 << 40..1i64 << 40).prop_map(serde_json::Value::from),
        (0u64..70).prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

/// Byte-level mutations of a file: truncation, byte overwrites (biased to the start, where the
/// headers are), and a forged 8-byte length prefix.
fn mutate(bytes: &[u8], cut: Option<usize>, edits: &[(usize, u8)], prefix: Option<u64>) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(at, v) in edits {
        let at = at % b.len().clamp(1, 512);
        if at < b.len() {
            b[at] = v;
        }
    }
    if let Some(p) = prefix
        && b.len() >= 8
    {
        b[..8].copy_from_slice(&p.to_le_bytes());
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

fn edits() -> impl Strategy<Value = (Option<usize>, Vec<(usize, u8)>, Option<u64>)> {
    (
        proptest::option::of(any::<usize>()),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        proptest::option::weighted(0.2, any::<u64>()),
    )
}

fn count(name: &str, c: &AtomicUsize) {
    let n = c.fetch_add(1, Ordering::Relaxed) + 1;
    if n == cases() as usize {
        println!("fuzz target {name}: {n} inputs");
    }
}

fn copy_fixture(variant: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(variant)).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

static SAFETENSORS: AtomicUsize = AtomicUsize::new(0);
static CONFIG: AtomicUsize = AtomicUsize::new(0);
static INDEX: AtomicUsize = AtomicUsize::new(0);
static GPTQ: AtomicUsize = AtomicUsize::new(0);
static TOKENIZER: AtomicUsize = AtomicUsize::new(0);
static DATASET: AtomicUsize = AtomicUsize::new(0);
static CALIBRATION: AtomicUsize = AtomicUsize::new(0);
static CACHE: AtomicUsize = AtomicUsize::new(0);
static RECORDS: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safetensors_files((cut, e, prefix) in edits()) {
        count("safetensors", &SAFETENSORS);
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("llama_gqa").join("model.safetensors")).unwrap();
        let path = tmp.path().join("model.safetensors");
        std::fs::write(&path, mutate(&bytes, cut, &e, prefix)).unwrap();
        if let Ok(ckpt) = secateur::models::Checkpoint::from_files(std::slice::from_ref(&path)) {
            for name in ckpt.names() {
                let shape = ckpt.shape(&name).unwrap().to_vec();
                let _ = ckpt.read_f32(&name, &shape);
            }
        }
        let model = tmp.path().join("m");
        copy_fixture("llama_gqa", &model);
        std::fs::copy(&path, model.join("model.safetensors")).unwrap();
        let _ = DenseLm::<Cpu>::load(&model, &Default::default());
    }

    #[test]
    fn config_json(variant in prop::sample::select(vec!["llama_gqa", "mpt_6heads_clip", "neox_parallel", "bloom_4heads", "mistral_window"]),
                   fields in proptest::collection::vec((prop::sample::select(vec![
                       "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "head_dim",
                       "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "rope_scaling", "sliding_window", "model_type",
                       "tie_word_embeddings", "d_model", "n_heads", "n_layers", "expansion_ratio", "attn_config", "n_head", "n_layer",
                       "rotary_pct", "layer_norm_epsilon", "secateur_subnet", "max_seq_len", "layer_norm_eps"]), any_json()), 1..4)) {
        count("config.json", &CONFIG);
        let tmp = tempfile::tempdir().unwrap();
        copy_fixture(variant, tmp.path());
        let p = tmp.path().join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for (k, x) in fields {
            v[k] = x;
        }
        if ArchSpec::from_config_value(&p, v.clone()).is_ok() {
            std::fs::write(&p, v.to_string()).unwrap();
            let _ = DenseLm::<Cpu>::load(tmp.path(), &Default::default());
        }
    }

    #[test]
    fn safetensors_index(map in proptest::collection::vec(("[a-z.]{0,30}", any_json()), 0..5), extra in any_json()) {
        count("index", &INDEX);
        let tmp = tempfile::tempdir().unwrap();
        copy_fixture("llama_gqa", tmp.path());
        std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
        let weight_map: serde_json::Map<String, serde_json::Value> = map.into_iter().collect();
        let index = serde_json::json!({"weight_map": weight_map, "metadata": extra});
        std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
        let _ = secateur::models::Checkpoint::open(tmp.path());
        let _ = DenseLm::<Cpu>::load(tmp.path(), &Default::default());
    }

    #[test]
    fn gptq_config(fields in proptest::collection::vec((prop::sample::select(vec!["bits", "group_size", "quant_method", "desc_act", "checkpoint_format", "sym"]), any_json()), 0..4)) {
        count("gptq quantization_config", &GPTQ);
        let tmp = tempfile::tempdir().unwrap();
        copy_fixture("llama_gqa", tmp.path());
        let p = tmp.path().join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 16});
        for (k, x) in fields {
            v["quantization_config"][k] = x;
        }
        std::fs::write(&p, v.to_string()).unwrap();
        if let Ok(Some(q)) = secateur::quant::checkpoint::quant_config(tmp.path()) {
            prop_assert!(matches!(q.bits, 2 | 4 | 8));
            let _ = secateur::quant::checkpoint::load_quantized::<Cpu>(tmp.path(), &Default::default());
        }
    }

    #[test]
    fn tokenizer_json((cut, e, _) in edits()) {
        count("tokenizer.json", &TOKENIZER);
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("llama_gqa").join("tokenizer.json")).unwrap();
        let p = tmp.path().join("tokenizer.json");
        std::fs::write(&p, mutate(&bytes, cut, &e, None)).unwrap();
        if let Ok(t) = TextTokenizer::from_file(&p) {
            let _ = t.encode("the cat sat on the mat");
        }
    }

    #[test]
    fn datasets(lines in proptest::collection::vec(prop_oneof![
        any_json().prop_map(|v| v.to_string()),
        proptest::collection::vec((prop::sample::select(vec!["instruction", "input", "output", "answer", "x"]), any_json()), 0..5)
            .prop_map(|f| serde_json::Value::Object(f.into_iter().map(|(k, v)| (k.to_string(), v)).collect()).to_string()),
        "[\\[\\]{}\",:a-z0-9 ]{0,40}",
    ], 0..6)) {
        count("datasets", &DATASET);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("d.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        let _ = secateur::supernet::data::read_records(&p);
    }

    #[test]
    fn calibration_files(lines in proptest::collection::vec(prop_oneof![
        any_json().prop_map(|v| v.to_string()),
        proptest::collection::vec(any::<u32>(), 0..5).prop_map(|v| serde_json::json!([v]).to_string()),
        any_json().prop_map(|v| serde_json::json!({"text": v}).to_string()),
        "[\\[\\]{}\",:a-z0-9 ]{0,40}",
    ], 0..5)) {
        count("calibration", &CALIBRATION);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.json");
        std::fs::write(&p, lines.join("\n")).unwrap();
        if let Ok(src) = secateur::sparsity::CalibrationSource::from_file(&p) {
            let tok = TextTokenizer::from_file(&fixture("llama_gqa").join("tokenizer.json")).unwrap();
            if let Ok(docs) = src.into_token_ids(Some(&tok), &p) {
                let _ = secateur::sparsity::sample_calibration(&docs, 4, 8, 0);
            }
        }
    }

    #[test]
    fn search_caches(lines in proptest::collection::vec(prop_oneof![
        any_json().prop_map(|v| v.to_string()),
        (proptest::collection::vec(any_json(), 0..3), any_json()).prop_map(|(x, f)| serde_json::json!({"x": x, "f": f}).to_string()),
        (proptest::collection::vec(0u8..3, 2), proptest::option::of(proptest::collection::vec(-10.0f64..10.0, 0..3))).prop_map(|(x, f)| serde_json::json!({"x": x, "f": f}).to_string()),
        Just(r#"{"context": {"problem": "zdt1-discrete"}}"#.to_string()),
        "[\\[\\]{}\",:a-z0-9 ]{0,40}",
    ], 0..6), partial in any::<bool>()) {
        count("search cache", &CACHE);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("e.jsonl");
        let mut text = lines.join("\n");
        if !partial {
            text.push('\n');
        }
        std::fs::write(&p, text).unwrap();
        let problem = secateur::search_algorithms::benchmarks::Benchmark::by_name("zdt1-discrete").unwrap();
        let ctx = serde_json::json!({"problem": "zdt1-discrete"});
        if let Ok(mut ev) = secateur::search_algorithms::Evaluator::persistent(&problem, &p, &ctx) {
            let _ = secateur::search_algorithms::nsga2::Nsga2::new(4, 0).run(&mut ev, 8);
        }
    }

    #[test]
    fn run_records(manifest in any_json(), pointer in any_json(), step_dir in "[a-z0-9./-]{0,12}") {
        count("run records", &RECORDS);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(secateur::runs::MANIFEST), manifest.to_string()).unwrap();
        let _ = secateur::runs::Manifest::read(tmp.path());
        let m = secateur::runs::Manifest::new("shears", &serde_json::json!({"seed": 0}));
        let _ = secateur::runs::RunDir::open(&tmp.path().join("sub"), &m, &[], secateur::runs::OpenMode::Resume, &[]);
        let _ = secateur::runs::RunDir::open(tmp.path(), &m, &[], secateur::runs::OpenMode::Resume, &[]);
        let ck = tmp.path().join("ck");
        std::fs::create_dir_all(ck.join("step-1")).unwrap();
        std::fs::write(ck.join("state.json"), serde_json::json!({"step": pointer, "dir": step_dir, "state": {}}).to_string()).unwrap();
        let _ = secateur::runs::StepCheckpoints::new(&ck).latest::<serde_json::Value>();
        std::fs::write(ck.join("state.json"), pointer.to_string()).unwrap();
        let _ = secateur::runs::StepCheckpoints::new(&ck).latest::<serde_json::Value>();
    }
}

/// Found by `tokenizer_json` (3,000 inputs): the tokenizers crate panicked in its decoder
/// deserialiser on a truncated `tokenizer.json` (minimal input: a cut at byte
/// 16800793969433357083 mod (len + 1)). Every truncation point is now a typed error.
#[test]
fn regression_truncated_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("llama_gqa").join("tokenizer.json")).unwrap();
    let p = tmp.path().join("tokenizer.json");
    let found = (16800793969433357083u64 % (bytes.len() as u64 + 1)) as usize;
    for cut in (0..bytes.len()).step_by(13).chain([found]) {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = TextTokenizer::from_file(&p).err().expect("a truncated tokenizer.json is refused");
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
    }
}
