"""The chat templates we ship, rendered by plain string building where that is proven to give what Jinja gives.

Preparing chat data renders every conversation through transformers' Jinja path (`render_jinja_template` with
generation tracking, for the character spans of the `{% generation %}` blocks): on 20,000 chat rows that was the
largest cost after the tokenizer itself (benchmarks/preprocessing.py). The chatml and zephyr templates
(launcher.data.templates) have one shape: every turn is `<open role>content<close>\\n`, and an assistant turn's
`content<close>` is its generation block. For a conversation of plain turns (role and text, nothing else) that is a
few string joins.

Used only where it is identical, and checked rather than assumed:
- the template must be one we ship, character for character (a Jinja file or a model's own template is rendered
  by Jinja, whatever it looks like);
- when the encoder is built, a set of probe conversations (with and without a system turn, several turns, turns
  in unusual orders, empty, multi-byte, whitespace-edged and template-like text) is rendered both ways, and any
  difference in the text or the spans turns the fast path off for that encoder;
- a row the string building does not cover goes through Jinja: tools, tool calls, a tool's result, reasoning
  content, any key besides role and content, text that is not a string.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

from launcher.data import templates

Spans = list[tuple[int, int]]

PLAIN_ROLES = frozenset({"system", "user", "assistant"})
"""The roles a plain turn may have (a `tool` turn is a tool's result: its template branch is Jinja's)."""


@dataclass(frozen=True)
class TurnTemplate:
    """A template of the chatml/zephyr shape for plain conversations: each turn is
    `open_start + role + open_end + content + close + "\\n"`; an assistant turn's `content + close` is trained."""
    open_start: str
    open_end: str
    close: str

    def render(self, messages: list[dict]) -> tuple[str, Spans]:
        """The text of a plain conversation (see `is_plain`) and the spans of its assistant replies."""
        parts, spans, at = [], [], 0
        for message in messages:
            head = self.open_start + message["role"] + self.open_end
            body = message["content"] + self.close
            if message["role"] == "assistant":
                spans.append((at + len(head), at + len(head) + len(body)))
            parts += (head, body, "\n")
            at += len(head) + len(body) + 1
        return "".join(parts), spans


def _chatml(special: dict) -> Optional[TurnTemplate]:
    return TurnTemplate("<|im_start|>", "\n", "<|im_end|>")


def _zephyr(special: dict) -> Optional[TurnTemplate]:
    eos = special.get("eos_token")
    return TurnTemplate("<|", "|>\n", eos) if isinstance(eos, str) and eos else None


# The templates string building covers: their exact Jinja text -> the TurnTemplate for a tokenizer's special tokens.
SHIPPED = {templates.CHATML: _chatml, templates.ZEPHYR: _zephyr}


def is_plain(messages: list[dict]) -> bool:
    """A conversation of plain turns: each has exactly a role (system, user or assistant) and text content (keys
    set to None are dropped before rendering, as apply_chat_template does, so they do not count)."""
    for m in messages:
        if not isinstance(m.get("content"), str) or m.get("role") not in PLAIN_ROLES:
            return False
        if len(m) != 2 and any(v is not None for k, v in m.items() if k not in ("role", "content")):
            return False
    return True


def plain_turns(messages: list[dict]) -> list[dict]:
    """A plain conversation's turns as the renderer reads them (keys set to None left out)."""
    if all(len(m) == 2 for m in messages):
        return messages
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# Probe conversations: every plain role in every position, the edges of text a template might treat specially.
_TEXTS = ["Hello?", "", "  spaced out  ", "\n\nnewlines\n", "猫が好き 🐈‍⬛ — ü", "{{ eos_token }} {% if x %}",
          "<|im_end|> </s> <s> <|im_start|>", "'quoted' \"double\" \\backslash\\", "tab\there"]


def probe_conversations() -> list[list[dict]]:
    t = _TEXTS
    u = [{"role": "user", "content": x} for x in t]
    a = [{"role": "assistant", "content": x} for x in reversed(t)]
    s = [{"role": "system", "content": x} for x in t]
    return [
        [u[0], a[0]],
        [s[0], u[1], a[1]],
        [s[2], u[3], a[2], u[4], a[3], u[5], a[4]],
        [a[5]],
        [u[6], u[7]],
        [u[8], s[8], a[8], a[7]],
        [s[6], s[7], u[2], a[6]],
        [u[i] if i % 2 == 0 else a[i] for i in range(len(t))],
        [],
    ]


def fast_renderer(template: Optional[str], special: dict) -> Optional[TurnTemplate]:
    """The string-building renderer of `template` for a tokenizer's special tokens (bos/eos/...: the variables
    the template reads), or None where it is not one we ship or renders any probe differently from Jinja."""
    build = SHIPPED.get(template) if template else None
    renderer = build(special) if build else None
    if renderer is None:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    for conversation in probe_conversations():
        try:
            texts, spans = render_jinja_template(conversations=[conversation], chat_template=template,
                                                 return_assistant_tokens_mask=True, **special)
        except Exception:  # Jinja cannot render a probe (a missing variable): neither may we
            return None
        if renderer.render(conversation) != (texts[0], [tuple(s) for s in spans[0]]):
            return None
    return renderer


def render_if_plain(jinja: str, messages: list[dict], special: Optional[dict] = None,
                    tools: Optional[list] = None) -> Optional[tuple[str, Spans]]:
    """`templates.render(jinja, messages, special=special, tools=tools)` by string building, for a plain
    conversation and a template it is proven for; None where Jinja must render it (the preflight renders its
    first rows so, as the prepared data renders all of them)."""
    if tools is not None or not is_plain(messages):
        return None
    variables = templates.template_variables(special)
    try:
        renderer = _renderer_for(jinja, tuple(sorted(variables.items())))
    except TypeError:  # a variable whose value cannot be a cache key: Jinja renders
        return None
    if renderer is None:
        return None
    text, spans = renderer.render(plain_turns(messages))
    return text, spans if templates.has_generation_markers(jinja) else []


@functools.lru_cache(maxsize=16)
def _renderer_for(jinja: str, variables: tuple) -> Optional[TurnTemplate]:
    """fast_renderer, decided once per template and variables (it renders the probes both ways)."""
    return fast_renderer(jinja, dict(variables))
