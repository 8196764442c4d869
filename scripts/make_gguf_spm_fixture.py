"""A GGUF file with a SentencePiece (`tokenizer.ggml.model = llama`) vocabulary, and the ids
that transformers' GGUF tokenizer conversion and llama.cpp give for a few hundred strings.

The vocabulary is LLaMA's layout: `<unk>`, `<s>`, `</s>` (control tokens), the 256 byte-fallback
tokens `<0x00>`..`<0xFF>`, then the pieces of a SentencePiece BPE model trained here (byte
fallback on) on the Python 3.11 reference manual's topics (`pydoc_data.topics`), with their
scores. The file holds metadata only (no tensors): what a tokenizer needs.

Writes crates/models/tests/fixtures/gguf/tokenizer/spm_tokenizer.gguf and spm-reference.json (per string:
transformers' ids, llama.cpp's ids when llama-cpp-python is installed, transformers' decoding).

Pinned: sentencepiece==0.2.1, gguf==0.19.0, transformers==4.57.1, llama-cpp-python==0.3.16
(scripts/requirements.txt).
"""

import json
import os
import random
import shutil
import tempfile

import gguf
import sentencepiece as spm
from pydoc_data.topics import topics

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates/models/tests/fixtures/gguf/tokenizer")
VOCAB = 600


def corpus():
    keys = sorted(topics)
    train = "\n".join(topics[k] for k in keys[0::2])
    held_out = "\n".join(topics[k] for k in keys[1::2])
    return train, held_out


def strings(held_out):
    rnd = random.Random(0)
    lines = [line for line in held_out.split("\n") if line.strip()]
    out = rnd.sample(lines, 200)
    words = held_out.split()
    for _ in range(60):
        i = rnd.randrange(len(words) - 8)
        out.append(" ".join(words[i : i + rnd.randrange(1, 8)]))
    out += [
        "", " ", "  ", "a", " a", "a ", "  two  spaces", "trailing   ", "\n", "line\nbreak", "tab\tseparated",
        "x = 1 + 2", "12345 67890", "3.14159", "def f(x):\n    return x", "café naïve", "Привет мир", "日本語のテキスト",
        "emoji 🙂 ok", "<s>", "</s>", "<unk>", "a <s> b </s> c", "▁already▁marked", "<0x41>", "mixed CASE Words",
        "don't can't won't", "https://example.org/path?q=1", "\u00a0non-breaking", "zero\u200bwidth",
    ]
    return out


def main():
    train, held_out = corpus()
    tmp = tempfile.mkdtemp()
    try:
        with open(os.path.join(tmp, "train.txt"), "w") as f:
            f.write(train)
        spm.SentencePieceTrainer.train(
            input=os.path.join(tmp, "train.txt"), model_prefix=os.path.join(tmp, "sp"), vocab_size=VOCAB, model_type="bpe",
            byte_fallback=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=2, seed_sentencepiece_size=100000, max_sentence_length=100000, minloglevel=2,
            split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        )
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "sp.model"))
        tokens, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            tokens.append(sp.id_to_piece(i))
            scores.append(sp.get_score(i))
            if sp.is_unknown(i):
                types.append(gguf.TokenType.UNKNOWN)
            elif sp.is_control(i):
                types.append(gguf.TokenType.CONTROL)
            elif sp.is_byte(i):
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
        path = os.path.join(OUT, "spm_tokenizer.gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_name("spm-tokenizer-fixture")
        w.add_context_length(64)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

        from transformers import AutoTokenizer

        d = os.path.join(tmp, "hf")
        os.makedirs(d)
        shutil.copy(path, d)
        hf = AutoTokenizer.from_pretrained(d, gguf_file="spm_tokenizer.gguf")
        try:
            from llama_cpp import Llama

            llama = Llama(model_path=path, vocab_only=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - the llama.cpp column is optional
            print("llama.cpp skipped:", e)
            llama = None
        rows = []
        for text in strings(held_out):
            ids = hf(text)["input_ids"]
            row = {"text": text, "transformers": ids, "decoded": hf.decode(ids, skip_special_tokens=True)}
            if llama is not None:
                row["llama_cpp"] = llama.tokenize(text.encode(), add_bos=True, special=True)
            rows.append(row)
        ref = {"sentencepiece": spm.__version__, "gguf": "0.19.0", "vocab": len(tokens), "strings": rows}
        with open(os.path.join(OUT, "spm-reference.json"), "w") as f:
            json.dump(ref, f, indent=0, ensure_ascii=False)
        same = sum(r.get("llama_cpp") == r["transformers"] for r in rows)
        print(f"{len(rows)} strings, {len(tokens)} tokens; llama.cpp equals transformers on {same}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
