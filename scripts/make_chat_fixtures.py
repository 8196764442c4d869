#!/usr/bin/env python3
"""Writes crates/models/tests/fixtures/chat/templates.json: chat templates rendered by
transformers' own `apply_chat_template` (transformers==4.57.1, Jinja2==3.1.6), the reference
that secateur's chat template engine is tested against.

    python3 scripts/make_chat_fixtures.py

The templates are SmolLM2-135M-Instruct's (as its GGUF file carries it) and templates in the
styles of other model families, chosen to exercise what real templates use: trim_blocks and
lstrip_blocks (Zephyr style), `raise_exception` (Llama 2 and Gemma style), `loop.index0`,
slicing, `| trim`, Python string methods (`.strip()`, `.startswith()`), `namespace`, `tojson`,
`is defined`, `{%- -%}` whitespace control, and bos/eos tokens.
"""
import json
import os

from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "crates", "models", "tests", "fixtures")

TEMPLATES = {
    # Verbatim from SmolLM2-135M-Instruct.Q4_1.gguf's tokenizer.chat_template.
    "smollm2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "chatml": (
        "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n"
        "{%- for message in messages %}\n    {%- if not (message.role == 'system' and loop.first) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n"
        "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
    ),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
    "features": (
        "{%- set ns = namespace(system='', turns=0) -%}\n"
        "{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- else -%}{%- set ns.turns = ns.turns + 1 -%}{%- endif -%}{%- endfor -%}\n"
        "{{- '[SYS] ' ~ ns.system | tojson ~ ' (' ~ ns.turns ~ ' turns)\n' -}}\n"
        "{%- for m in messages if m.role != 'system' -%}\n"
        "  {%- if m.content.startswith('Hi') %}{{ '(greeting) ' }}{% endif -%}\n"
        "  {{- m.role | upper }}: {{ m.content | replace('  ', ' ') }}{{ '\n' -}}\n"
        "  {%- if loop.last and m.content.endswith('?') %}{{ '(question)\n' }}{% endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt is defined and add_generation_prompt -%}ASSISTANT:{%- endif -%}"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "  Tell me a joke about  spaces.  "},
    ],
    [
        {"role": "system", "content": "You answer in \"quotes\" and\nnew lines."},
        {"role": "user", "content": "Caf\u00e9 \u2615 \u2014 na\u00efve?"},
        {"role": "assistant", "content": "\u00ab Oui \u00bb"},
        {"role": "user", "content": "<b>tags</b> & 'apostrophes'?"},
    ],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
]


# Training examples as `--chat` builds them (secateur_supernet::PromptFormat): the instruction (and
# the input after a blank line) as the user's turn, after an optional system message; the prompt
# rendered with the generation prompt, the whole example with the output as the assistant's turn.
TRAINING = [
    ({"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5."}, None),
    ({"instruction": "Sum the numbers.", "input": "4, 5", "output": "4 + 5 = 9. The answer is 9."}, "Be brief."),
]


def training_cases(tok, template):
    cases = []
    for record, system in TRAINING:
        user = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        case = {"record": record, "system": system}
        try:
            case["prompt"] = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
            case["full"] = tok.apply_chat_template(
                messages + [{"role": "assistant", "content": record["output"]}], chat_template=template, tokenize=False, add_generation_prompt=False
            )
        except Exception as e:  # jinja2's TemplateError from raise_exception
            case["error"] = str(e)
        cases.append(case)
    return cases


def main():
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(FIX, "llama_gqa", "tokenizer.json"), bos_token="<s>", eos_token="</s>")
    out = []
    for name, template in TEMPLATES.items():
        cases = []
        for messages in CONVERSATIONS:
            for gen in (True, False):
                case = {"messages": messages, "add_generation_prompt": gen}
                try:
                    case["rendered"] = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)
                except Exception as e:  # jinja2's TemplateError from raise_exception
                    case["error"] = str(e)
                cases.append(case)
        out.append({"name": name, "template": template, "bos_token": "<s>", "eos_token": "</s>", "cases": cases,
                    "training": training_cases(tok, template)})
    os.makedirs(os.path.join(FIX, "chat"), exist_ok=True)
    with open(os.path.join(FIX, "chat", "templates.json"), "w") as f:
        json.dump({"generator": "transformers 4.57.1 apply_chat_template", "templates": out}, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
