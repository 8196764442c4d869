#!/usr/bin/env python3
"""PyTorch baseline for benches/forward.rs: the same LLaMA config (benches/llama_bench_config.json),
random f32 weights, prefill of batch 8 x 128 tokens and greedy decoding of 64 new tokens after a
16-token prompt (batch 1, KV cache). Prints one JSON line.

Pinned: torch==2.9.0, transformers==4.57.1. Run: `python3 scripts/bench_torch.py`.
"""

import json
import os
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config():
    """The LLaMA config of benches/llama_bench_config.json, with SDPA attention."""
    with open(os.path.join(HERE, "..", "benches", "llama_bench_config.json")) as f:
        cfg = json.load(f)
    cfg.pop("model_type")
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    return config


def main():
    torch.manual_seed(0)
    config = bench_config()
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (8, 128))
    prompt = torch.arange(16).unsqueeze(0) * 7 + 3

    def prefill():
        with torch.no_grad():
            model(ids, use_cache=False).logits

    def decode():
        with torch.no_grad():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                           min_new_tokens=64, do_sample=False, pad_token_id=0)

    t_prefill = timed(prefill, 10)
    t_decode = timed(decode, 5)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prefill_b8_s128_ms": round(t_prefill * 1e3, 2),
        "prefill_tokens_per_s": round(8 * 128 / t_prefill, 1),
        "decode_64_ms": round(t_decode * 1e3, 2),
        "decode_tokens_per_s": round(64 / t_decode, 1),
    }))


if __name__ == "__main__":
    main()
