#!/usr/bin/env python3
"""An independent PyTorch GPTQ, written from Frantar et al. (2022) and the reference
`GPTQ.fasterquant` (IST-DASLab/gptq, as AutoGPTQ and GPT-QModel carry it), for secateur's tests
and benchmark.

Per decoder layer, as the reference's sequential loop (`llama_sequential`, one block at a time):
the inputs of layer 0 are caught (with the keyword arguments the model passes it), every
calibration sequence runs alone through the still dense layer with forward hooks that add
`2/N x x^T` to each linear layer's Hessian (`add_batch`), every linear layer is quantized by
`fasterquant`, and the sequences run through the quantized layer to give the next layer's inputs
(`true_sequential` off: every linear layer of a block sees the dense block's inputs).

`fasterquant` as the reference: dead inputs (H_ii = 0) get H_ii = 1 and zero weights; act-order
sorts the columns by decreasing diag H (stable); damp * mean(diag H) on the diagonal;
Hinv = cholesky(cholesky_inverse(cholesky(H)), upper); columns in blocks with lazy updates; a
group's scale and zero point are fit, when its first column comes up, on the outer matrix (which
the in-block updates have not reached); per-channel parameters are fit once on the original
weights. Two deliberate, documented deviations, both secateur's conventions: scales are rounded
to f16 before use (GPTQ checkpoints store f16 scales, so the quantized model and its checkpoint
agree), and a weight that is exactly zero in the input keeps code = zero point (SparseGPT-style
joint sparsity and quantization: its error is fed forward; group ranges see it as 0).

Modes (run from the repository root; pinned torch==2.9.0, transformers==4.57.1):
  python3 scripts/gptq_reference.py fixtures
      writes crates/quant/tests/fixtures/gptq_*.safetensors on the random-weight fixtures with
      the fixed calibration ids of crates/sparsity/tests/fixtures/calibration.json, in float64.
  python3 scripts/gptq_reference.py run --model DIR --calibration IDS.json [--dtype float32]
      quantizes a model (timing baseline for `cargo xtask bench-gptq`), printing JSON.
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM

MODELS = os.path.join("crates", "models", "tests", "fixtures")
OUT = os.path.join("crates", "quant", "tests", "fixtures")
CALIBRATION = os.path.join("crates", "sparsity", "tests", "fixtures", "calibration.json")

# name: (model, bits, group (-1 per channel), block, act_order, static_groups, magnitude sparsity)
VARIANTS = {
    "llama_gqa_g16": ("llama_gqa", 4, 16, 128, False, False, 0.0),
    "llama_gqa_g16_act": ("llama_gqa", 4, 16, 128, True, False, 0.0),
    "llama_gqa_2bit_static_act_b8": ("llama_gqa", 2, 16, 8, True, True, 0.0),
    "llama_gqa_sparse50_g16": ("llama_gqa", 4, 16, 16, False, False, 0.5),
    "llama_gqa_sparse50_g16_act": ("llama_gqa", 4, 16, 16, True, False, 0.5),
    "neox_parallel_g8_b16": ("neox_parallel", 4, 8, 16, False, False, 0.0),
    "bloom_8bit_channel_act": ("bloom_6heads_postln", 8, -1, 128, True, False, 0.0),
}


def find_params(x, maxq):
    """Asymmetric per-row parameters of `x` [rows, cols] (GPTQ's zero-inclusive range)."""
    zeros = torch.zeros(x.shape[0], dtype=x.dtype)
    xmin = torch.minimum(x.min(1)[0], zeros)
    xmax = torch.maximum(x.max(1)[0], zeros)
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = ((xmax - xmin) / maxq).to(torch.float16).to(x.dtype)
    zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


def fasterquant(W, H, bits, groupsize, blocksize=128, percdamp=0.01, actorder=False, static_groups=False):
    """Returns codes, scales and zeros in storage order, the permutation (act-order with dynamic
    groups) or None, and the loss."""
    maxq = 2**bits - 1
    W = W.clone()
    H = H.clone()
    columns = W.shape[1]
    keep = W != 0
    sparse = not bool(keep.all())
    if groupsize == -1:
        channel = find_params(W, maxq)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups and groupsize != -1:
        statics = [find_params(W[:, i : i + groupsize], maxq) for i in range(0, columns, groupsize)]
    perm = None
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        keep = keep[:, perm]
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(columns)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    loss = 0.0
    scale, zero = channel if groupsize == -1 else (None, None)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            col = i1 + i
            if groupsize != -1:
                if static_groups:
                    orig = perm[col].item() if perm is not None else col
                    scale, zero = statics[orig // groupsize]
                elif col % groupsize == 0:
                    group = W[:, col : col + groupsize] * keep[:, col : col + groupsize]
                    scale, zero = find_params(group, maxq)
                    scales.append(scale)
                    zeros.append(zero)
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            if sparse:
                q = torch.where(keep[:, col], q, zero.flatten())
            Q1[:, i] = q
            deq = scale.flatten() * (q - zero.flatten())
            loss += float(((w - deq) ** 2 / d**2).sum() / 2)
            err1 = (w - deq) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if groupsize == -1:
        scales, zeros = [channel[0]], [channel[1]]
    elif static_groups:
        scales, zeros = [s for s, _ in statics], [z for _, z in statics]
    if perm is not None and (static_groups or groupsize == -1):
        Q = Q[:, torch.argsort(perm)]
        perm = None
    return Q.to(torch.uint8), torch.cat(scales, 1), torch.cat(zeros, 1).to(torch.uint8), perm, loss


def decoder_layers(model):
    for attr in ("model", "gpt_neox", "transformer"):
        inner = getattr(model, attr, None)
        if inner is not None:
            for name in ("layers", "h", "blocks"):
                if hasattr(inner, name):
                    return f"{attr}.{name}", getattr(inner, name)
    raise ValueError("no decoder layers")


class Caught(Exception):
    pass


def quantize_model(model, calib, bits, group, block, act_order, static_groups, dtype, sparsity=0.0):
    """GPTQ over the model, block by block. Returns {module: (codes, scales, zeros, perm, loss)}."""
    prefix, layers = decoder_layers(model)
    if sparsity > 0:
        for layer in layers:
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear):
                    W = m.weight.data
                    idx = torch.sort(W.abs(), dim=-1, stable=True)[1][:, : int(W.shape[1] * sparsity)]
                    W.scatter_(1, idx, 0.0)
    # Catch layer 0's inputs and keyword arguments, one sequence at a time.
    inps, kwargs = [], []
    first = layers[0]

    class Catcher(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, *args, **kw):
            inps.append(x)
            kwargs.append((args, kw))
            raise Caught

    layers[0] = Catcher(first)
    with torch.no_grad():
        for seq in calib:
            try:
                model(torch.tensor([seq]), use_cache=False)
            except Caught:
                pass
    layers[0] = first

    def run(layer, x, caught):
        args, kw = caught
        out = layer(x, *args, **kw)
        return out[0] if isinstance(out, tuple) else out

    results = {}
    for li, layer in enumerate(layers):
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        H = {n: torch.zeros(m.in_features, m.in_features, dtype=dtype) for n, m in linears.items()}
        count = {n: 0 for n in linears}

        def hook(name):
            def f(_mod, inp, _out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).to(dtype)
                tokens = x.shape[0]
                H[name] *= count[name] / (count[name] + tokens)
                count[name] += tokens
                x = (2 / count[name]) ** 0.5 * x
                H[name] += x.t() @ x

            return f

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        with torch.no_grad():
            for x, kw in zip(inps, kwargs):
                run(layer, x, kw)
        for h in handles:
            h.remove()
        for n, m in linears.items():
            W = m.weight.data.to(dtype)
            q, s, z, perm, loss = fasterquant(W, H[n], bits, group, block, 0.01, act_order, static_groups)
            results[f"{prefix}.{li}.{n}"] = (q, s, z, perm, loss)
            # The dequantized weight in input order.
            g = group if group != -1 else W.shape[1]
            cols = torch.arange(W.shape[1])
            grp = cols // g
            deq_sorted = (q.to(dtype) - z.to(dtype)[:, grp]) * s[:, grp] if perm is None else None
            if perm is not None:
                deq_perm = (q.to(dtype) - z.to(dtype)[:, grp]) * s[:, grp]
                deq_sorted = torch.empty_like(deq_perm)
                deq_sorted[:, perm] = deq_perm
            m.weight.data = deq_sorted.to(m.weight.dtype)
        with torch.no_grad():
            inps = [run(layer, x, kw) for x, kw in zip(inps, kwargs)]
    return results


def fixtures():
    from safetensors.torch import save_file

    os.makedirs(OUT, exist_ok=True)
    with open(CALIBRATION) as f:
        calib = json.load(f)
    for name, (variant, bits, group, block, act, static, sparsity) in VARIANTS.items():
        model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, variant), dtype=torch.float64)
        model.config._attn_implementation = "eager"
        model.eval()
        res = quantize_model(model, calib, bits, group, block, act, static, torch.float64, sparsity)
        tensors = {}
        for module, (q, s, z, perm, loss) in res.items():
            tensors[f"q.{module}"] = q.contiguous()
            tensors[f"scale.{module}"] = s.to(torch.float32).contiguous()
            tensors[f"zero.{module}"] = z.contiguous()
            tensors[f"loss.{module}"] = torch.tensor([loss], dtype=torch.float64)
            if perm is not None:
                tensors[f"perm.{module}"] = perm.to(torch.int64).contiguous()
        meta = {"model": variant, "bits": str(bits), "group_size": str(group), "block_size": str(block),
                "act_order": str(act), "static_groups": str(static), "sparsity": str(sparsity)}
        save_file(tensors, os.path.join(OUT, f"gptq_{name}.safetensors"), metadata=meta)
        print(name, len(res), "linear layers")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    sub.add_parser("fixtures")
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--calibration", required=True, help="JSON array of token-id arrays")
    r.add_argument("--bits", type=int, default=4)
    r.add_argument("--group-size", type=int, default=128)
    r.add_argument("--act-order", action="store_true")
    r.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    r.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "fixtures":
        torch.set_num_threads(1)
        fixtures()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    with open(args.calibration) as f:
        calib = json.load(f)
    t1 = time.perf_counter()
    quantize_model(model, calib, args.bits, args.group_size, 128, args.act_order, False, dtype)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "gptq_s": t2 - t1, "sequences": len(calib), "tokens": sum(map(len, calib)),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
