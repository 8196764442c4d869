#!/usr/bin/env python3
"""PEFT reference fixtures for crates/elastic-lora's tests.

Attaches a LoRA adapter made by stock PEFT (heterogeneous ranks through rank_pattern and
alpha_pattern, random non-zero A and B) to the llama_gqa and neox_parallel fixtures, saves it
with save_pretrained, and records the adapted model's logits and the merged weights of
merge_and_unload.

Pinned: torch==2.9.0, transformers==4.57.1, peft==0.17.1. Run from the repository root:
`python3 scripts/make_peft_fixtures.py` (after scripts/make_fixtures.py).
"""

import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

MODELS = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join("crates", "elastic-lora", "tests", "fixtures")

CASES = {
    "llama_gqa": LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        rank_pattern={"model.layers.1.mlp.down_proj": 4, "model.layers.0.self_attn.k_proj": 6},
        alpha_pattern={"model.layers.1.mlp.down_proj": 12},
        init_lora_weights=False),
    "neox_parallel": LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["query_key_value", "dense_4h_to_h"], init_lora_weights=False),
}


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for variant, cfg in CASES.items():
        torch.manual_seed(1)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, variant), dtype=torch.float32)
        base.config._attn_implementation = "eager"
        model = get_peft_model(base, cfg).eval()
        d = os.path.join(OUT, f"peft_{variant}")
        model.save_pretrained(d)
        os.remove(os.path.join(d, "README.md"))  # a generated model card, not needed
        ref = load_file(os.path.join(MODELS, variant, "reference.safetensors"))
        ids, mask = ref["input_ids"], ref["attention_mask"]
        logits = torch.zeros(ids.shape[0], ids.shape[1], base.config.vocab_size)
        with torch.no_grad():
            for i in range(ids.shape[0]):
                n = int(mask[i].sum())
                logits[i, :n] = model(ids[i : i + 1, :n]).logits[0]
        merged = model.merge_and_unload()
        tensors = {"logits": logits.contiguous()}
        for name, p in merged.named_parameters():
            if any(t in name for t in ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj",
                                        "query_key_value", "dense_4h_to_h"]) and name.endswith("weight"):
                tensors[f"merged.{name}"] = p.detach().contiguous()
        save_file(tensors, os.path.join(d, "reference.safetensors"))
        print(variant, sorted(os.listdir(d)))


if __name__ == "__main__":
    main()
