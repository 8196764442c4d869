#!/usr/bin/env python3
"""GGUF fixtures: dequantisation blocks of every type, and small LLaMA GGUF models with transformers' logits.

Pinned: gguf==0.19.0, torch==2.9.0, transformers==4.57.1, numpy (scripts/requirements.txt).
Run from the repository root: `python3 scripts/make_gguf_fixtures.py`. Writes
`crates/models/tests/fixtures/gguf/`:

- `quants/<TYPE>.blocks` (raw GGML blocks: random bytes with the block scales set to edge values:
  0, negative, subnormal, the f16 maximum, ordinary magnitudes) and `quants/<TYPE>.f32` (what
  `gguf.quants.dequantize` makes of them, f32 little-endian);
- `quants/<TYPE>.input.f32` and `quants/<TYPE>.quantized` for the types `gguf.quants` can quantize
  (normal values, an all-zero block, a constant block, a block with one outlier, halfway ties);
- `<name>.gguf` models written with `gguf.GGUFWriter` the way llama.cpp's `convert_hf_to_gguf.py`
  writes LLaMA (Q/K rows permuted for its RoPE, the fixture's BPE tokenizer), and
  `<name>.reference.safetensors` with the input ids and the logits of
  `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` on them (one sequence at a time).

Models: `llama_gqa` (the existing random-weight checkpoint) as F32, F16 and BF16; a random-weight
LLaMA with rows that are whole 32-blocks (hidden 64, MLP 128) quantised by `gguf.quants` to Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1 (Q8_0 also with a tied head and rope_theta 1e5); and one with 256-wide
rows whose tensors are generated K-quant blocks (Q2_K to Q6_K), since `gguf.quants` has no
K-quant quantiser.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

FIX = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join(FIX, "gguf")
SEQS = [[3, 17, 42, 5, 88, 23, 61, 7, 12], [9, 31, 77, 2, 54, 19]]

DEQ_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
QUANT_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]

# Byte offsets of the f16 scale fields within one block (gguf/quants.py's layouts).
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
EDGE_SCALES = [0.0, -0.0, 1.0, -1.0, 6.1e-5, 3.0e-6, -5.96e-8, 65504.0, -65504.0, 0.0123, -0.5, 2.0**-10]


def rng(seed):
    return np.random.default_rng(seed)


def blocks_for(name, n_blocks, r, scale=None):
    """Random raw blocks of type `name`; scale fields set to edge values (or ~`scale`)."""
    qt = T[name]
    bsize, tsize = gguf.GGML_QUANT_SIZES[qt]
    if name in ("F32", "F16", "BF16"):
        if name == "F32":
            v = r.standard_normal(n_blocks * 64).astype(np.float32)
            v[:8] = [0.0, -0.0, 1e-40, -1e-45, 3.4e38, -3.4e38, np.inf, -np.inf]
            return v.view(np.uint8)
        bits = r.integers(0, 2**16, n_blocks * 64, dtype=np.uint16)
        if name == "F16":
            exp = (bits >> 10) & 0x1F
            bits[exp == 0x1F] &= 0xFC00  # NaN payloads become infinities (NaN never equals itself)
            bits[:6] = [0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF]
        else:
            exp = (bits >> 7) & 0xFF
            bits[exp == 0xFF] &= 0xFF80
            bits[:6] = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F]
        return bits.view(np.uint8)
    raw = r.integers(0, 256, (n_blocks, tsize), dtype=np.uint8)
    for b in range(n_blocks):
        for j, off in enumerate(F16_FIELDS[name]):
            if scale is None:
                s = EDGE_SCALES[(b + 5 * j) % len(EDGE_SCALES)] if b < 2 * len(EDGE_SCALES) else float(r.standard_normal()) * 0.05
            else:
                s = float(abs(r.standard_normal()) + 0.5) * scale * (1.0 if j == 0 else 0.5)
            raw[b, off:off + 2] = np.frombuffer(np.float16(s).tobytes(), dtype=np.uint8)
    return raw.reshape(-1)


def dequant_fixtures():
    d = os.path.join(OUT, "quants")
    os.makedirs(d, exist_ok=True)
    for i, name in enumerate(DEQ_TYPES):
        qt = T[name]
        bsize, tsize = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = 48 if bsize == 1 else (40 if bsize == 256 else 64)
        raw = blocks_for(name, n_blocks, rng(100 + i))
        rows = raw.reshape(1, -1)
        expected = dequantize(rows, qt).astype(np.float32).reshape(-1)
        raw.tofile(os.path.join(d, f"{name}.blocks"))
        expected.astype("<f4").tofile(os.path.join(d, f"{name}.f32"))
    for i, name in enumerate(QUANT_TYPES):
        qt = T[name]
        r = rng(200 + i)
        v = r.standard_normal(32 * 24).astype(np.float32)
        v[32:64] = 0.0  # all-zero block
        v[64:96] = 0.75  # constant block
        v[96:128] *= 1e-3
        v[100] = 40.0  # one outlier
        v[128:160] = np.linspace(-1.0, 1.0, 32, dtype=np.float32)  # many halfway points
        v[160:192] = -v[160:192] * 1e4
        v.astype("<f4").tofile(os.path.join(d, f"{name}.input.f32"))
        quantize(v.reshape(1, -1), qt).reshape(-1).view(np.uint8).tofile(os.path.join(d, f"{name}.quantized"))


def permute(w, n_head, n_head_kv=None):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tokenizer(w, tok_json):
    model = tok_json["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tok_json["added_tokens"] if a.get("special")}
    types = [3 if i in special else 1 for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_unk_token_id(vocab["<unk>"])
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                        "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def write_gguf(path, cfg, sd, tok_json, type_of):
    """`sd`: HF state dict (numpy f32); `type_of(gguf_name, array)` -> (GGMLQuantizationType, raw or None)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("secateur fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    add_tokenizer(w, tok_json)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    per_block = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in per_block.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    out = {}
    for hf, arr in sd.items():
        if hf == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        gg = names[hf]
        if gg.endswith("attn_q.weight"):
            arr = permute(arr, nh, nh)
        elif gg.endswith("attn_k.weight"):
            arr = permute(arr, nh, nkv)
        qt, raw = type_of(gg, arr)
        if arr.ndim == 1:
            qt, raw = T.F32, None  # norms stay F32, as llama.cpp writes them
        if raw is None:
            if qt == T.F32:
                w.add_tensor(gg, arr.astype(np.float32))
            elif qt == T.F16:
                w.add_tensor(gg, arr.astype(np.float16))
            else:
                w.add_tensor(gg, quantize(arr.astype(np.float32), qt), raw_dtype=qt)
        else:
            w.add_tensor(gg, raw, raw_dtype=qt)
        out[gg] = qt.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def reference(name, path):
    d = tempfile.mkdtemp()
    try:
        shutil.copy(path, os.path.join(d, "model.gguf"))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", torch_dtype=torch.float32).eval()
    finally:
        shutil.rmtree(d)
    ids, mask, logits = seq_logits(model)
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}, os.path.join(OUT, f"{name}.reference.safetensors"))
    return model


def seq_logits(model):
    """Input ids, mask and `model`'s logits on SEQS, one sequence at a time (padded to the longest)."""
    width = max(len(s) for s in SEQS)
    ids = torch.zeros(len(SEQS), width, dtype=torch.int64)
    mask = torch.zeros(len(SEQS), width, dtype=torch.int64)
    logits = torch.zeros(len(SEQS), width, model.config.vocab_size)
    with torch.no_grad():
        for b, s in enumerate(SEQS):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
            logits[b, : len(s)] = model(torch.tensor([s])).logits[0]
    return ids, mask, logits


def random_llama(hidden, inter, layers, heads, kv, seed, **extra):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, **extra)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(1.0)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return cfg.to_dict(), sd


def main():
    # Everything here but smollm2-reference.json (scripts/make_smollm2_gguf_reference.py) is ours.
    keep = {"smollm2-reference.json"}
    if os.path.isdir(OUT):
        for name in os.listdir(OUT):
            if name not in keep:
                p = os.path.join(OUT, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(OUT, exist_ok=True)
    dequant_fixtures()
    tok_json = json.load(open(os.path.join(FIX, "llama_gqa", "tokenizer.json")))
    manifest = {}

    cfg = json.load(open(os.path.join(FIX, "llama_gqa", "config.json")))
    sd = {k: v.float().numpy() for k, v in load_file(os.path.join(FIX, "llama_gqa", "model.safetensors")).items()}
    for ty in ["F32", "F16", "BF16"]:
        name = f"llama_gqa_{ty.lower()}"
        p = os.path.join(OUT, f"{name}.gguf")
        manifest[name] = write_gguf(p, cfg, sd, tok_json, lambda gg, a, ty=ty: (T[ty], None))
        reference(name, p)

    cfg, sd = random_llama(64, 128, 2, 4, 2, seed=7)
    for ty in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        name = f"llama64_{ty.lower()}"
        p = os.path.join(OUT, f"{name}.gguf")
        manifest[name] = write_gguf(p, cfg, sd, tok_json, lambda gg, a, ty=ty: (T[ty], None))
        reference(name, p)
    tied = dict(cfg, tie_word_embeddings=True, rope_theta=100000.0)
    sd_tied = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    name = "llama64_q8_0_tied"
    p = os.path.join(OUT, f"{name}.gguf")
    manifest[name] = write_gguf(p, tied, sd_tied, tok_json, lambda gg, a: (T.Q8_0, None))
    reference(name, p)

    cfg, sd = random_llama(256, 256, 1, 2, 1, seed=11)
    k_of = {"attn_q": "Q2_K", "attn_k": "Q3_K", "attn_v": "Q4_K", "attn_output": "Q5_K", "ffn_gate": "Q6_K", "ffn_up": "Q4_K",
            "ffn_down": "Q5_K", "token_embd": "Q6_K", "output": "Q3_K"}
    r = rng(300)
    # Block scales that keep every weight within about +-0.2 (the largest code times the largest sub-scale).
    K_SCALE = {"Q2_K": 5e-3, "Q3_K": 1.5e-3, "Q4_K": 2e-4, "Q5_K": 1e-4, "Q6_K": 5e-5}

    def k_type(gg, a):
        if a.ndim == 1:
            return T.F32, None
        key = gg.split(".")[-2] if gg.startswith("blk.") else gg.split(".")[0]
        name = k_of[key]
        n_blocks = a.size // 256
        raw = blocks_for(name, n_blocks, r, scale=K_SCALE[name]).reshape(a.shape[0], -1)
        return T[name], raw

    name = "llama256_kquants"
    p = os.path.join(OUT, f"{name}.gguf")
    manifest[name] = write_gguf(p, cfg, sd, tok_json, k_type)
    reference(name, p)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0", "models": manifest}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
