//! End-to-end tests of the `secateur` binary on the models crate's fixtures.

use std::path::{Path, PathBuf};

use safetensors::tensor::SafeTensors;

mod common;
use common::{fixture, secateur};

/// The 40-record dataset of these tests, in `dir`.
fn toy_dataset(dir: &std::path::Path) -> PathBuf {
    common::records(dir, 40, true)
}

#[test]
fn info_summarises_the_checkpoint() {
    let dir = fixture("llama_gqa");
    let (ok, stdout, stderr) = secateur(&["info", "--model", dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["family"], "llama");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["heads"], 4);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["hidden_size"], 32);
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 14);
    assert_eq!(sites[1]["site"], "layers.0.self_attn.k");
    assert_eq!(sites[1]["module"], "model.layers.0.self_attn.k_proj");
    assert_eq!(sites[1]["shape"], serde_json::json!([16, 32]));
}

/// `secateur logits --model MODEL` on the token ids `ids` (JSON), with its own import cache.
fn secateur_logits(model: &std::path::Path, ids: &str, cache: &std::path::Path) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ids.json");
    std::fs::write(&input, ids).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["logits", "--model", model.to_str().unwrap(), "--input-ids", input.to_str().unwrap()])
        .env("SECATEUR_CACHE", cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `secateur logits --model MODEL` on the input ids of a transformers reference equals its logits.
fn check_logits(model: &std::path::Path, reference: &std::path::Path, cache: &std::path::Path) {
    let bytes = std::fs::read(reference).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<i64> = st.tensor("input_ids").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let mask: Vec<i64> =
        st.tensor("attention_mask").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let lt = st.tensor("logits").unwrap();
    let [_, s, v] = [lt.shape()[0], lt.shape()[1], lt.shape()[2]];
    let reference: Vec<f32> = lt.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let seqs: Vec<Vec<i64>> =
        ids.chunks(s).zip(mask.chunks(s)).map(|(i, m)| i.iter().zip(m).filter(|(_, m)| **m == 1).map(|(i, _)| *i).collect()).collect();
    let out = secateur_logits(model, &serde_json::to_string(&seqs).unwrap(), cache);
    let rows = out["logits"].as_array().unwrap();
    assert_eq!(rows.len(), seqs.len());
    for (b, seq) in seqs.iter().enumerate() {
        let row = rows[b].as_array().unwrap();
        assert_eq!(row.len(), seq.len(), "ragged output: one row per real token");
        for (t, logits) in row.iter().enumerate() {
            let logits = logits.as_array().unwrap();
            assert_eq!(logits.len(), v);
            for (i, x) in logits.iter().enumerate() {
                let want = reference[(b * s + t) * v + i];
                assert!((x.as_f64().unwrap() as f32 - want).abs() <= 1e-4, "{}: [{b}, {t}, {i}]", model.display());
            }
        }
    }
}

/// The largest |difference| of `secateur logits` between two models on the same token ids
/// (40 rows: more than the INT-n kernels' int8-activation path takes, so GPTQ weights are
/// dequantized exactly).
fn logits_gap(a: &std::path::Path, b: &std::path::Path, cache: &std::path::Path) -> f32 {
    let ids: Vec<Vec<u32>> = vec![(0..22).map(|i| (i * 7 + 1) % 60).collect(), (0..18).map(|i| (i * 5 + 3) % 60).collect()];
    let ids = serde_json::to_string(&ids).unwrap();
    let run = |m: &std::path::Path| -> Vec<f32> {
        secateur_logits(m, &ids, cache)["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .flat_map(|t| t.as_array().unwrap())
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let (x, y) = (run(a), run(b));
    assert_eq!(x.len(), y.len());
    x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_of_unequal_lengths_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    check_logits(&fixture("bloom_6heads_postln"), &fixture("bloom_6heads_postln").join("reference.safetensors"), tmp.path());
}

#[test]
fn a_gguf_file_is_a_model_and_its_import_is_cached() {
    // transformers' logits of its own `from_pretrained(dir, gguf_file=...)` load of the file.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gguf = fixture("gguf").join("llama64_q4_1.gguf");
    check_logits(&gguf, &fixture("gguf").join("llama64_q4_1.reference.safetensors"), &cache);
    let imported: Vec<_> = std::fs::read_dir(cache.join("gguf")).unwrap().collect();
    assert_eq!(imported.len(), 1, "one import in the cache");
    // The second use reuses the import (same directory, not rewritten).
    let dir = imported[0].as_ref().unwrap().path();
    let stamp = std::fs::metadata(dir.join("config.json")).unwrap().modified().unwrap();
    check_logits(&gguf, &fixture("gguf").join("llama64_q4_1.reference.safetensors"), &cache);
    assert_eq!(std::fs::read_dir(cache.join("gguf")).unwrap().count(), 1);
    assert_eq!(std::fs::metadata(dir.join("config.json")).unwrap().modified().unwrap(), stamp);
}

#[test]
fn generate_is_deterministic_and_greedy_by_default() {
    let dir = fixture("llama_gqa");
    let d = dir.to_str().unwrap();
    let args = ["generate", "--model", d, "--prompt", "the cat sat", "--max-new-tokens", "6"];
    let (ok, a, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    assert!(!a.trim().is_empty());
    let (_, b, _) = secateur(&args);
    assert_eq!(a, b);
    let (_, c, _) = secateur(&[&args[..], &["--no-cache"]].concat());
    assert_eq!(a, c, "cached and uncached greedy decoding agree");
    let sample = ["--temperature", "1.0", "--top-p", "0.9", "--seed", "5"];
    let (ok, s1, _) = secateur(&[&args[..], &sample].concat());
    let (_, s2, _) = secateur(&[&args[..], &sample].concat());
    assert!(ok);
    assert_eq!(s1, s2);
}

/// A copy of the LLaMA fixture in `dir/m`, without a `tokenizer_config.json` (so no chat
/// template until a test writes one).
fn llama_copy(dir: &Path) -> PathBuf {
    let m = dir.join("m");
    std::fs::create_dir(&m).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("llama_gqa").join(f), m.join(f)).unwrap();
    }
    m
}

/// The chat template fixture `name` (its source and transformers' renders).
fn chat_fixture(name: &str) -> serde_json::Value {
    let templates: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("chat").join("templates.json")).unwrap()).unwrap();
    templates["templates"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone()
}

/// `eval --chat` scores as lm-eval's `--apply_chat_template --system_instruction` (the fixture
/// of crates/eval/tests, `scripts/make_eval_fixtures.py`), records the setting, and refuses a
/// model without a template.
#[test]
fn eval_chat_scores_as_lm_eval_apply_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = llama_copy(tmp.path());
    let d = dir.to_str().unwrap();
    let eval_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval/tests");
    let mc = format!("mc:{}", eval_dir.join("data/mc.jsonl").display());
    let (ok, _, stderr) = secateur(&["eval", "--model", d, "--task", &mc, "--chat"]);
    assert!(!ok && stderr.contains("no chat template") && stderr.contains(d), "{stderr}");
    let zephyr = chat_fixture("zephyr");
    let config = serde_json::json!({"chat_template": zephyr["template"], "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_dir.join("fixtures/chat_llama_gqa.json")).unwrap()).unwrap();
    let run = &reference["runs"][0];
    assert_eq!(run["template"], "zephyr");
    let system = run["system_instruction"].as_str().unwrap();
    let out = tmp.path().join("out");
    let args = ["eval", "--model", d, "--task", &mc, "--chat", "--system", system, "--max-length", "512", "--out", out.to_str().unwrap()];
    let (ok, _, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["settings"]["chat_template"]["system_instruction"], system);
    let (ours, theirs) = (&results["results"][0]["metrics"], &run["tasks"]["mc"]["metrics"]);
    for metric in ["acc", "acc_norm"] {
        assert_eq!(ours[metric].as_f64(), theirs[metric].as_f64(), "{metric}");
    }
    let samples = std::fs::read_to_string(out.join("samples-mc_mc.jsonl")).unwrap();
    let lls: Vec<f64> = samples
        .lines()
        .flat_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["requests"].as_array().unwrap().clone())
        .map(|q| q["loglik"].as_f64().unwrap())
        .collect();
    let want: Vec<f64> = run["tasks"]["mc"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["lls"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(lls.len(), want.len());
    assert!(lls.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4), "{lls:?} vs lm-eval {want:?}");
    // The pipelines' --chat needs a base with a template, checked before any work.
    let run = tmp.path().join("run");
    let (ok, _, stderr) = secateur(&["shears", "--chat", "--out", run.to_str().unwrap()]);
    assert!(!ok && stderr.contains("no chat template"), "{stderr}");
    assert!(!run.exists(), "nothing written");
}

#[test]
fn generate_chat_applies_the_template_and_stops_at_its_end_of_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = llama_copy(tmp.path());
    let d = dir.to_str().unwrap();
    let (ok, _, stderr) = secateur(&["generate", "--model", d, "--prompt", "hi", "--chat"]);
    assert!(!ok && stderr.contains("no chat template") && stderr.contains(d), "{stderr}");
    // transformers' rendering of the Zephyr-style template (fixtures/chat/templates.json).
    let zephyr = chat_fixture("zephyr");
    let case = &zephyr["cases"][2]; // system + user, with the generation prompt
    assert_eq!(case["add_generation_prompt"], true);
    let config = serde_json::json!({"chat_template": zephyr["template"], "bos_token": "<s>", "eos_token": "</s>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let (system, user) = (case["messages"][0]["content"].as_str().unwrap(), case["messages"][1]["content"].as_str().unwrap());
    let args = ["generate", "--model", d, "--chat", "--system", system, "--prompt", user, "--max-new-tokens", "5", "--json"];
    let (ok, out, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["prompt"], case["rendered"]);
    let ids = |v: &serde_json::Value| -> Vec<u64> { v["completion_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect() };
    assert_eq!(ids(&out).len(), 5, "{out}");
    // Decoding stops at the end of turn: with a template that puts no tag after a turn that is
    // the eos token, so naming a token the model generates as eos cuts the completion there.
    let features = chat_fixture("features");
    let with_eos = |eos: &str| {
        let config = serde_json::json!({"chat_template": features["template"], "eos_token": eos});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        let (ok, out, stderr) = secateur(&["generate", "--model", d, "--chat", "--prompt", user, "--max-new-tokens", "6", "--json"]);
        assert!(ok, "{stderr}");
        ids(&serde_json::from_str(&out).unwrap())
    };
    let free = with_eos("</s>");
    let tok = secateur::models::TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let k = (1..free.len()).find(|&k| !free[..k].contains(&free[k])).expect("a token not generated before");
    let stop = tok.vocab_token(free[k] as u32).unwrap();
    assert_eq!(with_eos(&stop), free[..=k], "stops at {stop:?}");
}

#[test]
fn bad_input_fails_with_a_message_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ids.json");
    std::fs::write(&input, "[[1, 2, 999]]").unwrap();
    let dir = fixture("llama_gqa");
    let (ok, _, stderr) = secateur(&["logits", "--model", dir.to_str().unwrap(), "--input-ids", input.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("ids.json") && stderr.contains("999"), "{stderr}");
    let (ok, _, stderr) = secateur(&["info", "--model", "/nonexistent/model"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model/config.json"), "{stderr}");
    let (ok, _, stderr) = secateur(&["info", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok && stderr.contains("cannot read /nonexistent/model.gguf:") && !stderr.contains("config.json"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn prune_writes_a_sparse_checkpoint_with_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures/calibration.json");
    let dir = fixture("llama_gqa");
    for (flag, value, out_name) in [("--sparsity", "0.5", "half"), ("--nm", "2:4", "two_four")] {
        let out = tmp.path().join(out_name);
        let (ok, stdout, stderr) = secateur(&[
            "prune",
            "--model",
            dir.to_str().unwrap(),
            "--method",
            "wanda",
            flag,
            value,
            "--calibration",
            calib.to_str().unwrap(),
            "--calibration-samples",
            "8",
            "--seq-len",
            "8",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(summary["total_sparsity"], 0.5);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("sparsity.json")).unwrap()).unwrap();
        assert_eq!(report["sites"].as_object().unwrap().len(), 14);
        // The zeros of the written weights are exactly the masks' pruned entries.
        let weights = std::fs::read(out.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&weights).unwrap();
        let masks = std::fs::read(out.join("masks.safetensors")).unwrap();
        let masks = SafeTensors::deserialize(&masks).unwrap();
        let mask = masks.tensor("layers.1.mlp.down").unwrap();
        let w: Vec<f32> = weights
            .tensor("model.layers.1.mlp.down_proj.weight")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(mask.shape(), &[32, 48]);
        for (k, w) in mask.data().iter().zip(&w) {
            assert_eq!(*k == 0, *w == 0.0);
        }
        // Untouched tensors are copied as they were.
        assert!(weights.tensor("model.embed_tokens.weight").unwrap().data().iter().any(|b| *b != 0));
        // The result is a checkpoint secateur loads and runs.
        let (ok, _, stderr) = secateur(&["info", "--model", out.to_str().unwrap()]);
        assert!(ok, "{stderr}");
    }
    let (ok, _, stderr) = secateur(&["prune", "--model", dir.to_str().unwrap(), "--nm", "4:4", "--out", "/tmp/x"]);
    assert!(!ok && stderr.contains("4:4"), "{stderr}");
    let (ok, _, stderr) = secateur(&["prune", "--model", dir.to_str().unwrap(), "--sparsity", "0.5", "--out", "/tmp/x"]);
    assert!(!ok && stderr.contains("--calibration"), "{stderr}");
}

/// `shears --chat`: the examples and the evaluation prompts are the base's chat template's
/// (the training loss differs from the Alpaca run's), the `--eval-task` evaluations are
/// chat-prompted as lm-eval's `--apply_chat_template` prompts them (the dense row's scores equal
/// lm-eval's on the same base), the setting is recorded, and `search` reloads it from the run.
#[test]
fn shears_chat_trains_on_the_template_and_search_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_dataset(tmp.path());
    let dir = llama_copy(tmp.path());
    let zephyr = chat_fixture("zephyr");
    let config = serde_json::json!({"chat_template": zephyr["template"], "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let eval_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval/tests");
    let mc = format!("mc:{}", eval_dir.join("data/mc.jsonl").display());
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_dir.join("fixtures/chat_llama_gqa.json")).unwrap()).unwrap();
    let lm_eval = &reference["runs"][0];
    assert_eq!(lm_eval["template"], "zephyr");
    let system = lm_eval["system_instruction"].as_str().unwrap();
    let run = |chat: bool| {
        let out = tmp.path().join(if chat { "chat" } else { "alpaca" });
        let mut args: Vec<&str> = vec!["shears", "--model", dir.to_str().unwrap(), "--dataset", data.to_str().unwrap()];
        args.extend(["--epochs", "1", "--batch-size", "8", "--ranks", "4,2", "--test-size", "6", "--val-size", "4"]);
        args.extend(["--calibration-samples", "4", "--max-new-tokens", "3", "--out", out.to_str().unwrap()]);
        args.extend(["--eval-task", &mc, "--eval-max-length", "512"]);
        if chat {
            args.extend(["--chat", "--system", system]);
        }
        let (ok, _, stderr) = secateur(&args);
        assert!(ok, "{stderr}");
        let losses: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("train-lora/report.json")).unwrap()).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        (out, losses["losses"][0].as_f64().unwrap(), report["rows"][0]["eval"].clone())
    };
    let ((out, chat_loss, chat_eval), (_, alpaca_loss, alpaca_eval)) = (run(true), run(false));
    assert_ne!(chat_loss, alpaca_loss, "the chat examples are other tokens");
    for metric in ["acc", "acc_norm"] {
        assert_eq!(chat_eval[format!("mc:mc {metric}")].as_f64(), lm_eval["tasks"]["mc"]["metrics"][metric].as_f64(), "{metric}");
    }
    assert_ne!(chat_eval, alpaca_eval, "the Alpaca run's evaluation is not chat-prompted");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(secateur::runs::MANIFEST)).unwrap()).unwrap();
    assert_eq!((manifest["args"]["chat"].as_bool(), manifest["args"]["system"].as_str()), (Some(true), Some(system)));
    let (ok, stdout, stderr) = secateur(&["search", "--run", out.to_str().unwrap(), "--algo", "heuristic"]);
    assert!(ok && stdout.contains("| heuristic |"), "{stderr}");
}

#[test]
fn shears_runs_end_to_end_on_a_user_model_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_dataset(tmp.path());
    let out = tmp.path().join("run");
    let dir = fixture("llama_gqa");
    let ppl = format!("ppl:{}", eval_data("ppl.jsonl"));
    let args = [
        "shears",
        "--model",
        dir.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--ranks",
        "4,2",
        "--test-size",
        "6",
        "--val-size",
        "4",
        "--calibration-samples",
        "4",
        "--max-new-tokens",
        "3",
        "--checkpoint-every",
        "2",
        "--eval-task",
        &ppl,
        "--export",
        "gguf:f16",
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| Wanda 50% + NLS (heuristic) |"), "{stdout}");
    assert!(stdout.contains("| ppl:ppl word_perplexity |"), "the --eval-task metrics are columns: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(report["split"]["test"], 6);
    assert_eq!(report["split"]["train"], 30);
    // The dense-base LoRA row: the same adapters and schedule on the unpruned base.
    assert_eq!(rows[1]["name"], "Dense + LoRA (rank 4)");
    assert_eq!(rows[1]["sparsity"], 0.0);
    assert!(rows[1]["train_seconds"].as_f64().is_some() && out.join("train-lora-dense/state.json").is_file());
    for r in &rows[2..] {
        assert!((r["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    }
    assert_eq!(rows[4]["adapter_ranks"][0], 4); // NLS maximal
    assert_eq!(rows[5]["adapter_ranks"][0], 2); // heuristic: index floor(2/2) = 1 of [4, 2]
    // Every row carries the evaluation, and the models differ in it.
    let ppls: Vec<f64> = rows.iter().map(|r| r["eval"]["ppl:ppl word_perplexity"].as_f64().unwrap()).collect();
    assert!(ppls.iter().all(|p| p.is_finite() && *p > 1.0), "{ppls:?}");
    assert_ne!(ppls[0], ppls[2], "pruning changes the perplexity");
    assert!(out.join("nls-heuristic-adapter/adapter_config.json").is_file());
    assert!(out.join("wanda/masks.safetensors").is_file());
    assert!(out.join("train-nls/state.json").is_file());
    assert!(out.join(secateur::runs::MANIFEST).is_file(), "the run records what made it");
    // --export: the sparse base and the merged heuristic sub-adapter, as GGUF files that run.
    let gguf = report["gguf"].as_array().unwrap();
    assert_eq!(gguf.len(), 3, "{gguf:?}");
    for (g, name) in gguf.iter().zip(["wanda-f16.gguf", "nls-heuristic-merged-f16.gguf"]) {
        let path = out.join("gguf").join(name);
        assert_eq!(g["path"].as_str(), path.to_str());
        // F16 rounds every weight: the logits stay close to the checkpoint's.
        let gap = logits_gap(&path, std::path::Path::new(g["model"].as_str().unwrap()), &tmp.path().join("cache"));
        assert!(gap < 0.01, "{name}: {gap}");
    }
    // The heuristic sub-adapter as a llama.cpp LoRA file: base + scale·B·A is the merged model
    // (B's Q/K rows in llama.cpp's RoPE order, the PEFT scale folded in, alpha 0).
    let adapter = secateur::models::gguf::GgufFile::open(&out.join("gguf/nls-heuristic-adapter-f16.gguf")).unwrap();
    assert_eq!(adapter.get("general.type").and_then(|v| v.as_str()), Some("adapter"));
    assert_eq!(adapter.get("adapter.lora.alpha").and_then(|v| v.as_f64()), Some(0.0));
    let base = secateur::models::weights::Checkpoint::open(&out.join("wanda")).unwrap();
    let merged = secateur::models::weights::Checkpoint::open(&out.join("nls-heuristic-merged")).unwrap();
    for (gguf_name, hf, heads) in [
        ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", Some(4)),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", None),
    ] {
        let Some(info) = adapter.tensor(&format!("{gguf_name}.lora_b")) else { continue };
        let [r, rows] = [info.shape()[1], info.shape()[0]];
        let mut b = adapter.read_f32(&format!("{gguf_name}.lora_b")).unwrap();
        let a = adapter.read_f32(&format!("{gguf_name}.lora_a")).unwrap();
        let cols = a.len() / r;
        if let Some(h) = heads {
            b = secateur::models::gguf::import::permute_rows(&b, rows, h, true);
        }
        let (w0, w1) = (base.read_f32(hf, &[rows, cols]).unwrap(), merged.read_f32(hf, &[rows, cols]).unwrap());
        for i in (0..rows).step_by(3) {
            for j in (0..cols).step_by(5) {
                let delta: f32 = (0..r).map(|k| b[i * r + k] * a[k * cols + j]).sum();
                assert!((w0[i * cols + j] + delta - w1[i * cols + j]).abs() < 2e-3, "{hf}[{i},{j}]");
            }
        }
    }
    assert!(adapter.tensor("blk.1.attn_q.weight.lora_b").is_some(), "q is adapted");
    // A second run on the same directory needs --resume; resuming a finished run retrains nothing.
    let (ok, _, stderr) = secateur(&args);
    assert!(!ok && stderr.contains("--resume"), "{stderr}");
    let (ok, _, stderr) = secateur(&[&args[..], &["--resume"]].concat());
    assert!(ok, "{stderr}");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(again["rows"][5]["accuracy"], rows[5]["accuracy"]);

    // Search the trained super-adapter: every evaluation is cached, and a rerun evaluates nothing.
    let run = out.to_str().unwrap();
    for algo in ["nsga2", "hill-climb", "heuristic"] {
        let (ok, stdout, stderr) = secateur(&["search", "--run", run, "--algo", algo, "--budget", "6", "--pop", "4"]);
        assert!(ok, "{algo}: {stderr}");
        assert!(stdout.contains("| maximal |") && stdout.contains("| front 1 |"), "{stdout}");
        let dir = out.join("search").join(algo);
        for f in ["evaluations.jsonl", "evaluations.json", "front.json", "points.csv", "front.svg", "report.json"] {
            assert!(dir.join(f).is_file(), "{algo}: {f}");
        }
        // One header line (what defines the evaluations), then one line per evaluation.
        let lines = std::fs::read_to_string(dir.join("evaluations.jsonl")).unwrap().lines().count();
        assert!(lines <= 7, "{algo}: {} evaluations for a budget of 6", lines - 1);
        let (ok, _, stderr) = secateur(&["search", "--run", run, "--algo", algo, "--budget", "6", "--pop", "4"]);
        assert!(ok && stderr.contains("cached evaluations loaded"), "{stderr}");
        assert_eq!(std::fs::read_to_string(dir.join("evaluations.jsonl")).unwrap().lines().count(), lines);
        let svg = std::fs::read_to_string(dir.join("front.svg")).unwrap();
        assert!(svg.contains("validation error") && svg.contains("MACs per token"));
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["search"]["nsga2"]["chosen"].as_array().unwrap().len() >= 4);
    let (ok, _, stderr) = secateur(&["search", "--run", run, "--algo", "nsga2", "--objectives", "accuracy,speed"]);
    assert!(!ok && stderr.contains("speed"), "{stderr}");
}

#[test]
fn sqft_runs_the_three_pipelines_and_keeps_sparsity_and_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_dataset(tmp.path());
    let out = tmp.path().join("sqft");
    let dir = fixture("llama_gqa");
    let (ok, stdout, stderr) = secateur(&[
        "sqft",
        "--model",
        dir.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--ranks",
        "4,2",
        "--test-size",
        "6",
        "--val-size",
        "4",
        "--calibration-samples",
        "4",
        "--max-new-tokens",
        "3",
        "--group-size",
        "16",
        "--export",
        "gguf:f32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("QA-SparsePEFT"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let wanda = rows[1]["sparsity"].as_f64().unwrap();
    for r in &rows[4..] {
        assert_eq!(r["mergeable"], "yes");
        assert!(r["sparsity"].as_f64().unwrap() >= wanda - 1e-12, "{r}");
    }
    assert_eq!(rows[5]["base_precision"], "INT4");
    // The merged INT4 model is a GPTQ checkpoint that secateur loads and runs.
    let merged = out.join("qa-sparsepeft-merged");
    let (ok, info, stderr) = secateur(&["info", "--model", merged.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(info.contains("quantized_projection_bytes"));
    assert!(rows[5]["size_bytes"].as_u64().unwrap() < rows[4]["size_bytes"].as_u64().unwrap());
    // --export gguf:f32: both merged models, the INT4 one dequantized; each runs as its checkpoint.
    let gguf = report["gguf"].as_array().unwrap();
    assert_eq!(gguf.len(), 2, "{gguf:?}");
    for (g, name) in gguf.iter().zip(["sparsepeft-merged", "qa-sparsepeft-merged"]) {
        let path = out.join("gguf").join(format!("{name}-f32.gguf"));
        assert_eq!(g["path"].as_str(), path.to_str());
        let gap = logits_gap(&path, &out.join(name), &tmp.path().join("cache"));
        assert!(gap < 1e-4, "{name}: {gap}");
    }
}

#[test]
fn quantize_writes_a_checkpoint_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let dir = fixture("llama_gqa");
    let (ok, stdout, stderr) =
        secateur(&["quantize", "--model", dir.to_str().unwrap(), "--bits", "4", "--group-size", "16", "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["weights_bytes"].as_u64().unwrap() < v["source_weights_bytes"].as_u64().unwrap());
    let (ok, text, stderr) = secateur(&["generate", "--model", out.to_str().unwrap(), "--prompt", "the cat", "--max-new-tokens", "4"]);
    assert!(ok && !text.trim().is_empty(), "{stderr}");
    let (ok, _, stderr) = secateur(&["quantize", "--model", dir.to_str().unwrap(), "--bits", "9", "--out", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains("--bits 9"), "{stderr}");
}

#[test]
fn quantize_by_gptq_with_act_order_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("g");
    let dir = fixture("llama_gqa");
    let calib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sparsity/tests/fixtures/calibration.json");
    let (ok, stdout, stderr) = secateur(&[
        "quantize",
        "--model",
        dir.to_str().unwrap(),
        "--calibration",
        calib.to_str().unwrap(),
        "--seq-len",
        "16",
        "--act-order",
        "--group-size",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["method"], "gptq", "GPTQ is the default with --calibration");
    assert_eq!(v["calibration_samples"], 8);
    assert!(v["gptq"]["reconstruction_error_gptq"].as_f64().unwrap() < v["gptq"]["reconstruction_error_rtn"].as_f64().unwrap());
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["desc_act"], true);
    assert_eq!(config["quantization_config"]["damp_percent"], 0.01);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gptq-report.json")).unwrap()).unwrap();
    assert_eq!(report["sites"].as_array().unwrap().len(), 14);
    let (ok, text, stderr) = secateur(&["generate", "--model", out.to_str().unwrap(), "--prompt", "the cat", "--max-new-tokens", "4"]);
    assert!(ok && !text.trim().is_empty(), "{stderr}");
}

fn check_nas_rows(out: &std::path::Path) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!((rows[0]["name"].as_str(), rows[1]["name"].as_str()), (Some("maximal"), Some("heuristic")));
    assert!(rows.len() >= 3);
    assert_eq!(rows[0]["decode_speedup"], 1.0);
    for row in rows {
        // Every extracted sub-network is a checkpoint secateur loads, with the counted size.
        let (ok, info, stderr) = secateur(&["info", "--model", row["dir"].as_str().unwrap()]);
        assert!(ok, "{stderr}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["parameters"], row["parameters"]);
        assert!(row["latency"]["prefill_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(out.join("search/front.svg").is_file());
    report
}

#[test]
fn nas_trains_searches_and_extracts_a_front() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_dataset(tmp.path());
    let out = tmp.path().join("nas");
    let dir = fixture("llama_gqa");
    let common = [
        "--model",
        dir.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--test-size",
        "6",
        "--val-size",
        "4",
        "--max-new-tokens",
        "3",
    ];
    let nas = |extra: &[&str], name: &str| {
        let o = out.join(name);
        let mut a = vec!["nas"];
        a.extend(common);
        a.extend(extra);
        a.extend(["--out", o.to_str().unwrap()]);
        let (ok, stdout, stderr) = secateur(&a);
        (ok, stdout, stderr, o)
    };
    let (ok, stdout, stderr, o) = nas(&["--budget", "6", "--importance", "--strategy", "sandwich"], "sandwich");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| nsga2-1 |") && stdout.contains("| maximal |"), "{stdout}");
    check_nas_rows(&o);
    // A finished run is not silently overwritten; --resume picks it up from its checkpoint.
    let (ok, _, stderr, _) = nas(&["--budget", "6", "--importance", "--strategy", "sandwich"], "sandwich");
    assert!(!ok && stderr.contains("--resume"), "{stderr}");
    let (ok, _, stderr, o) = nas(&["--budget", "6", "--importance", "--strategy", "sandwich", "--resume"], "sandwich");
    assert!(ok, "{stderr}");
    let report = check_nas_rows(&o);
    assert_eq!(report["train"]["resumed_from"], report["train"]["steps"]);
    // Per-block widths, searched against measured latency.
    let (ok, _, stderr, o) = nas(
        &["--budget", "6", "--strategy", "calibrate-mag", "--per-layer", "--objective", "latency", "--export", "gguf:f16"],
        "per-layer",
    );
    assert!(ok, "{stderr}");
    let report = check_nas_rows(&o);
    assert_eq!(report["objective"], "decode ms per token");
    // --export: every sub-network as GGUF (per-block sizes as llama.cpp's `deci`), each reading
    // back to the logits of its checkpoint.
    let gguf = report["gguf"].as_array().unwrap();
    assert_eq!(gguf.len(), report["rows"].as_array().unwrap().len());
    let mut archs = std::collections::BTreeSet::new();
    for g in gguf {
        let p = g["path"].as_str().unwrap_or_else(|| panic!("not exported: {g}"));
        assert!(logits_gap(p.as_ref(), g["model"].as_str().unwrap().as_ref(), &o.join("cache")) < 0.01);
        let file = secateur::models::gguf::GgufFile::open(p.as_ref()).unwrap();
        archs.insert(file.get("general.architecture").and_then(|v| v.as_str()).unwrap().to_string());
    }
    assert!(archs.contains("llama") && archs.contains("deci"), "the maximal sub-network is homogeneous, searched ones not: {archs:?}");
    // LoNAS: elastic LoRA ranks on the frozen base, sliced with the weights; everything extracts.
    // The search here ranks by validation accuracy of the extracted sub-networks.
    let (ok, stdout, stderr, o) = nas(&["--lora", "--ranks", "4,2", "--budget", "4", "--per-layer", "--metric", "accuracy"], "lonas");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("LoNAS") && stdout.contains("1 - validation accuracy vs parameters"), "{stdout}");
    let report = check_nas_rows(&o);
    assert!(report["rows"][1]["ranks"].is_array());
    let (ok, _, stderr, _) = nas(&["--metric", "bleu"], "bad");
    assert!(!ok && stderr.contains("possible values: loss, accuracy"), "a typo fails at parse time, listing the values: {stderr}");
}

/// The eval crate's task files.
fn eval_data(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eval/tests/data").join(name).to_string_lossy().into_owned()
}

#[test]
fn eval_writes_results_and_samples_and_matches_lm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let model = fixture("llama_gqa");
    let (ppl, arc) = (format!("ppl:{}", eval_data("ppl.jsonl")), format!("arc_easy:{}", eval_data("arc_easy.jsonl")));
    let args =
        ["eval", "--model", model.to_str().unwrap(), "--task", &ppl, "--task", &arc, "--max-length", "64", "--out", out.to_str().unwrap()];
    let (ok, stdout, stderr) = secateur(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| ppl:ppl | word_perplexity |") && stdout.contains("| arc_easy | acc_norm |"), "{stdout}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // lm-eval's ARC-Easy scores of the same file (crates/eval/tests/fixtures; its contexts fit
    // this window, so the window does not change them).
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eval/tests/fixtures/llama_gqa.json")).unwrap(),
    )
    .unwrap();
    for metric in ["acc", "acc_norm"] {
        assert_eq!(results["results"][1]["metrics"][metric], reference["tasks"]["arc_easy"]["metrics"][metric], "{metric}");
    }
    assert!(results["results"][0]["metrics"]["word_perplexity"].as_f64().unwrap().is_finite());
    assert_eq!(results["settings"]["config"]["max_length"], 64);
    let samples = std::fs::read_to_string(out.join("samples-arc_easy.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    assert_eq!(first["requests"].as_array().unwrap().len(), 4);
    assert_eq!(first["gold"], 1);
}

#[test]
fn eval_in_bf16_stays_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa");
    let ppl = format!("ppl:{}", eval_data("ppl.jsonl"));
    let run = |precision: &str| {
        let out = tmp.path().join(precision);
        let args = ["eval", "--model", model.to_str().unwrap(), "--task", &ppl, "--precision", precision, "--out", out.to_str().unwrap()];
        let (ok, _, stderr) = secateur(&args);
        (ok, stderr, out)
    };
    let (ok, stderr, f32_out) = run("f32");
    assert!(ok, "{stderr}");
    let (ok, stderr, bf16_out) = run("bf16");
    if !ok && stderr.contains("no AVX-512 BF16") {
        println!("skipped: {stderr}");
        return;
    }
    assert!(ok, "{stderr}");
    let read =
        |dir: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap() };
    let (a, b) = (read(&f32_out), read(&bf16_out));
    assert_eq!(b["settings"]["precision"], "bf16");
    let ppl = |r: &serde_json::Value| r["results"][0]["metrics"]["token_perplexity"].as_f64().unwrap();
    let rel = (ppl(&b) / ppl(&a) - 1.0).abs();
    // bf16 keeps 8 bits of mantissa: the products move, the perplexity by well under a percent.
    assert!(rel > 0.0 && rel < 0.01, "token perplexity f32 {} vs bf16 {} ({rel:e})", ppl(&a), ppl(&b));
}

#[test]
fn pipelines_refuse_bad_eval_tasks_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let missing = tmp.path().join("missing.txt");
    for (command, task, expected) in [
        ("shears", "nope:x.jsonl".to_string(), "unknown task kind \"nope\""),
        ("sqft", format!("ppl:{}", missing.display()), "missing.txt: --eval-task: no such file"),
        ("nas", format!("ppl:{}", missing.display()), "missing.txt: --eval-task: no such file"),
    ] {
        let (ok, _, stderr) = secateur(&[command, "--eval-task", &task, "--out", out.to_str().unwrap()]);
        assert!(!ok && stderr.contains(expected), "{command}: {stderr}");
        assert!(!out.exists(), "{command}: a run directory was written");
    }
}

#[test]
fn eval_refuses_bad_task_files_naming_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama_gqa");
    let cases = [
        (
            "wrong-field.jsonl",
            "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n{\"context\": \"a\", \"options\": [\"b\"], \"gold\": 0}\n",
            "line 2: no field `choices`",
        ),
        ("empty.jsonl", "{\"context\": \"a\", \"choices\": [], \"gold\": 0}\n", "line 1: the choice list is empty"),
        (
            "gold.jsonl",
            "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n",
            "line 1: gold index 2 is out of range for 2 choices",
        ),
        (
            "long.jsonl",
            &format!("{{\"context\": \"{}\", \"choices\": [\"b\"], \"gold\": 0}}\n", "word ".repeat(40)),
            "do not fit the window of 16",
        ),
    ];
    for (name, text, expected) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let task = format!("mc:{}", path.display());
        let (ok, _, stderr) =
            secateur(&["eval", "--model", model.to_str().unwrap(), "--task", &task, "--max-length", "16", "--out", out.to_str().unwrap()]);
        assert!(!ok, "{name}: accepted");
        assert!(stderr.contains(name) && stderr.contains(expected), "{name}: {stderr}");
        assert!(!out.exists(), "{name}: an output was written");
    }
    let (ok, _, stderr) = secateur(&["eval", "--model", model.to_str().unwrap(), "--task", "nope:x.jsonl"]);
    assert!(!ok && stderr.contains("unknown task kind \"nope\""), "{stderr}");
}

#[test]
fn eval_generation_task_scores_exact_match() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::records(tmp.path(), 5, true);
    let out = tmp.path().join("eval");
    let task = format!("gen:{}", data.display());
    let (ok, stdout, stderr) = secateur(&[
        "eval",
        "--model",
        fixture("llama_gqa").to_str().unwrap(),
        "--task",
        &task,
        "--max-new-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| exact_match |"), "{stdout}");
    let samples = std::fs::read_to_string(out.join(format!("samples-gen_{}.jsonl", data.file_stem().unwrap().to_string_lossy()))).unwrap();
    assert_eq!(samples.lines().count(), 5);
    assert!(samples.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["output"].is_string()));
}

#[test]
fn export_writes_a_gguf_that_runs_like_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("llama_gqa.gguf");
    let (ok, stdout, stderr) = secateur(&[
        "export",
        "--model",
        fixture("llama_gqa").to_str().unwrap(),
        "--format",
        "gguf",
        "--type",
        "f32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["tensor_types"]["F32"], 21);
    // The file, read back as a model, gives transformers' logits of the checkpoint's GGUF.
    check_logits(&out, &fixture("gguf").join("llama_gqa_f32.reference.safetensors"), &tmp.path().join("cache"));
    let (ok, _, stderr) = secateur(&[
        "export",
        "--model",
        fixture("bloom_6heads_postln").to_str().unwrap(),
        "--type",
        "q8_0",
        "--out",
        tmp.path().join("b.gguf").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("config.json") && stderr.contains("apply_residual_connection_post_layernorm"), "{stderr}");
    assert!(!tmp.path().join("b.gguf").exists());
}
