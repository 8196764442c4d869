#!/usr/bin/env python3
"""Checks `secateur export --format gguf` against independent readers.

Pinned: gguf==0.19.0, torch==2.9.0, transformers==4.57.1 (scripts/requirements.txt);
optionally llama-cpp-python==0.3.16 (builds llama.cpp from source).

    python3 scripts/check_gguf_export.py --secateur target/release/secateur --model DIR_OR_GGUF [--types q8_0,f16]

For each type it exports the model, then
1. reads the file with the `gguf` package and requires every tensor's bytes to equal
   `gguf.quants.quantize` of the source weights (Q/K rows permuted as llama.cpp's converter does);
2. loads it with transformers (`from_pretrained(dir, gguf_file=...)`) and requires its logits to
   equal `secateur logits --model FILE` within 1e-4 (max |diff| printed);
3. if llama_cpp imports, requires llama.cpp's prompt ids and first 16 greedy token ids (up to
   the end of text) to equal `secateur generate --json` on the same file.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def permute(w, heads):
    # convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> llama.cpp interleaved).
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secateur", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--types", default="q8_0,f16")
    ap.add_argument("--prompt", default="The capital of France is")
    a = ap.parse_args()

    import gguf
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tempfile.mkdtemp()
    env = dict(os.environ, SECATEUR_CACHE=os.path.join(tmp, "cache"))
    # The Hugging Face directory secateur reads (its import when --model is a GGUF file).
    info = json.loads(run([a.secateur, "info", "--model", a.model], env))
    cache = os.path.join(tmp, "cache", "gguf")
    src = os.path.join(cache, os.listdir(cache)[0]) if os.path.isdir(cache) else a.model
    cfg = json.load(open(os.path.join(src, "config.json")))
    weights = load_file(os.path.join(src, "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    ok = True
    for ty in a.types.split(","):
        out = os.path.join(tmp, f"model-{ty}.gguf")
        report = json.loads(run([a.secateur, "export", "--model", src, "--format", "gguf", "--type", ty, "--out", out], env))
        print(f"[{ty}] wrote {report['bytes']} bytes: {report['tensor_types']}")

        # 1. The gguf package's reading of every tensor.
        r = gguf.GGUFReader(out)
        names = {}
        for i in range(cfg["num_hidden_layers"]):
            for hf, g in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                          ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                          ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")]:
                names[f"blk.{i}.{g}.weight"] = (f"model.layers.{i}.{hf}.weight", heads if g == "attn_q" else kv if g == "attn_k" else None)
        names["token_embd.weight"] = ("model.embed_tokens.weight", None)
        names["output_norm.weight"] = ("model.norm.weight", None)
        names["output.weight"] = ("lm_head.weight", None)
        worst_bytes = 0
        for t in r.tensors:
            hf, h = names[t.name]
            w = weights[hf].astype(np.float32)
            if h:
                w = permute(w, h)
            want = gguf.quants.quantize(w, t.tensor_type)
            got = np.asarray(t.data).reshape(want.shape)
            if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
                worst_bytes += 1
                print(f"  {t.name}: bytes differ from gguf.quants.quantize ({t.tensor_type.name})")
        print(f"  gguf package: {len(r.tensors)} tensors, {worst_bytes} differing from gguf.quants.quantize of the source")
        ok &= worst_bytes == 0

        # 2. transformers' own load of the file against secateur's logits on the same file.
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=os.path.basename(out))
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=os.path.basename(out), torch_dtype=torch.float32).eval()
        ids = tok(a.prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        idfile = os.path.join(tmp, "ids.json")
        json.dump([ids], open(idfile, "w"))
        ours = np.array(json.loads(run([a.secateur, "logits", "--model", out, "--input-ids", idfile], env))["logits"][0], dtype=np.float32)
        diff = float(np.abs(ours - ref).max())
        print(f"  transformers: max |logit diff| {diff:.2e} over {len(ids)} positions")
        ok &= diff <= 1e-4

        # 3. llama.cpp's greedy tokens.
        try:
            from llama_cpp import Llama
        except ImportError:
            print("  llama.cpp: llama_cpp is not installed (pip install llama-cpp-python==0.3.16); skipped")
            continue
        llm = Llama(model_path=out, n_ctx=256, verbose=False, logits_all=False)
        pids = llm.tokenize(a.prompt.encode(), add_bos=False, special=True)
        theirs = []
        for t in llm.generate(pids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if t == llm.token_eos() or len(theirs) == 16:
                break
            theirs.append(t)
        gen = json.loads(run([a.secateur, "generate", "--model", out, "--prompt", a.prompt, "--max-new-tokens", "16", "--json"], env))
        mine = [t for t in gen["completion_ids"] if t != llm.token_eos()]
        print(f"  llama.cpp: {llm.detokenize(theirs).decode(errors='replace')!r}\n  secateur:  {gen['completion']!r}")
        same = gen["prompt_ids"] == pids and mine == theirs
        print(f"  llama.cpp: prompt ids equal: {gen['prompt_ids'] == pids}; greedy tokens ({len(theirs)}) equal: {mine == theirs}")
        ok &= same
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
