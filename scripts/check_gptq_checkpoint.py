#!/usr/bin/env python3
"""Reads a GPTQ checkpoint written by `secateur quantize` the way AutoGPTQ's torch kernel does
(qlinear_cuda_old: unpack qweight/qzeros with shifts, zeros + 1 masked to `bits`, weight =
scales * (q - zeros) per g_idx group), puts the dequantized weights into the transformers model,
and prints the max |logit difference| against `secateur logits` on the same checkpoint.

Usage: python3 scripts/check_gptq_checkpoint.py QUANT_DIR DENSE_DIR [path/to/secateur]
"""

import json
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM


def dequantize(t, prefix, bits):
    qweight, qzeros, scales, g_idx = (t[f"{prefix}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx"))
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    zeros = torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, 32 // bits), wf.view(1, 1, -1))
    zeros = torch.bitwise_and(zeros + 1, mask).reshape(scales.shape)
    weight = torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, 32 // bits, -1), wf.view(1, -1, 1))
    weight = torch.bitwise_and(weight, mask).reshape(-1, weight.shape[2])  # [in, out]
    w = scales.float()[g_idx.long()] * (weight.float() - zeros.float()[g_idx.long()])
    return w.t().contiguous()  # [out, in]


def main():
    qdir, ddir = sys.argv[1], sys.argv[2]
    binary = sys.argv[3] if len(sys.argv) > 3 else "target/release/secateur"
    cfg = json.load(open(f"{qdir}/config.json"))
    bits = cfg["quantization_config"]["bits"]
    t = load_file(f"{qdir}/model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(ddir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and f"{name}.qweight" in t:
                mod.weight.copy_(dequantize(t, name, bits))
    ids = [[3, 17, 42, 5, 88, 23, 61, 7], [9, 31, 77, 2, 54]]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    out = json.loads(subprocess.run([binary, "logits", "--model", qdir, "--input-ids", f.name],
                                    capture_output=True, text=True, check=True).stdout)["logits"]
    worst = 0.0
    with torch.no_grad():
        for seq, ours in zip(ids, out):
            ref = model(torch.tensor([seq])).logits[0]
            worst = max(worst, float((ref - torch.tensor(ours)).abs().max()))
    print(json.dumps({"max_abs_logit_diff": worst}))


if __name__ == "__main__":
    main()
