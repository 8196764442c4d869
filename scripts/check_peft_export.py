#!/usr/bin/env python3
"""Checks by hand that stock PEFT loads an adapter exported by secateur and computes the same
logits. Usage:
  SECATEUR_KEEP_EXPORT=/tmp/export cargo test -p secateur-elastic-lora elastic_rank
  python3 scripts/check_peft_export.py /tmp/export crates/models/tests/fixtures/llama_gqa
"""

import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    export, base_dir = sys.argv[1], sys.argv[2]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, export).eval()
    ref = load_file(os.path.join(base_dir, "reference.safetensors"))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    ours = torch.tensor(json.load(open(os.path.join(export, "secateur_logits.json")))).reshape(ids.shape[0], ids.shape[1], -1)
    worst = 0.0
    with torch.no_grad():
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            l = model(ids[i : i + 1, :n]).logits[0]
            worst = max(worst, float((l - ours[i, :n]).abs().max()))
    ranks = {n: m.r for n, m in model.named_modules() if hasattr(m, "r") and isinstance(m.r, dict)}
    print(json.dumps({"max_abs_diff": worst, "ranks": sorted({v.get("default") for v in ranks.values()})}))


if __name__ == "__main__":
    main()
