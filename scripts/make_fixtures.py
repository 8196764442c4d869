#!/usr/bin/env python3
"""Build tiny random-weight Hugging Face checkpoints and their reference logits.

Pinned: torch==2.9.0, transformers==4.57.1, tokenizers==0.22.* (see scripts/requirements.txt).
Writes `crates/models/tests/fixtures/<variant>/` with `config.json`, the weights
(`model.safetensors`, or shards with `model.safetensors.index.json`) and `reference.safetensors`
holding the input ids, attention mask and the logits transformers computes for them.

Reference logits are computed one sequence at a time without padding, so they depend on nothing
but the model itself; the Rust tests feed the same sequences right-padded in one batch.
Run from the repository root: `python3 scripts/make_fixtures.py`.
"""

import copy
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MptConfig,
    MptForCausalLM,
)

OUT = os.path.join("crates", "models", "tests", "fixtures")
VOCAB = 96
SEQS = [[3, 17, 42, 5, 88, 23, 61, 7, 12], [9, 31, 77, 2, 54, 19]]
GEN_PROMPT = [5, 40, 12, 77]
GEN_NEW = 8

CORPUS = (
    "the cat sat on the mat. the dog sat on the log. a bird sang in the tree. "
    "one plus two is three. two plus two is four. three plus four is seven. "
    "she reads a book. he writes a letter. they walk to the park every day. "
) * 4


def make_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[],
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    return tok


def variants():
    common = dict(vocab_size=VOCAB, initializer_range=0.2)
    yield "llama_gqa", LlamaForCausalLM, LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **common), {}
    yield "llama_mha_tied_bias_llama3", LlamaForCausalLM, LlamaConfig(
        hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=12, attention_bias=True, mlp_bias=True,
        max_position_embeddings=64, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
        bos_token_id=1, eos_token_id=2, **common), {}
    yield "llama_linear_f16_sharded", LlamaForCausalLM, LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, rope_theta=10000.0,
        rope_scaling={"type": "linear", "factor": 2.0}, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, **common), {"dtype": torch.float16, "shard": "8KB"}
    yield "mistral_window", MistralForCausalLM, MistralConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=4,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **common), {"dtype": torch.bfloat16}
    yield "neox_parallel", GPTNeoXForCausalLM, GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, **common), {}
    yield "neox_sequential", GPTNeoXForCausalLM, GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        rotary_pct=1.0, rotary_emb_base=1000, use_parallel_residual=False, attention_bias=False,
        tie_word_embeddings=True, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
        **common), {}
    yield "bloom_4heads", BloomForCausalLM, BloomConfig(
        hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, **common), {}
    yield "bloom_6heads_postln", BloomForCausalLM, BloomConfig(
        hidden_size=36, n_layer=2, n_head=6, apply_residual_connection_post_layernorm=True,
        bos_token_id=1, eos_token_id=2, **common), {}
    yield "mpt_6heads_clip", MptForCausalLM, MptConfig(
        d_model=36, n_heads=6, n_layers=2, expansion_ratio=4, max_seq_len=64, no_bias=True,
        attn_config={"alibi": True, "alibi_bias_max": 8, "clip_qkv": 0.6},
        bos_token_id=1, eos_token_id=2, **common), {}
    yield "mpt_4heads", MptForCausalLM, MptConfig(
        d_model=32, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=64, no_bias=True,
        attn_config={"alibi": True, "alibi_bias_max": 16},
        bos_token_id=1, eos_token_id=2, **common), {}


def patch_mpt_alibi_bias_max():
    """transformers' MPT port builds ALiBi with the default alibi_bias_max=8 whatever the config
    says; MosaicML's original code (the model's definition) uses `attn_config.alibi_bias_max`.
    secateur follows the config, so the reference does too."""
    from transformers.models.mpt import modeling_mpt

    def build(self, num_heads, sequence_length, alibi_bias_max=8, device=None):
        return modeling_mpt.build_mpt_alibi_tensor(
            num_heads, sequence_length, self.config.attn_config.alibi_bias_max, device)

    modeling_mpt.MptModel.build_mpt_alibi_tensor = build


def reference(model, seqs):
    """Logits of each sequence run alone (no padding), right-padded into one [b, s, v] array."""
    s_max = max(len(s) for s in seqs)
    logits = torch.zeros(len(seqs), s_max, VOCAB)
    mask = torch.zeros(len(seqs), s_max, dtype=torch.int64)
    ids = torch.zeros(len(seqs), s_max, dtype=torch.int64)
    for i, s in enumerate(seqs):
        x = torch.tensor([s])
        with torch.no_grad():
            logits[i, : len(s)] = model(x).logits[0].float()
        mask[i, : len(s)] = 1
        ids[i, : len(s)] = x[0]
    return ids, mask, logits


def greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    new = out[0, len(prompt):]
    # Margin between the top two logits at every greedy step: tells whether a flip is a near-tie.
    seq = out[0].tolist()
    with torch.no_grad():
        lg = model(torch.tensor([seq[:-1]])).logits[0, len(prompt) - 1:].float()
    top2 = lg.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    return new, margin


def main():
    torch.manual_seed(0)
    patch_mpt_alibi_bias_max()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    tok = make_tokenizer()
    summary = {}
    for name, cls, cfg, opts in variants():
        torch.manual_seed(sum(map(ord, name)))
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        dtype = opts.get("dtype")
        d = os.path.join(OUT, name)
        if dtype is not None:
            # Round the parameters (not buffers such as RoPE's inv_freq) to the stored dtype,
            # then compute the reference in f32 from the rounded weights.
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(dtype).float())
        save_kwargs = {"safe_serialization": True}
        if "shard" in opts:
            save_kwargs["max_shard_size"] = opts["shard"]
        to_save = copy.deepcopy(model).to(dtype) if dtype is not None else model
        to_save.save_pretrained(d, **save_kwargs)
        tok.save(os.path.join(d, "tokenizer.json"))
        ids, mask, logits = reference(model, SEQS)
        gen, margin = greedy(model, GEN_PROMPT, GEN_NEW)
        save_file(
            {
                "input_ids": ids.to(torch.int64).contiguous(),
                "attention_mask": mask.to(torch.int64).contiguous(),
                "logits": logits.contiguous(),
                "gen_prompt": torch.tensor(GEN_PROMPT, dtype=torch.int64),
                "gen_greedy": gen.to(torch.int64).contiguous(),
            },
            os.path.join(d, "reference.safetensors"),
        )
        summary[name] = {
            "model_type": cfg.model_type,
            "params": sum(p.numel() for p in model.parameters()),
            "greedy_min_margin": margin,
            "dtype": str(dtype or torch.float32),
            "files": sorted(os.listdir(d)),
        }
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump({"torch": torch.__version__, "variants": summary}, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
