#!/usr/bin/env python3
"""llama.cpp's tokenizer on a SentencePiece vocabulary that `secateur export` writes.

Pinned: llama-cpp-python==0.3.16, transformers==4.57.1, torch==2.9.0 (scripts/requirements.txt).

    python3 scripts/check_gguf_spm_export.py --secateur target/release/secateur

Builds a random-weight LLaMA (vocab 600) whose tokenizer files are transformers' conversion of
the SentencePiece fixture (`crates/models/tests/fixtures/gguf/tokenizer/hf`, BPE + byte fallback,
no scores), exports it with `secateur export --format gguf --type f32`, and requires llama.cpp's
ids for the 290 strings of `spm-reference.json` on the exported file to equal llama.cpp's ids on
the original SentencePiece GGUF (which carries SentencePiece's own scores).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

TOK = os.path.join("crates", "models", "tests", "fixtures", "gguf", "tokenizer")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secateur", required=True)
    a = ap.parse_args()
    import torch
    from llama_cpp import Llama
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tempfile.mkdtemp()
    try:
        model_dir = os.path.join(tmp, "model")
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
        LlamaForCausalLM(cfg).save_pretrained(model_dir, safe_serialization=True)
        for f in os.listdir(os.path.join(TOK, "hf")):
            shutil.copy(os.path.join(TOK, "hf", f), model_dir)
        out = os.path.join(tmp, "model.gguf")
        r = subprocess.run([a.secateur, "export", "--model", model_dir, "--format", "gguf", "--type", "f32", "--out", out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"export failed:\n{r.stderr}")
        llm = Llama(model_path=out, vocab_only=True, verbose=False)
        rows = json.load(open(os.path.join(TOK, "spm-reference.json")))["strings"]
        differ = [(row["text"], ids, row["llama_cpp"]) for row in rows
                  if (ids := llm.tokenize(row["text"].encode(), add_bos=True, special=True)) != row["llama_cpp"]]
        for text, got, want in differ[:10]:
            print(f"{text!r}: exported {got} vs original {want}")
        print(f"llama.cpp on secateur's export: {len(rows) - len(differ)} of {len(rows)} strings tokenized as on the original GGUF")
        sys.exit(1 if differ else 0)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
