#!/usr/bin/env python3
"""Independent Wanda reference masks for crates/sparsity's tests.

Follows the Wanda reference implementation (prune_wanda in locuslab/wanda): block by block,
collect the squared L2 norm of every linear layer's input features over the calibration
tokens with forward hooks while block l is still dense (blocks < l already pruned), score
|W| * sqrt(norm), sort each output row with a stable sort and zero the lowest
int(in * ratio) scores (unstructured), or the lowest M - N of every M consecutive inputs (N:M).
Statistics are accumulated in float64 here. Each calibration sequence runs alone (no padding).

Pinned: torch==2.9.0, transformers==4.57.1. Run from the repository root:
`python3 scripts/make_wanda_fixtures.py` (after scripts/make_fixtures.py).
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

MODELS = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join("crates", "sparsity", "tests", "fixtures")
VARIANTS = ["llama_gqa", "neox_parallel", "bloom_6heads_postln"]
PATTERNS = {"unstructured_0.5": ("ratio", 0.5), "nm_2_4": ("nm", (2, 4))}


def layers_of(model):
    for attr in ("model", "gpt_neox", "transformer"):
        inner = getattr(model, attr, None)
        if inner is not None:
            for name in ("layers", "h", "blocks"):
                if hasattr(inner, name):
                    return attr, name, getattr(inner, name)
    raise ValueError("no decoder layers")


def prune(model, calib, kind, arg):
    attr, lname, layers = layers_of(model)
    masks, scores = {}, {}
    for l, layer in enumerate(layers):
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        sq = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}

        def hook(name):
            def f(_mod, inp, _out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                sq[name] += (x * x).sum(0)
            return f

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        with torch.no_grad():
            for seq in calib:
                model(torch.tensor([seq]))
        for h in handles:
            h.remove()
        for n, m in linears.items():
            W = m.weight.data
            metric = W.double().abs() * sq[n].sqrt().reshape(1, -1)
            prune_mask = torch.zeros_like(W, dtype=torch.bool)
            if kind == "ratio":
                idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(W.shape[1] * arg)]
                prune_mask.scatter_(1, idx, True)
            else:
                keep_n, m_ = arg
                for ii in range(W.shape[1]):
                    if ii % m_ == 0:
                        tmp = metric[:, ii : ii + m_]
                        idx = torch.sort(tmp, dim=-1, stable=True)[1][:, : m_ - keep_n]
                        prune_mask.scatter_(1, ii + idx, True)
            W[prune_mask] = 0
            full = f"{attr}.{lname}.{l}.{n}"
            masks[full] = (~prune_mask).to(torch.uint8).contiguous()
            scores[full] = metric.contiguous()
    return masks, scores


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    lengths = [12, 9, 16, 7, 12, 10, 16, 5]
    calib = [torch.randint(3, 96, (n,), generator=g).tolist() for n in lengths]
    with open(os.path.join(OUT, "calibration.json"), "w") as f:
        json.dump(calib, f)
    for variant in VARIANTS:
        for pname, (kind, arg) in PATTERNS.items():
            model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, variant), dtype=torch.float32)
            model.config._attn_implementation = "eager"
            model.eval()
            masks, scores = prune(model, calib, kind, arg)
            tensors = {f"mask.{k}": v for k, v in masks.items()}
            tensors.update({f"score.{k}": v for k, v in scores.items()})
            save_file(tensors, os.path.join(OUT, f"wanda_{variant}_{pname}.safetensors"))
            print(variant, pname, len(masks), "sites")


if __name__ == "__main__":
    main()
