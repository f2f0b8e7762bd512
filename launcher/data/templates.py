"""Chat templates. Ours wrap each assistant reply AND its end-of-turn token in `{% generation %}` markers, so
trl can train on the assistant tokens only and the model learns to stop. The template used in training is
saved with the output tokenizer, and `generate` prompts with that same template."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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

# The Alpaca prompt (see the Alpaca data format): the system turn carries the preamble, the user turn the
# instruction (and its input), the assistant turn the response.
ALPACA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{%- else -%}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                              "further context. Write a response that appropriately completes the request.")


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


def get_template(name: str) -> Optional[Template]:
    """The template for `data.chat_template`: a builtin, a Jinja file, or None for `none`."""
    if name == "none":
        return None
    if name in BUILTIN:
        return BUILTIN[name]
    return Template(Path(name).stem, Path(name).expanduser().read_text(), None)


def alpaca_messages(instruction: str, input_text: str, output: Optional[str]) -> list[dict]:
    """An Alpaca row as messages that the `alpaca` template renders to the classic prompt."""
    user = instruction if not input_text else f"{instruction}\n\n### Input:\n{input_text}"
    messages = [{"role": "system", "content": ALPACA_PREAMBLE_WITH_INPUT if input_text else ALPACA_PREAMBLE},
                {"role": "user", "content": user}]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def has_generation_markers(jinja: Optional[str]) -> bool:
    return bool(jinja) and "{% generation %}" in jinja
