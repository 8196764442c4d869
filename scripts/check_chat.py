#!/usr/bin/env python3
"""Checks `secateur generate --chat` on a GGUF model against transformers (transformers==4.57.1,
torch==2.9.0, gguf==0.19.0): the chat prompt's token ids must equal
`tokenizer.apply_chat_template(..., add_generation_prompt=True)` of transformers' own GGUF load,
and the greedy completion (up to the end of turn) must equal `model.generate` of the same file.

    python3 scripts/check_chat.py --secateur target/release/secateur --model SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import subprocess
import sys

CONVERSATIONS = [
    (None, "What is the capital of France?"),
    ("You are a pirate. Answer in one sentence.", "How do I bake bread?"),
    (None, "Write a haiku about autumn leaves."),
    (None, "Translate 'good morning' into Spanish."),
    ("Answer with a number only.", "What is 12 times 7?"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secateur", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    a = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ok = True
    for system, user in CONVERSATIONS:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=a.max_new_tokens, do_sample=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
        theirs = out[0, len(ids):].tolist()
        cmd = [a.secateur, "generate", "--model", a.model, "--chat", "--prompt", user, "--max-new-tokens", str(a.max_new_tokens), "--json"]
        if system:
            cmd[5:5] = ["--system", system]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        ours = json.loads(r.stdout)
        same_prompt, same_gen = ours["prompt_ids"] == ids, ours["completion_ids"] == theirs
        print(f"{user!r}: prompt ids equal {same_prompt} ({len(ids)}), greedy equal {same_gen}: {ours['completion']!r}")
        if not same_gen:
            print(f"  transformers: {tok.decode(theirs)!r}")
        ok &= same_prompt and same_gen
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
