#!/usr/bin/env python3
"""The Hugging Face tokenizer files transformers makes of the SentencePiece GGUF fixture.

Pinned: transformers==4.57.1, gguf==0.19.0, sentencepiece==0.2.1 (scripts/requirements.txt).
Run from the repository root after scripts/make_gguf_spm_fixture.py. Writes
`crates/models/tests/fixtures/gguf/tokenizer/hf/` (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`): `AutoTokenizer.from_pretrained(dir, gguf_file=...)` of
`spm_tokenizer.gguf`, saved. This is the `tokenizer.json` a LLaMA-2-style Hugging Face model
has (BPE with byte fallback, `▁` normaliser, no scores): what secateur's GGUF export must turn
back into a SentencePiece (`llama`) vocabulary.
"""
import os
import shutil
import tempfile

from transformers import AutoTokenizer

SRC = os.path.join("crates", "models", "tests", "fixtures", "gguf", "tokenizer")


def main():
    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(os.path.join(SRC, "spm_tokenizer.gguf"), tmp)
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file="spm_tokenizer.gguf")
        out = os.path.join(SRC, "hf")
        shutil.rmtree(out, ignore_errors=True)
        tok.save_pretrained(out)
        for extra in ["chat_template.jinja", "added_tokens.json", "tokenizer.model"]:  # tokenizer.json is what is checked
            p = os.path.join(out, extra)
            if os.path.exists(p):
                os.remove(p)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
