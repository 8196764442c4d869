"""llama.cpp runs a LoRA adapter that `secateur export --adapter` wrote as PEFT does.

    python3 scripts/check_gguf_lora.py --base DIR --adapter PEFT_DIR [--type f32] [--prompt TEXT]

DIR is a LLaMA-family checkpoint (e.g. a Shears run's `wanda/`), PEFT_DIR a PEFT LoRA adapter
on it (e.g. `nls-heuristic-adapter/`, with `rank_pattern`/`alpha_pattern`). The script has
secateur write the base as GGUF and the adapter as a llama.cpp LoRA GGUF, then compares:

- transformers + PEFT (`PeftModel.from_pretrained` on the base, f32): the reference;
- llama.cpp (llama-cpp-python) on the base GGUF with the adapter GGUF (`lora_path`).

It prints the first greedy token ids of both for the prompt, where they first differ, and the
same for llama.cpp without the adapter (the adapter must change something). Exit status 1 when
the adapted outputs differ within the first 16 tokens.

Pinned: transformers==4.57.1, peft==0.17.1, llama-cpp-python==0.3.16 (scripts/requirements.txt).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def secateur(*args):
    cmd = ["cargo", "run", "--release", "-q", "-p", "secateur-cli", "--", *args]
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--type", default="f32", choices=["f32", "f16", "q8_0"])
    ap.add_argument("--prompt", default="Tom has 7 apples. Tom buys 5 more apples. How many apples does Tom have now?")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tempfile.mkdtemp()
    base_gguf, lora_gguf = os.path.join(tmp, "base.gguf"), os.path.join(tmp, "lora.gguf")
    secateur("export", "--model", args.base, "--type", args.type, "--out", base_gguf)
    report = json.loads(secateur("export", "--model", args.base, "--adapter", args.adapter, "--type", args.type, "--out", lora_gguf))
    print("adapter file:", report)

    tok = AutoTokenizer.from_pretrained(args.base)
    ids = tok(args.prompt)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, args.adapter).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    reference = out[0, len(ids):].tolist()

    def llama(lora):
        kw = {"lora_path": lora_gguf} if lora else {}
        m = Llama(model_path=base_gguf, n_ctx=512, logits_all=False, verbose=False, n_threads=2, **kw)
        got = []
        for t in m.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(t)
            if len(got) == args.tokens:
                break
        return got

    with_lora, without = llama(True), llama(False)
    print("prompt ids:", len(ids))
    print("transformers + PEFT:", reference)
    print("llama.cpp + LoRA:   ", with_lora, "first difference:", first_difference(reference, with_lora))
    print("llama.cpp, no LoRA: ", without, "first difference:", first_difference(reference, without))
    result = {"type": args.type, "reference": reference, "llama_cpp_lora": with_lora, "llama_cpp_base": without,
              "equal_with_lora": with_lora == reference, "base_differs": without != reference}
    print(json.dumps(result))
    sys.exit(0 if result["equal_with_lora"] else 1)


if __name__ == "__main__":
    main()
