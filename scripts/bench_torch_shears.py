#!/usr/bin/env python3
"""PyTorch + PEFT baseline for benches/shears.rs on the same LLaMA config
(benches/llama_bench_config.json, random f32 weights):

- one LoRA training step: batch 8 x 128 tokens, rank 16 on q, k, v, o, gate, up, down, base
  frozen, AdamW on the adapters (forward, backward, optimizer step);
- Wanda 50% with 32 calibration sequences of 128 tokens, block by block as the Wanda reference
  (prune_wanda) does it.

Prints one JSON line, with the process's peak resident memory.
Pinned: torch==2.9.0, transformers==4.57.1, peft==0.17.1.
"""

import json
import os
import resource
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import bench_config as config, timed  # noqa: E402
from bench_real import wanda_prune  # noqa: E402


def lora_step_seconds():
    torch.manual_seed(0)
    model = LlamaForCausalLM(config())
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, 4096, (8, 128))

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return timed(step, 10)


def wanda_seconds():
    torch.manual_seed(0)
    model = LlamaForCausalLM(config()).eval()
    calib = torch.randint(0, 4096, (32, 128))

    def run():
        wanda_prune(model, calib)

    return timed(run, 3)


def main():
    step = lora_step_seconds()
    wanda = wanda_seconds()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "lora_step_s": round(step, 4),
        "lora_tokens_per_s": round(8 * 128 / step, 1),
        "wanda_50pct_32x128_s": round(wanda, 3),
        "peak_rss_mib": round(peak, 1),
    }))


if __name__ == "__main__":
    main()
