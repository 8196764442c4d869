#!/usr/bin/env python3
"""GGUF fixtures of the GPT-NeoX, BLOOM and MPT families, written by llama.cpp's own converter.

Pinned: llama-cpp-python==0.3.16 (it ships llama.cpp's `convert_hf_to_gguf.py` and builds
llama.cpp), gguf==0.19.0, torch==2.9.0, transformers==4.57.1 (scripts/requirements.txt).
Run from the repository root: `python3 scripts/make_gguf_family_fixtures.py`. Writes
`crates/models/tests/fixtures/gguf/families/`:

- `<name>_<type>.gguf`: the random-weight checkpoint `crates/models/tests/fixtures/<name>` converted
  by `convert_hf_to_gguf.py --outtype <type>` (fused QKV re-laid out as [Q; K; V], llama.cpp's
  tensor names and metadata), unchanged except two things done to run it offline: the module
  `mistral_common`, imported at its top but used only for Mistral's own formats, is stubbed, and
  the fixture's toy BPE tokenizer (whose hash no released model has) is declared `gpt-2`; and
  the copy converted gets a `tokenizer_config.json` naming its special tokens (and, for MPT,
  MosaicML's class name `MPTForCausalLM` under which the converter registers MPT).
- `<name>_<type>.reference.safetensors`: `input_ids`, `attention_mask`, `logits` from transformers
  on the ORIGINAL Hugging Face checkpoint (not the GGUF: transformers reads GGUF BLOOM but not
  GPT-NeoX or MPT), and `llama_cpp_logits` from llama.cpp (llama-cpp-python) on the GGUF file,
  one sequence at a time, f32 CPU.
"""

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import patch_mpt_alibi_bias_max  # noqa: E402
from make_gguf_fixtures import SEQS, seq_logits  # noqa: E402

FIX = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join(FIX, "gguf", "families")
# The fixtures have no tokenizer_config.json; without one, GPTNeoXTokenizerFast adds its default
# `<|endoftext|>` beyond the 96-token vocabulary and the converter refuses the vocabulary.
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# (fixture, --outtype). For f16 the checkpoint's weights are rounded to f16 first, so that the
# conversion is lossless and transformers' logits on the rounded checkpoint are the reference.
# `neox_seq_partial` is made here: the converter drops `rope_theta` for GPT-NeoX and llama.cpp's
# GPT-NeoX needs an untied head and biases, which `neox_sequential` (theta 1000, tied, no bias)
# lacks. `bloom_6heads_postln` is left out: GGUF has no key for BLOOM's post-norm residual.
MODELS = [
    ("neox_parallel", "f32"),
    ("neox_seq_partial", "f16"),
    ("bloom_4heads", "f32"),
    ("bloom_4heads", "f16"),
    ("mpt_4heads", "f32"),
    ("mpt_6heads_clip", "f16"),
]


def neox_seq_partial(dst):
    """A random GPT-NeoX with a sequential residual, rotary on half of each head, untied head."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(21)
    cfg = GPTNeoXConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        rotary_pct=0.5, rotary_emb_base=10000, use_parallel_residual=False, attention_bias=True,
                        tie_word_embeddings=False, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(1.0 if "layernorm" in n and n.endswith("weight") else 0.0, 0.2)
    model.save_pretrained(dst, safe_serialization=True)
    shutil.copy(os.path.join(FIX, "neox_parallel", "tokenizer.json"), dst)


def round_to_f16(src):
    from safetensors.torch import load_file

    path = os.path.join(src, "model.safetensors")
    sd = {k: v.to(torch.float16).to(torch.float32).contiguous() for k, v in load_file(path).items()}
    save_file(sd, path, metadata={"format": "pt"})


def converter():
    """llama.cpp's convert_hf_to_gguf.py as a module (the copy llama-cpp-python installs)."""
    import llama_cpp

    site = os.path.dirname(os.path.dirname(llama_cpp.__file__))
    path = os.path.join(site, "bin", "convert_hf_to_gguf.py")
    # Stub `mistral_common` (imported at the top, used only for Mistral-format checkpoints).
    for name in ["mistral_common", "mistral_common.tokens", "mistral_common.tokens.tokenizers",
                 "mistral_common.tokens.tokenizers.base", "mistral_common.tokens.tokenizers.multimodal",
                 "mistral_common.tokens.tokenizers.tekken", "mistral_common.tokens.tokenizers.sentencepiece"]:
        m = types.ModuleType(name)
        m.TokenizerVersion = m.Tekkenizer = m.SentencePieceTokenizer = object
        m.DATASET_MEAN = m.DATASET_STD = None
        sys.modules.setdefault(name, m)
    os.environ["NO_LOCAL_GGUF"] = "1"
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = mod
    spec.loader.exec_module(mod)
    mod.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    return mod


def convert(mod, src, outtype, out):
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out]
    try:
        mod.main()
    finally:
        sys.argv = argv


def transformers_logits(src):
    return seq_logits(AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32).eval())


def llama_cpp_logits(path, vocab, width):
    from llama_cpp import Llama

    try:
        llm = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=1, n_batch=64)
    except ValueError as e:
        print(f"{path}: llama.cpp cannot load it ({e})")
        return None
    out = torch.zeros(len(SEQS), width, vocab)
    for b, s in enumerate(SEQS):
        llm.reset()
        llm.eval(s)
        out[b, : len(s)] = torch.from_numpy(np.array(llm.scores[: len(s)], dtype=np.float32))
    return out


def main():
    # transformers' MPT ignores `alibi_bias_max` (always 8); MosaicML's model and llama.cpp use it.
    patch_mpt_alibi_bias_max()
    mod = converter()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name, outtype in MODELS:
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, name)
            if name == "neox_seq_partial":
                neox_seq_partial(src)
            else:
                shutil.copytree(os.path.join(FIX, name), src, ignore=shutil.ignore_patterns("reference.safetensors"))
            if outtype == "f16":
                round_to_f16(src)
            if name.startswith("mpt"):
                # The converter knows MPT by MosaicML's own class name; transformers writes `MptForCausalLM`.
                cfg_path = os.path.join(src, "config.json")
                cfg = json.load(open(cfg_path))
                cfg["architectures"] = ["MPTForCausalLM"]
                json.dump(cfg, open(cfg_path, "w"), indent=2)
            with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
                json.dump(TOKENIZER_CONFIG, f)
            path = os.path.join(OUT, f"{name}_{outtype}.gguf")
            convert(mod, src, outtype, path)
            ids, mask, logits = transformers_logits(src)
        finally:
            shutil.rmtree(tmp)
        tensors = {"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}
        cpp = llama_cpp_logits(path, logits.shape[-1], logits.shape[1])
        if cpp is not None:
            print(f"{name}_{outtype}: llama.cpp vs transformers max |diff| {(cpp - logits)[mask.bool()].abs().max():.2e}")
            tensors["llama_cpp_logits"] = cpp.contiguous()
        save_file(tensors, os.path.join(OUT, f"{name}_{outtype}.reference.safetensors"))


if __name__ == "__main__":
    main()
