#!/usr/bin/env python3
"""Reference logits of elastic sub-networks, computed with Hugging Face transformers.

Pinned: torch==2.9.0, transformers==4.57.1 (scripts/requirements.txt). For LLaMA fixtures made
by scripts/make_fixtures.py, this script slices the super-network's tensors by hand (numpy-style
indexing, independent of secateur's code) into a transformers model whose blocks differ in size
and whose residual stream is narrower: the config gets the narrower `hidden_size` and the
explicit `head_dim`, and every block's projections are replaced by `nn.Linear` modules of that
block's sizes (LlamaAttention reshapes with `-1` heads and repeats keys by the constant
heads / key-value-heads ratio, so smaller blocks run unchanged). It writes
`crates/models/tests/fixtures/subnets/<variant>-<name>.json` (the structure, in secateur's
`SubnetStructure` JSON) and `.safetensors` (ids, mask and the logits of each sequence run alone).
Run from the repository root: `python3 scripts/make_subnet_fixtures.py`.
"""

import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

FIX = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join(FIX, "subnets")
SEQS = [[3, 17, 42, 5, 88, 23, 61, 7, 12], [9, 31, 77, 2, 54, 19]]


def structures(cfg):
    """Sub-networks of a 2-block super-network: heterogeneous with a narrower embedding, and one
    block only."""
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    return {
        "hetero": {
            "layers": [
                {"layer": 0, "mlp_width": i * 3 // 4, "kv_groups": kv},
                {"layer": 1, "mlp_width": i // 2 - 1, "kv_groups": max(kv // 2, 1)},
            ],
            "hidden_size": h * 3 // 4,
        },
        "one-block": {
            "layers": [{"layer": 1, "mlp_width": i // 2, "kv_groups": max(kv // 2, 1)}],
            "hidden_size": h - 4,
        },
    }


def linear(w, b):
    out, inp = w.shape
    m = torch.nn.Linear(inp, out, bias=b is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m


def build(cfg, sd, s):
    e = s["hidden_size"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rep = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    small = dict(cfg)
    small.update(hidden_size=e, head_dim=d, num_hidden_layers=len(s["layers"]))
    small.pop("transformers_version", None)
    model = LlamaForCausalLM(LlamaConfig(**small)).eval()
    g = lambda name: sd[name] if name in sd else None
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"][:, :e])
        model.model.norm.weight.copy_(sd["model.norm.weight"][:e])
        if not cfg.get("tie_word_embeddings", False):
            model.lm_head.weight.copy_(sd["lm_head.weight"][:, :e])
        for new, l in enumerate(s["layers"]):
            p = f"model.layers.{l['layer']}."
            blk = model.model.layers[new]
            hq, hk, w = l["kv_groups"] * rep * d, l["kv_groups"] * d, l["mlp_width"]
            att, mlp = blk.self_attn, blk.mlp
            cut = lambda name, rows, cols: (sd[p + name + ".weight"][:rows, :cols], None if g(p + name + ".bias") is None else sd[p + name + ".bias"][:rows])
            att.q_proj = linear(*cut("self_attn.q_proj", hq, e))
            att.k_proj = linear(*cut("self_attn.k_proj", hk, e))
            att.v_proj = linear(*cut("self_attn.v_proj", hk, e))
            att.o_proj = linear(*cut("self_attn.o_proj", e, hq))
            mlp.gate_proj = linear(*cut("mlp.gate_proj", w, e))
            mlp.up_proj = linear(*cut("mlp.up_proj", w, e))
            mlp.down_proj = linear(*cut("mlp.down_proj", e, w))
            blk.input_layernorm.weight.copy_(sd[p + "input_layernorm.weight"][:e])
            blk.post_attention_layernorm.weight.copy_(sd[p + "post_attention_layernorm.weight"][:e])
    if cfg.get("tie_word_embeddings", False):
        model.tie_weights()
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    for variant in ["llama_gqa", "llama_mha_tied_bias_llama3"]:
        cfg = json.load(open(os.path.join(FIX, variant, "config.json")))
        sd = load_file(os.path.join(FIX, variant, "model.safetensors"))
        for name, s in structures(cfg).items():
            model = build(cfg, sd, s)
            s_max = max(len(x) for x in SEQS)
            ids = torch.zeros(len(SEQS), s_max, dtype=torch.int64)
            mask = torch.zeros(len(SEQS), s_max, dtype=torch.int64)
            logits = torch.zeros(len(SEQS), s_max, cfg["vocab_size"])
            with torch.no_grad():
                for k, seq in enumerate(SEQS):
                    ids[k, : len(seq)] = torch.tensor(seq)
                    mask[k, : len(seq)] = 1
                    logits[k, : len(seq)] = model(torch.tensor([seq])).logits[0].float()
            stem = os.path.join(OUT, f"{variant}-{name}")
            save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}, stem + ".safetensors")
            json.dump({"variant": variant, "structure": s}, open(stem + ".json", "w"), indent=1)
            print(stem, sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
