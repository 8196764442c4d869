#!/usr/bin/env python3
"""llama.cpp on the GPT-NeoX, BLOOM and MPT GGUF files `secateur export` writes.

Pinned: llama-cpp-python==0.3.16 (builds llama.cpp), gguf==0.19.0, numpy, safetensors
(scripts/requirements.txt).

    python3 scripts/check_gguf_families.py --secateur target/release/secateur

For each random-weight fixture (`crates/models/tests/fixtures/<name>`) and type it runs
`secateur export --format gguf`, loads the file with llama.cpp and compares llama.cpp's logits
on the fixture's two input sequences with transformers' on the original checkpoint (the
fixture's `reference.safetensors`). f32 must agree within 1e-2 (llama.cpp's own distance from
transformers on the files its converter writes is 6e-4 to 3.6e-3: its GELU is tabulated in
f16); f16 and q8_0 are printed beside it (rounding of the weights adds to that).

Then a LoRA adapter on a fused-QKV family: the PEFT fixture `peft_neox_parallel` (on
`query_key_value` and `dense_4h_to_h`) written by `secateur export --adapter`, loaded by llama.cpp
beside the exported base (`lora_path`): its logits must equal transformers + PEFT's (the fixture's
`reference.safetensors`) within the same 1e-2.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

FIX = os.path.join("crates", "models", "tests", "fixtures")
MODELS = ["neox_parallel", "neox_sequential", "bloom_4heads", "mpt_4heads", "mpt_6heads_clip"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secateur", required=True)
    ap.add_argument("--types", default="f32,f16,q8_0")
    a = ap.parse_args()
    from llama_cpp import Llama

    tmp = tempfile.mkdtemp()
    ok = True
    for name in MODELS:
        ref = load_file(os.path.join(FIX, name, "reference.safetensors"))
        ids, mask, want = ref["input_ids"], ref["attention_mask"], ref["logits"]
        for ty in a.types.split(","):
            out = os.path.join(tmp, f"{name}-{ty}.gguf")
            r = subprocess.run([a.secateur, "export", "--model", os.path.join(FIX, name), "--format", "gguf", "--type", ty, "--out", out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"export of {name} as {ty} failed:\n{r.stderr}")
            report = json.loads(r.stdout)
            llm = Llama(model_path=out, n_ctx=64, logits_all=True, verbose=False, n_threads=1, n_batch=64)
            worst = 0.0
            for b in range(ids.shape[0]):
                n = int(mask[b].sum())
                llm.reset()
                llm.eval([int(x) for x in ids[b, :n]])
                got = np.array(llm.scores[:n], dtype=np.float32)
                worst = max(worst, float(np.abs(got - want[b, :n]).max()))
            verdict = "ok" if ty != "f32" or worst <= 1e-2 else "FAIL"
            ok &= verdict == "ok"
            print(f"{name} {ty}: {report['tensor_types']}; llama.cpp vs transformers max |logit diff| {worst:.2e} {verdict}")
            del llm
    # The adapter: B's fused-QKV rows go to GGUF's [q; k; v] order with the base's.
    base = os.path.join(tmp, "neox_parallel-f32.gguf")
    adapter = os.path.join(tmp, "peft_neox_parallel-f32.gguf")
    peft_dir = os.path.join("crates", "elastic-lora", "tests", "fixtures", "peft_neox_parallel")
    r = subprocess.run([a.secateur, "export", "--model", os.path.join(FIX, "neox_parallel"), "--adapter", peft_dir, "--type", "f32", "--out",
                        adapter], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"adapter export failed:\n{r.stderr}")
    ids, mask = load_file(os.path.join(FIX, "neox_parallel", "reference.safetensors"))["input_ids"], None
    mask = load_file(os.path.join(FIX, "neox_parallel", "reference.safetensors"))["attention_mask"]
    want = load_file(os.path.join(peft_dir, "reference.safetensors"))["logits"]
    llm = Llama(model_path=base, lora_path=adapter, n_ctx=64, logits_all=True, verbose=False, n_threads=1, n_batch=64)
    worst = 0.0
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        llm.reset()
        llm.eval([int(x) for x in ids[b, :n]])
        worst = max(worst, float(np.abs(np.array(llm.scores[:n], dtype=np.float32) - want[b, :n]).max()))
    verdict = "ok" if worst <= 1e-2 else "FAIL"
    ok &= verdict == "ok"
    print(f"neox_parallel + peft_neox_parallel (llama.cpp --lora) vs transformers + PEFT: max |logit diff| {worst:.2e} {verdict}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
