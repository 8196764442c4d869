#!/usr/bin/env python3
"""The PyTorch side of `cargo xtask bench-real` (secateur's side: examples/bench_real.rs).

A worker: builds one model (a LLaMA config with random f32 weights, by default SmolLM2-135M's
`benches/smollm2_135m_config.json`, or a real Hugging Face checkpoint with `--model DIR`), prints
`{"ready": ...}`, then for each row name read from stdin times the row once and prints one JSON
line `{"row", "seconds", "peak_rss_mb"}` (peak resident memory of the row: the process's peak is
reset before it through /proc/self/clear_refs). The rows, the same work on both sides:

- `prefill_1x512`, `prefill_8x128`: logits of every position (no KV cache), batch x tokens;
- `prefill_1x512_bf16`: the same in bf16 (PyTorch: CPU autocast to bf16; secateur:
  `bf16::set_inference`, projections and head in bf16, weights packed before the timed pass);
- `decode_f32`: greedy decoding of 64 new tokens after a 16-token prompt, batch 1, KV cache;
- `lora_step`: one optimizer step (mean of 3) of LoRA rank 32, alpha 64, on q, k, v, up and down
  (PEFT), base frozen, batch 8 x 64 tokens, every token a target, AdamW, clipping at 1.0;
- `wanda`: Wanda 50% (unstructured) with 32 x 256 calibration tokens in batches of 8, block by
  block as the Wanda reference (locuslab/wanda `prune_wanda`) does it: statistics of block l from
  the dense block l fed by the pruned blocks before it;
- `matmul_proj`, `matmul_head`: one f32 matrix product `x·Wᵀ`, x [512, 576], W [1536, 576]
  (an MLP projection) or [vocab, 576] (the head), as each side's model calls it;
- `matmul_proj_bf16`, `matmul_head_bf16`: the same product in bf16 with f32 accumulation
  (PyTorch: bf16 tensors, oneDNN's AVX-512 BF16 kernels; secateur: `secateur_models::bf16`,
  weight packed once beforehand, activations rounded to bf16 in the timed call, f32 output);
- `quantize_rtn`: round-to-nearest INT4, group 128, asymmetric (GPTQ's zero-inclusive range), of
  every projection; codes, scales and zeros computed (not packed).

Token ids are the same deterministic formula as the Rust side. Pinned: torch==2.9.0,
transformers==4.57.1, peft==0.17.1 (scripts/requirements.txt).
"""

import argparse
import copy
import json
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import peak_mb, reset_peak, token_ids  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "..", "benches", "smollm2_135m_config.json")


def ids(batch, length, vocab, salt):
    return torch.tensor(token_ids(batch, length, vocab, salt))


def load(args):
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        with open(args.config) as f:
            cfg = json.load(f)
        for k in ("model_type", "architectures", "torch_dtype"):
            cfg.pop(k, None)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.config._attn_implementation = "sdpa"
    return model.eval()


def prefill(model, b, s, bf16=False):
    x = ids(b, s, model.config.vocab_size, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x, use_cache=False).logits.float()


def decode(model):
    prompt = ids(1, 16, model.config.vocab_size, 2)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
                             do_sample=False, pad_token_id=0)
    assert out.shape[1] == 16 + 64


def lora_step(model, steps=3):
    # In place (no second copy of the base in memory); unloaded again at the end.
    peft = get_peft_model(model, LoraConfig(
        r=32, lora_alpha=64, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
    peft.train()
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    data = ids(8 * steps, 64, model.config.vocab_size, 4)
    reset_peak()
    t0 = time.perf_counter()
    for s in range(steps):
        x = data[8 * s:8 * s + 8]
        peft(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    seconds = (time.perf_counter() - t0) / steps
    peft.unload()
    return seconds


def wanda_prune(model, calib, batch=8):
    """Wanda 50% (unstructured) in place, block by block as the Wanda reference (locuslab/wanda
    `prune_wanda`): statistics of block l from the dense block l fed by the pruned blocks before
    it; calibration `calib` [n, seq] in batches of `batch`. Also used by bench_torch_shears.py."""
    n, seq = calib.shape
    with torch.no_grad():
        inps = model.model.embed_tokens(calib)
        pos = torch.arange(seq).unsqueeze(0).expand(n, -1)
        pe = model.model.rotary_emb(inps, pos)
        mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]
        for layer in model.model.layers:
            lin = {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            sq = {name: torch.zeros(m.in_features) for name, m in lin.items()}

            def hook(name):
                def f(_m, i, _o):
                    x = i[0].reshape(-1, i[0].shape[-1]).float()
                    sq[name].add_((x * x).sum(0))
                return f

            hooks = [m.register_forward_hook(hook(name)) for name, m in lin.items()]

            def fwd(j):
                out = layer(inps[j:j + batch], attention_mask=mask,
                            position_embeddings=(pe[0][j:j + batch], pe[1][j:j + batch]))
                return out[0] if isinstance(out, tuple) else out

            for j in range(0, n, batch):
                fwd(j)  # statistics from the dense block
            for h in hooks:
                h.remove()
            for name, m in lin.items():
                metric = m.weight.abs() * sq[name].sqrt().reshape(1, -1)
                idx = torch.sort(metric, dim=-1, stable=True)[1][:, : m.weight.shape[1] // 2]
                m.weight.scatter_(1, idx, 0.0)
            inps = torch.cat([fwd(j) for j in range(0, n, batch)])  # the pruned block's outputs


def wanda(model):
    model = copy.deepcopy(model)
    calib = ids(32, 256, model.config.vocab_size, 3)
    reset_peak()
    t0 = time.perf_counter()
    wanda_prune(model, calib)
    return time.perf_counter() - t0


def quantize_rtn(model, bits=4, group=128):
    maxq = 2 ** bits - 1
    with torch.no_grad():
        for layer in model.model.layers:
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear):
                    # Groups of `group` inputs; the last one shorter when `group` does not divide.
                    for k in range(0, m.in_features, group):
                        w = m.weight[:, k:k + group]
                        lo = torch.clamp(w.amin(-1, keepdim=True), max=0)
                        hi = torch.clamp(w.amax(-1, keepdim=True), min=0)
                        scale = ((hi - lo) / maxq).half().float()
                        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                        zero = torch.round(-lo / scale)
                        q = torch.clamp(torch.round(w / scale) + zero, 0, maxq).to(torch.uint8)
                        del q


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--model")
    args = p.parse_args()
    torch.set_grad_enabled(True)
    model = load(args)
    print(json.dumps({"ready": True, "side": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters())}), flush=True)
    for line in sys.stdin:
        row = line.strip()
        if not row:
            continue
        reset_peak()
        t0 = time.perf_counter()
        if row == "prefill_1x512":
            prefill(model, 1, 512)
        elif row == "prefill_1x512_bf16":
            prefill(model, 1, 512, bf16=True)
        elif row == "prefill_8x128":
            prefill(model, 8, 128)
        elif row == "decode_f32":
            decode(model)
        elif row == "lora_step":
            seconds = lora_step(model)
        elif row == "wanda":
            seconds = wanda(model)
        elif row == "quantize_rtn":
            quantize_rtn(model)
        elif row in ("matmul_proj", "matmul_head", "matmul_proj_bf16", "matmul_head_bf16"):
            n, reps = (1536, 20) if row.startswith("matmul_proj") else (model.config.vocab_size, 2)
            x, w = torch.randn(512, 576), torch.randn(n, 576)
            if row.endswith("bf16"):
                x, w = x.bfloat16(), w.bfloat16()
            with torch.no_grad():
                torch.nn.functional.linear(x, w)
                t = time.perf_counter()
                for _ in range(reps):
                    torch.nn.functional.linear(x, w)
                seconds = (time.perf_counter() - t) / reps
        else:
            print(json.dumps({"row": row, "skip": "not a PyTorch row"}), flush=True)
            continue
        if row not in ("lora_step", "wanda") and not row.startswith("matmul"):
            seconds = time.perf_counter() - t0
        print(json.dumps({"row": row, "seconds": seconds, "peak_rss_mb": peak_mb()}), flush=True)


if __name__ == "__main__":
    main()
