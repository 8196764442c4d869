#!/usr/bin/env python3
"""A heterogeneous LLaMA sub-network as a GGUF `deci` file, and llama.cpp's logits on it.

Pinned: torch==2.9.0, transformers==4.57.1, gguf==0.19.0, llama-cpp-python==0.3.16
(scripts/requirements.txt). llama.cpp's `deci` architecture (DeciLM, Llama-Nemotron's NAS
models) is LLaMA with per-block head counts and feed-forward widths given as arrays. This script
writes, independently of secateur's exporter:

- the `hetero` sub-network of `llama_gqa` (scripts/make_subnet_fixtures.py: a narrower residual
  stream, blocks of 4 and 2 heads, MLPs 36 and 23 wide), sliced by hand into a transformers
  model (that script's `build`), whose logits are the reference;
- its GGUF with the `gguf` package: the tokenizer keys of llama.cpp's own converter run on the
  super-network, the `deci.*` hyper-parameters (arrays where blocks differ, explicit key/value
  head size), and the tensors under llama.cpp's names with Q/K rows permuted by the converter's
  `DeciModel.permute` with each block's own head counts; the untied variant keeps
  `output.weight`, the tied one (head = embedding) leaves it out as the converter does;
- llama.cpp's logits on each file (llama-cpp-python), printed against transformers'.

Outputs `crates/models/tests/fixtures/gguf/deci/llama_gqa_hetero{,_tied}_f32.gguf` and
`.reference.safetensors` (ids, mask, `logits` from transformers, `llama_cpp_logits`).
Run from the repository root: `python3 scripts/make_gguf_deci_fixture.py`.
"""

import json
import os
import shutil
import sys
import tempfile

import gguf
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gguf_family_fixtures import TOKENIZER_CONFIG, convert, converter, llama_cpp_logits  # noqa: E402
from make_subnet_fixtures import FIX, SEQS, build, structures  # noqa: E402

OUT = os.path.join(FIX, "gguf", "deci")


def tokenizer_fields(mod, variant):
    """The `tokenizer.*` keys llama.cpp's converter writes for the super-network."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, variant)
        shutil.copytree(os.path.join(FIX, variant), src, ignore=shutil.ignore_patterns("reference.safetensors"))
        with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f)
        path = os.path.join(tmp, "super.gguf")
        convert(mod, src, "f32", path)
        reader = gguf.GGUFReader(path)
        fields = []
        for f in reader.fields.values():
            if f.name.startswith("tokenizer."):
                sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
                fields.append((f.name, f.contents(), f.types[0], sub))
        return fields
    finally:
        shutil.rmtree(tmp)


def write_deci(path, cfg, s, model, tok, tied):
    e = s["hidden_size"]
    d = cfg["head_dim"]
    rep = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    kv = [l["kv_groups"] for l in s["layers"]]
    heads = [k * rep for k in kv]
    w = gguf.GGUFWriter(path, "deci")
    w.add_name("llama_gqa-hetero")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(e)
    w.add_block_count(len(s["layers"]))
    w.add_feed_forward_length([l["mlp_width"] for l in s["layers"]])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(d)
    w.add_value_length(d)
    w.add_rope_dimension_count(d)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, val, vtype, sub in tok:
        w.add_key_value(name, val, vtype, sub_type=sub)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI, len(s["layers"]))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        t = t.float()
        if ".layers." in name:
            b = int(name.split(".")[2])
            if name.endswith("q_proj.weight"):
                t = converter_module.DeciModel.permute(t, heads[b], heads[b])
            if name.endswith("k_proj.weight"):
                t = converter_module.DeciModel.permute(t, heads[b], kv[b])
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def logits_of(model, vocab):
    width = max(len(x) for x in SEQS)
    ids = torch.zeros(len(SEQS), width, dtype=torch.int64)
    mask = torch.zeros(len(SEQS), width, dtype=torch.int64)
    logits = torch.zeros(len(SEQS), width, vocab)
    with torch.no_grad():
        for k, seq in enumerate(SEQS):
            ids[k, : len(seq)] = torch.tensor(seq)
            mask[k, : len(seq)] = 1
            logits[k, : len(seq)] = model(torch.tensor([seq])).logits[0].float()
    return ids, mask, logits


def main():
    global converter_module
    converter_module = converter()
    os.makedirs(OUT, exist_ok=True)
    variant = "llama_gqa"
    cfg = json.load(open(os.path.join(FIX, variant, "config.json")))
    sd = load_file(os.path.join(FIX, variant, "model.safetensors"))
    s = structures(cfg)["hetero"]
    tok = tokenizer_fields(converter_module, variant)
    for tied in [False, True]:
        c = dict(cfg, tie_word_embeddings=tied)
        model = build(c, sd, s)
        ids, mask, logits = logits_of(model, cfg["vocab_size"])
        stem = os.path.join(OUT, f"{variant}_hetero{'_tied' if tied else ''}_f32")
        write_deci(stem + ".gguf", c, s, model, tok, tied)
        cpp = llama_cpp_logits(stem + ".gguf", cfg["vocab_size"], ids.shape[1])
        if cpp is None:
            raise SystemExit(f"{stem}.gguf: llama.cpp did not load it")
        print(f"{stem}: llama.cpp vs transformers max |diff| {(cpp - logits)[mask.bool()].abs().max():.2e}")
        save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(), "llama_cpp_logits": cpp.contiguous()},
                  stem + ".reference.safetensors")


if __name__ == "__main__":
    main()
