#!/usr/bin/env python3
"""lm-evaluation-harness's perplexities of the models of `cargo xtask smollm2 prune`, beside
secateur's (lm_eval==0.4.9, torch==2.9.0, transformers==4.57.1; `--model hf`, f32, CPU).

    python3 scripts/check_smollm2_prune.py

Reads docs/results/smollm2-prune.json (the xtask's rows and run directories), evaluates each
model's checkpoint directory (the dense one: secateur's import of the GGUF file in
$SECATEUR_CACHE/gguf/) on the same held-out text with the same window, and writes
docs/results/smollm2-prune-lm-eval.json, which the xtask's report then shows beside its own.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = os.path.join(ROOT, "docs", "results")


def main():
    report = json.load(open(os.path.join(RESULTS, "smollm2-prune.json")))
    cache = os.environ.get("SECATEUR_CACHE", os.path.expanduser("~/.cache/secateur"))
    dense = sorted(d for d in glob.glob(os.path.join(cache, "gguf", "SmolLM2-135M-Instruct.Q4_1-*")) if os.path.isfile(os.path.join(d, "config.json")))
    if not dense:
        sys.exit(f"no import of the GGUF file in {cache}/gguf: run cargo xtask smollm2 prune first")
    runs = os.path.join(ROOT, "runs", "smollm2", "prune")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = {"lm_eval": "0.4.9", "window": report["window"], "held_out": report["held_out"], "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "heldout.jsonl")
        with open(data, "w") as f:
            f.write(json.dumps({"text": open(report["held_out"]).read()}) + "\n")
        yaml = os.path.join(tmp, "tasks")
        os.makedirs(yaml)
        with open(os.path.join(yaml, "heldout_ppl.yaml"), "w") as f:
            json.dump({"task": "heldout_ppl", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}}, "test_split": "test",
                       "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
                       "metric_list": [{"metric": m} for m in ["word_perplexity", "byte_perplexity", "bits_per_byte"]]}, f)
        for row in report["rows"]:
            name = row["name"]
            model = dense[-1] if name == "dense" else os.path.join(runs, name)
            res = os.path.join(tmp, name)
            subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                            f"pretrained={model},dtype=float32,max_length={report['window']}", "--tasks", "heldout_ppl",
                            "--include_path", yaml, "--batch_size", "1", "--device", "cpu", "--output_path", res],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            found = [os.path.join(r, f) for r, _, fs in os.walk(res) for f in fs if f.startswith("results")]
            metrics = json.load(open(found[0]))["results"]["heldout_ppl"]
            out["rows"][name] = {m.split(",")[0]: v for m, v in metrics.items() if "," in m and "stderr" not in m}
            print(name, out["rows"][name], "secateur:", row["metrics"], flush=True)
    with open(os.path.join(RESULTS, "smollm2-prune-lm-eval.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
