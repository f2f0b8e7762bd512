"""What `generate` and `chat` are given to prompt with (a --messages file, a --system message), checked before the
model loads: loading takes seconds to minutes, and a wrongly shaped conversation would otherwise end it with the
chat template's Jinja traceback. Light on purpose (no torch): a bad file is refused at once."""
from __future__ import annotations

import json
from pathlib import Path

from launcher.data.formats import RowError, parse_messages

MESSAGES_SHAPE = ('a JSON list of turns like [{"role": "system", "content": "..."}, {"role": "user", "content": '
                  '"..."}], roles system, user and assistant, the last turn the user\'s')


class PromptInputError(ValueError):
    """A prompt input that cannot be used; the message names it and says the fix."""


def read_messages_file(path: str | Path) -> list[dict]:
    """The conversation in a --messages file as [{role, content}], ending with the user turn to answer. Takes
    what training data takes (ShareGPT's {from, value} too, through launcher.data.formats.parse_messages)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PromptInputError(f"--messages {path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise PromptInputError(f"--messages {path}: not JSON ({err}); it should hold {MESSAGES_SHAPE}") from None
    try:
        messages = parse_messages(value, need_assistant=False)
    except RowError as err:
        raise PromptInputError(f"--messages {path}: {err}; it should hold {MESSAGES_SHAPE}") from None
    if messages[-1]["role"] != "user":
        raise PromptInputError(f"--messages {path}: the last turn is the {messages[-1]['role']}'s, so there is "
                               f"nothing to answer: end the list with the user turn the model should reply to")
    return messages


def check_renders(tokenizer, messages: list[dict], what: str) -> None:
    """The chat template must render the conversation (some refuse a system turn, or turns out of order); `what`
    names the input in the error."""
    from jinja2 import TemplateError

    try:
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except (TemplateError, ValueError, TypeError) as err:
        raise PromptInputError(f"{what}: the model's chat template cannot render it ({err})") from None
