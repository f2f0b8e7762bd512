"""Chat templates. Ours wrap each assistant reply AND its end-of-turn token in `{% generation %}` markers, so
trl can train on the assistant tokens only and the model learns to stop. The template used in training is
saved with the output tokenizer, and `generate` prompts with that same template."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SPECIAL = re.compile(r"^<[^<>\s]+>$")

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

ZEPHYR = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# The Alpaca prompt (see the Alpaca data format): the preamble, `### Instruction:` with the user turn (which carries
# `### Input:` when the row has one), `### Response:` and the reply with the eos token. The template adds the
# preamble itself when there is no system turn, so a bare user message at inference renders exactly the training
# prompt (the one with or without input, as the message has an input or not).
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                              "further context. Write a response that appropriately completes the request.")
ALPACA_INPUT = "\n\n### Input:\n"
ALPACA = (
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{%- if '" + ALPACA_INPUT.replace("\n", "\\n") + "' in messages[0]['content'] -%}"
    "{{ '" + ALPACA_PREAMBLE_WITH_INPUT + "\n\n' }}"
    "{%- else -%}{{ '" + ALPACA_PREAMBLE + "\n\n' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{%- else -%}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class Template:
    name: str
    jinja: Optional[str]
    """None: the tokenizer's own template."""
    end_of_turn: Optional[str]
    """Token that ends an assistant turn (generation stops there); None: the tokenizer's eos."""
    special_tokens: tuple[str, ...] = ()
    """Tokens the template needs in the vocabulary (added, with resized embeddings, if missing)."""


BUILTIN = {
    "chatml": Template("chatml", CHATML, "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
    "zephyr": Template("zephyr", ZEPHYR, None),
    "alpaca": Template("alpaca", ALPACA, None),
    "tokenizer": Template("tokenizer", None, None),
}
NAMES = ("none", *BUILTIN)
"""Every value data.chat_template takes besides a Jinja file."""


def get_template(name: str) -> Optional[Template]:
    """The template for `data.chat_template`: a builtin, a Jinja file, or None for `none`.

    A Jinja file's end-of-turn token is read off the template: the token its assistant turns end with, when that
    is a single special-looking token (`<|im_end|>`, `<|eot_id|>`) rather than the tokenizer's eos."""
    if name == "none":
        return None
    if name in BUILTIN:
        return BUILTIN[name]
    jinja = Path(name).expanduser().read_text()
    return Template(Path(name).stem, jinja, infer_end_of_turn(jinja))


def alpaca_messages(instruction: str, input_text: str, output: Optional[str]) -> list[dict]:
    """An Alpaca row as messages; the `alpaca` template renders them to the classic prompt (preamble included),
    other chat templates render the instruction (and input) as the user turn."""
    user = instruction if not input_text else f"{instruction}{ALPACA_INPUT}{input_text}"
    messages = [{"role": "user", "content": user}]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def has_generation_markers(jinja: Optional[str]) -> bool:
    return bool(jinja) and bool(_GENERATION.search(jinja))


# ---- rendering without a tokenizer (the preflight: no model, no tokenizer, only the template text)

EOS_PLACEHOLDER = "</s>"


def render(jinja: str, messages: list[dict], add_generation_prompt: bool = False,
           special: Optional[dict] = None) -> tuple[str, list[tuple[int, int]]]:
    """The text a template makes of a conversation and the character spans of its `{% generation %}` blocks,
    rendered by transformers' own Jinja environment (so `raise_exception` and the markers work as in training)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {"bos_token": "<s>", "eos_token": EOS_PLACEHOLDER, **(special or {})}
    texts, spans = render_jinja_template([messages], chat_template=jinja, add_generation_prompt=add_generation_prompt,
                                         return_assistant_tokens_mask=has_generation_markers(jinja), **kwargs)
    return texts[0], [tuple(s) for s in (spans[0] if spans else [])]


def infer_end_of_turn(jinja: str) -> Optional[str]:
    """The special token a template closes each assistant reply with, or None when that is the eos token (or
    the template does not say)."""
    if not has_generation_markers(jinja):
        return None
    content = "PROBE-REPLY"
    try:
        text, spans = render(jinja, [{"role": "user", "content": "PROBE-QUESTION"},
                                     {"role": "assistant", "content": content}])
    except Exception:  # a broken template is reported by the preflight's own check
        return None
    for start, end in spans:
        tail = text[start:end]
        if content in tail:
            token = tail[tail.index(content) + len(content):].strip()
            if token and token != EOS_PLACEHOLDER and _SPECIAL.match(token):
                return token
    return None


def stop_tokens(tokenizer, template_name: str) -> list[int]:
    """Token ids generation must stop at for a run trained with this template: the end-of-turn token its
    assistant replies end with (read off the installed template when the name does not say, as for
    `tokenizer`) and the eos token.

    A Jinja file is not read again: the tokenizer carries it (training installed it and saved it with the run),
    so a run folder still stops right after the file has moved."""
    if template_name == "none":
        end = None
    elif template_name in BUILTIN and BUILTIN[template_name].end_of_turn:
        end = BUILTIN[template_name].end_of_turn
    else:
        end = infer_end_of_turn(tokenizer.chat_template or "")
    ids = [tokenizer.eos_token_id]
    if end is not None and end in tokenizer.get_vocab():
        ids.insert(0, tokenizer.convert_tokens_to_ids(end))
    return [i for i in dict.fromkeys(ids) if i is not None]


def model_chat_template(model_path: str) -> Optional[str]:
    """The chat template stored in a local model folder (chat_template.jinja or tokenizer_config.json), read
    without loading the tokenizer; None when the folder has none."""
    folder = Path(model_path).expanduser()
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = _tokenizer_config(folder)
    value = config.get("chat_template")
    if isinstance(value, list):  # named variants
        value = next((v.get("template") for v in value if v.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def model_special_tokens(model_path: str) -> dict:
    """bos/eos/pad token strings of a local model folder's tokenizer (for rendering at preflight)."""
    folder = Path(model_path).expanduser()
    out = {}
    for source in (_read_json(folder / "special_tokens_map.json"), _tokenizer_config(folder)):
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = source.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and key not in out:
                out[key] = value
    return out


def _tokenizer_config(folder: Path) -> dict:
    return _read_json(folder / "tokenizer_config.json")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
