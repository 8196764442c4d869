"""Reference scores of lm-evaluation-harness for `secateur eval` (crates/eval/tests/).

Runs lm-eval's Hugging Face model (`--model hf`) on the random-weight fixture checkpoints of
every family (LLaMA, GPT-NeoX, BLOOM, MPT) and the hand-written task files in
crates/eval/tests/data/ (each named task's real schema), through local task YAMLs: the generic
perplexity and multiple-choice tasks are written here, the named tasks `include` lm-eval's own
YAMLs with the data set pointed at the local file. Offline. Writes, per family,
crates/eval/tests/fixtures/<family>.json: per task its metrics and, per document, the
log-likelihood and is-greedy of every request.

Pinned: lm_eval==0.4.9, torch==2.9.0, transformers==4.57.1 (scripts/requirements.txt).
"""

import json
import os
import shutil
import tempfile

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "crates/eval/tests/data")
OUT = os.path.join(ROOT, "crates/eval/tests/fixtures")
LM_TASKS = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
# Family fixture -> the multiple-choice window. Windows: short for perplexity (several windows per
# document), long enough for the multiple-choice contexts (secateur refuses to cut a context;
# lm-eval would cut it silently). transformers' MPT builds ALiBi for max_seq_len (64) only, so
# MPT runs at 64 and without MMLU (its few-shot contexts are longer).
FAMILIES = {"llama_gqa": 256, "neox_parallel": 256, "bloom_4heads": 256, "mpt_4heads": 64}
PPL_MAX_LENGTH = 32
GSM8K_FEWSHOT = 1
GSM8K_MAX_GEN_TOKS = 16

# Named tasks: (our name, lm-eval YAML, extra settings).
NAMED = [
    ("arc_easy", "arc/arc_easy.yaml", {}),
    ("openbookqa", "openbookqa/openbookqa.yaml", {}),
    ("boolq", "super_glue/boolq/default.yaml", {}),
    ("piqa", "piqa/piqa.yaml", {}),
    ("siqa", "siqa/siqa.yaml", {}),
    ("hellaswag", "hellaswag/hellaswag.yaml", {}),
    ("winogrande", "winogrande/default.yaml", {}),
    ("mmlu", "mmlu/default/mmlu_abstract_algebra.yaml", {"fewshot_split": "dev", "num_fewshot": 1}),
]


def yaml_str(d):
    # JSON is valid YAML.
    return json.dumps(d, indent=1)


def write_tasks(dir):
    def local(name, extra_files=None):
        files = {"test": os.path.join(DATA, f"{name}.jsonl")}
        files.update(extra_files or {})
        return {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
            "training_split": None,
            "validation_split": None,
            "test_split": "test",
        }

    tasks = {}
    tasks["secateur_ppl"] = {
        "task": "secateur_ppl",
        **local("ppl"),
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [{"metric": m} for m in ["word_perplexity", "byte_perplexity", "bits_per_byte"]],
    }
    tasks["secateur_mc"] = {
        "task": "secateur_mc",
        **local("mc"),
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    for name, yaml, extra in NAMED:
        files = {"dev": os.path.join(DATA, "mmlu_dev.jsonl")} if name == "mmlu" else None
        t = {"include": os.path.join(LM_TASKS, yaml), "task": f"secateur_{name}", "tag": [], **local(name, files), **extra}
        # Report acc_norm for every multiple-choice task (some YAMLs list acc only).
        t["metric_list"] = [{"metric": "acc"}, {"metric": "acc_norm"}]
        tasks[t["task"]] = t
    # GSM8K: its own YAML (template, stop sequences, filters, exact_match settings) on local rows,
    # one few-shot example from a local train file with the `first_n` sampler (lm-eval's default
    # draws at random), and a short generation so that the small windows hold it.
    gsm8k = {"include": os.path.join(LM_TASKS, "gsm8k/gsm8k.yaml"), "task": "secateur_gsm8k", "tag": [],
             **local("gsm8k", {"train": os.path.join(DATA, "gsm8k_train.jsonl")})}
    gsm8k.update({"training_split": "train", "fewshot_split": "train", "num_fewshot": GSM8K_FEWSHOT, "fewshot_config": {"sampler": "first_n"},
                  "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": GSM8K_MAX_GEN_TOKS}})
    tasks["secateur_gsm8k"] = gsm8k
    for name, t in tasks.items():
        with open(os.path.join(dir, f"{name}.yaml"), "w") as f:
            f.write(yaml_str(t))
    return list(tasks)


def model_dir(tmp, family, chat_template=None, name=None):
    d = os.path.join(tmp, name or family)
    shutil.copytree(os.path.join(ROOT, "crates/models/tests/fixtures", family), d)
    # The fixtures ship tokenizer.json only; say which tokens are BOS / EOS as a hub model would.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return d


# `--apply_chat_template` runs on the LLaMA fixture: (template of the chat fixtures, system
# instruction, tasks). Zephyr: plain user/system turns; Llama 2: BOS in the template, the system
# prompt folded into the first user turn; Gemma: a template that refuses the system role (lm-eval
# then renders without it).
CHAT_RUNS = [
    ("zephyr", "You are a careful grader.", ["secateur_mc", "secateur_arc_easy", "secateur_mmlu", "secateur_winogrande", "secateur_gsm8k"]),
    ("llama2", None, ["secateur_mc", "secateur_mmlu", "secateur_winogrande", "secateur_gsm8k"]),
    ("gemma", "Answer briefly.", ["secateur_mc", "secateur_mmlu"]),
]
CHAT_MAX_LENGTH = 512


def chat_runs(tmp, tm):
    with open(os.path.join(ROOT, "crates/models/tests/fixtures/chat/templates.json")) as f:
        templates = {t["name"]: t["template"] for t in json.load(f)["templates"]}
    runs = []
    for name, system, tasks in CHAT_RUNS:
        d = model_dir(tmp, "llama_gqa", templates[name], f"llama_gqa-chat-{name}")
        ref = run(d, tasks, CHAT_MAX_LENGTH, tm, apply_chat_template=True, system_instruction=system)
        runs.append({"template": name, "system_instruction": system, "tasks": ref})
        print("chat", name, {t: v["metrics"] for t, v in ref.items()})
    with open(os.path.join(OUT, "chat_llama_gqa.json"), "w") as f:
        json.dump({"lm_eval": lm_eval.__version__, "family": "llama_gqa", "runs": runs}, f, indent=1)


def patch_mpt_alibi_bias_max():
    """As scripts/make_fixtures.py: transformers' MPT port ignores `attn_config.alibi_bias_max`
    (it always uses 8); MosaicML's definition, and secateur, follow the config."""
    from transformers.models.mpt import modeling_mpt

    def build(self, num_heads, sequence_length, alibi_bias_max=8, device=None):
        return modeling_mpt.build_mpt_alibi_tensor(num_heads, sequence_length, self.config.attn_config.alibi_bias_max, device)

    modeling_mpt.MptModel.build_mpt_alibi_tensor = build


def run(d, tasks, max_length, tm, **chat):
    res = lm_eval.simple_evaluate(
        **chat,
        model="hf",
        model_args=f"pretrained={d},dtype=float32,max_length={max_length}",
        tasks=tasks,
        batch_size=4,
        device="cpu",
        log_samples=True,
        task_manager=tm,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    out = {}
    for task in tasks:
        if task == "secateur_gsm8k":
            # Per filter: "exact_match,strict-match" and its stderr as "exact_match,strict-match_stderr".
            metrics = {}
            for k, v in res["results"][task].items():
                if "," in k and isinstance(v, (int, float)):
                    m, f = k.split(",", 1)
                    metrics[f"{m.removesuffix('_stderr')},{f}" + ("_stderr" if m.endswith("_stderr") else "")] = v
            docs = {}
            for s in res["samples"][task]:
                d = docs.setdefault(s["doc_id"], {"doc_id": s["doc_id"], "output": s["resps"][0][0], "filtered": {}})
                if chat:
                    d["context"] = s["arguments"][0][0]
                d["filtered"][s["filter"]] = s["filtered_resps"][0]
            out["gsm8k"] = {"metrics": metrics, "max_length": max_length, "samples": [docs[i] for i in sorted(docs)]}
            continue
        metrics = {k.split(",")[0]: v for k, v in res["results"][task].items() if "," in k and isinstance(v, (int, float))}
        samples = []
        for s in sorted(res["samples"][task], key=lambda s: s["doc_id"]):
            resps = [r[0] for r in s["resps"]]
            if isinstance(resps[0], (list, tuple)):
                lls, greedy = [float(r[0]) for r in resps], [bool(r[1]) for r in resps]
            else:
                lls, greedy = [float(r) for r in resps], None
            sample = {"doc_id": s["doc_id"], "lls": lls, "greedy": greedy}
            if chat:
                # The requests as lm-eval built them: (context, continuation) per choice.
                sample["requests"] = [[a[0], a[1]] for a in s["arguments"]]
            samples.append(sample)
        out[task.removeprefix("secateur_")] = {"metrics": metrics, "max_length": max_length, "samples": samples}
    return out


# Responses for the GSM8K answer filters and exact_match (edge cases of each regex).
FILTER_CASES = [
    ("Tom has 3 + 5 = 8 apples.\n#### 8", "#### 8"),
    ("The answer is $1,200.50.", "It costs $1,200.50.\n#### 1200.50"),
    ("#### -4\n\nQuestion: next", "#### -4"),
    ("no digits here", "#### 3"),
    ("7 then 8 then 9", "#### 9"),
    ("#### 12 and #### 13", "#### 12"),
    ("5.", "#### 5"),
    ("x 3.\n", "#### 3"),
    ("#### 1,000,000.", "#### 1000000"),
    ("a b c 4", "#### 4"),
    ("-", "#### 0"),
    ("$ 5", "#### 5"),
    ("ANSWER: 42 Dollars", "#### 42"),
    ("", "#### 1"),
]


def filter_cases():
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    out = []
    for resp, gold in FILTER_CASES:
        row = {"response": resp, "gold": gold}
        for name, f in [("strict-match", strict), ("flexible-extract", flexible)]:
            got = list(f.apply([[resp]], [{}]))[0][0]
            em = exact_match_hf_evaluate([got], [gold], regexes_to_ignore=ignore, ignore_case=True, ignore_punctuation=False)["exact_match"]
            row[name] = {"filtered": got, "exact_match": bool(em)}
        out.append(row)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "gsm8k_filters.json"), "w") as f:
        json.dump({"lm_eval": lm_eval.__version__, "cases": filter_cases()}, f, indent=1)
    with tempfile.TemporaryDirectory() as tmp:
        yaml_dir = os.path.join(tmp, "tasks")
        os.makedirs(yaml_dir)
        names = write_tasks(yaml_dir)
        tm = TaskManager(include_path=yaml_dir)
        patch_mpt_alibi_bias_max()
        chat_runs(tmp, tm)
        if os.environ.get("SECATEUR_CHAT_ONLY"):
            return
        for family, mc_max_length in FAMILIES.items():
            d = model_dir(tmp, family)
            ref = run(d, ["secateur_ppl"], PPL_MAX_LENGTH, tm)
            mc = [n for n in names if n != "secateur_ppl" and not (family.startswith("mpt") and n == "secateur_mmlu")]
            ref.update(run(d, mc, mc_max_length, tm))
            with open(os.path.join(OUT, f"{family}.json"), "w") as f:
                json.dump({"lm_eval": lm_eval.__version__, "family": family, "tasks": ref}, f, indent=1)
            print(family, {t: v["metrics"] for t, v in ref.items()})


if __name__ == "__main__":
    main()
