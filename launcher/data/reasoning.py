"""Reasoning traces in assistant replies: the `<think>...</think>` block a reply starts with (chatml and zephyr
render an assistant turn's `reasoning_content` so; a reply may also hold its own block).

Training with trainer.train_on_reasoning=false leaves each block untrained, and `generate` hides it unless
--show-reasoning. What "the block" is, precisely: from `<think>` to the end of the matching `</think>`, with the
whitespace after it up to the reply's first character (the `\\n\\n` the templates write between the trace and the
reply). The reply, its tool calls and the end-of-turn token stay trained: the model still learns to answer, and
to stop. A `<think>` with no `</think>` after it in the same reply is not a block (a trace cut off mid-way is
trained as written: an untrained tail would teach the model to stop without closing it).
"""
from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
_BLOCK = re.compile(re.escape(OPEN) + r".*?" + re.escape(CLOSE) + r"\s*", re.DOTALL)


def reasoning_blocks(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """The character spans of the `<think>` blocks (with the whitespace after each) inside text[start:end]."""
    end = len(text) if end is None else end
    return [(m.start(), m.end()) for m in _BLOCK.finditer(text, start, end)]


def untrained_reasoning(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The trained character spans (the `{% generation %}` spans of `text`) minus each reasoning block inside
    them: what is trained with trainer.train_on_reasoning=false. Spans left empty are dropped."""
    out = []
    for start, end in spans:
        cursor = start
        for block_start, block_end in reasoning_blocks(text, start, end):
            if block_start > cursor:
                out.append((cursor, block_start))
            cursor = block_end
        if end > cursor:
            out.append((cursor, end))
    return out


def split_reasoning(text: str) -> tuple[str, str]:
    """A generated reply as (reasoning, reply), both stripped: the reasoning is what comes before `</think>`
    (without its `<think>`: a template may put that in the generation prompt, so the model writes only the rest);
    a reply with no `</think>` is all reply, unless it opened a `<think>` it never closed (it ran out of tokens
    while reasoning), which is all reasoning."""
    if CLOSE in text:
        reasoning, _, reply = text.partition(CLOSE)
        reasoning = reasoning.strip()
        if reasoning.startswith(OPEN):
            reasoning = reasoning[len(OPEN):]
        return reasoning.strip(), reply.strip()
    stripped = text.strip()
    if stripped.startswith(OPEN):
        return stripped[len(OPEN):].strip(), ""
    return "", stripped


def shown_reply(text: str, show_reasoning: bool) -> str:
    """What `generate` and `chat` print of a generated reply: the reply alone, or with --show-reasoning its
    reasoning first, in its `<think>` tags, as the model wrote it."""
    reasoning, reply = split_reasoning(text)
    if not show_reasoning or not reasoning:
        return reply
    return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{reply}".rstrip()
