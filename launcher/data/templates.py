r"""Chat templates. Ours wrap each assistant reply AND its end-of-turn token in `{% generation %}` markers, so
trl can train on the assistant tokens only and the model learns to stop. The template used in training is
saved with the output tokenizer, and `generate` prompts with that same template.

Tools and reasoning (chatml and zephyr; alpaca renders neither). The rendering follows Qwen2.5/Hermes, which
many open models already know:
- `tools` (the functions' JSON schemas) go at the end of the system turn (one is opened when the conversation
  has none): the TOOLS_PREAMBLE, then `<tools>`, one schema per line as JSON, `</tools>`, then how to call
  (TOOLS_CALL_FORMAT).
- an assistant turn's `tool_calls` follow its content, each as `<tool_call>\n{"name": ..., "arguments": {...}}\n
  </tool_call>` (a newline between the content and each call), inside the generation markers: the calls are
  trained as the reply is.
- a `tool` turn (a call's result) is a turn of its own role, `<|im_start|>tool\n...<|im_end|>` (zephyr:
  `<|tool|>\n...</s>`), rendered as user turns are: outside the markers, never trained.
- an assistant turn's `reasoning_content` comes first in its reply as `<think>\n...\n</think>\n\n`, inside the
  markers (trainer.train_on_reasoning=false leaves it untrained: launcher/data/reasoning.py). A reply that holds
  its own `<think>` span is rendered as written.
Without tools, tool calls or reasoning the rendering is the plain chatml / zephyr one."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SPECIAL = re.compile(r"^<[^<>\s]+>$")

TOOLS_PREAMBLE = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
                  "provided with function signatures within <tools></tools> XML tags:")
TOOLS_CALL_FORMAT = ("For each function call, return a json object with function name and arguments within "
                     "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                     "<args-json-object>}\n</tool_call>")


def _jinja_text(text: str) -> str:
    """A Python string as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _tools_block() -> str:
    """Jinja that writes the tools block (the system turn's tail): the preamble, the schemas, the call format."""
    return ("{{ " + _jinja_text(TOOLS_PREAMBLE + "\n<tools>") + " }}"
            "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
            "{{ " + _jinja_text("\n</tools>\n\n" + TOOLS_CALL_FORMAT) + " }}")


# The assistant's reply as trained: its reasoning, its content, its tool calls (arguments written as given when
# a template user passes them as a JSON string), then `end` (the end-of-turn token).
def _reply(end: str) -> str:
    return ("{%- if message.get('reasoning_content') -%}"
            "{{ '<think>\\n' + (message['reasoning_content'] | trim) + '\\n</think>\\n\\n' }}"
            "{%- endif -%}"
            "{{ message['content'] if message['content'] is string else '' }}"
            "{%- for call in (message.get('tool_calls') or []) -%}"
            "{%- set fn = call['function'] if call.get('function') else call -%}"
            "{%- if message['content'] or not loop.first -%}{{ '\\n' }}{%- endif -%}"
            "{{ '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
            "{{ fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) }}"
            "{{ '}\\n</tool_call>' }}"
            "{%- endfor -%}"
            "{{ " + end + " }}")


def _chat(open_turn, close: str) -> str:
    """A chat template: each turn is `open_turn(role)`, the content, `close` (the end-of-turn text, a Jinja
    expression) and a newline; the assistant's reply and its `close` inside the generation markers. With tools
    the system turn (opened if the conversation has none) ends with the tools block."""
    return ("{%- if tools -%}"
            "{{ " + open_turn("'system'") + " }}"
            "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n\\n' }}"
            "{%- endif -%}" + _tools_block() + "{{ " + close + " + '\\n' }}"
            "{%- endif -%}"
            "{%- for message in messages -%}"
            "{%- if tools and loop.first and message['role'] == 'system' -%}"  # written with the tools above
            "{%- elif message['role'] == 'assistant' -%}"
            "{{ " + open_turn("'assistant'") + " }}{% generation %}" + _reply(close) + "{% endgeneration %}"
            "{{ '\\n' }}"
            "{%- else -%}"
            "{{ " + open_turn("message['role']") + " + message['content'] + " + close + " + '\\n' }}"
            "{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ " + open_turn("'assistant'") + " }}{%- endif -%}")


CHATML = _chat(lambda role: f"'<|im_start|>' + {role} + '\\n'", "'<|im_end|>'")
ZEPHYR = _chat(lambda role: f"'<|' + {role} + '|>\\n'", "eos_token")

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


def template_variables(special: Optional[dict] = None) -> dict:
    """The variables a template is rendered with where no tokenizer is loaded: placeholders for bos and eos,
    unless the tokenizer's special tokens are given."""
    return {"bos_token": "<s>", "eos_token": EOS_PLACEHOLDER, **(special or {})}


def render(jinja: str, messages: list[dict], add_generation_prompt: bool = False,
           special: Optional[dict] = None, tools: Optional[list[dict]] = None) -> tuple[str, list[tuple[int, int]]]:
    """The text a template makes of a conversation (and the row's tools) and the character spans of its
    `{% generation %}` blocks, rendered by transformers' own Jinja environment (so `raise_exception` and the
    markers work as in training)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = template_variables(special)
    texts, spans = render_jinja_template([messages], tools=tools, chat_template=jinja,
                                         add_generation_prompt=add_generation_prompt,
                                         return_assistant_tokens_mask=has_generation_markers(jinja), **kwargs)
    return texts[0], [tuple(s) for s in (spans[0] if spans else [])]


# ---- tool support: read off a template by rendering a probe conversation (a template is Jinja text; whether it
# reads `tools` and `tool_calls` cannot be told from the text alone, e.g. a template may loop over `tools` only to
# raise an error)

_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_lookup", "description": "PROBE-SCHEMA-DESCRIPTION",
    "parameters": {"type": "object", "properties": {"probe_key": {"type": "string"}}, "required": ["probe_key"]}}}
_PROBE = [
    {"role": "user", "content": "PROBE-QUESTION"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "probe_lookup", "arguments": {"probe_key": "PROBE-VALUE"}}}]},
    {"role": "tool", "content": "PROBE-RESULT", "name": "probe_lookup"},
    {"role": "assistant", "content": "PROBE-REPLY"},
]


def tool_support(jinja: str, special: Optional[dict] = None) -> Optional[str]:
    """None when the template renders tool-calling chats: the tools' schemas, each call's name and arguments,
    the tool's result, and (a template with generation markers) the call trained but never the result; else
    what it gets wrong, as a phrase ("does not show the tools' schemas")."""
    try:
        text, spans = render(jinja, _PROBE, special=special, tools=[_PROBE_TOOL])
    except Exception as err:  # a template that refuses tool turns or tools (raise_exception) cannot render them
        return f"cannot render a tool call and its result ({type(err).__name__}: {err})"
    trained = "".join(text[a:b] for a, b in spans)
    if "PROBE-SCHEMA-DESCRIPTION" not in text:
        return "does not show the tools' schemas (it ignores `tools`)"
    if "probe_lookup" not in text.replace("PROBE-SCHEMA-DESCRIPTION", "").split("PROBE-QUESTION", 1)[-1] \
            or "PROBE-VALUE" not in text:
        return "does not show the assistant's tool calls (it ignores `tool_calls`)"
    if "PROBE-RESULT" not in text:
        return "does not show the tools' results (the `tool` turns)"
    if spans and ("PROBE-RESULT" in trained or "PROBE-VALUE" not in trained):
        return ("marks the tools' results as trained" if "PROBE-RESULT" in trained
                else "does not mark the tool calls as trained")
    return None


def renders_tools(jinja: Optional[str], special: Optional[dict] = None) -> bool:
    """Whether a template renders tool-calling chats (see tool_support)."""
    return bool(jinja) and tool_support(jinja, special) is None


def uses_tools(row: dict) -> bool:
    """Whether a canonical messages row is a tool-calling chat: it lists tools, calls one or holds a result."""
    messages = row.get("messages") or []
    return bool(row.get("tools")) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def check_tool_template(jinja: str, template_name: str, rows: list[dict], where: str,
                        special: Optional[dict] = None) -> Optional[str]:
    """The preflight's check that the template can render the tool-calling chats among these canonical rows:
    None when there are none or it can, else the problem naming the first such row and the fix."""
    number = next((n for n, row in enumerate(rows, start=1) if uses_tools(row)), None)
    if number is None:
        return None
    problem = tool_support(jinja, special)
    if problem is None:
        return None
    return (f"{where}: row {number} is a tool-calling chat, but the {template_name} template {problem}: use "
            "data.chat_template=chatml or zephyr (they render tools), or a model whose own template does")


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
