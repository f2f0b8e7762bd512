"""What `generate` and `chat` are given to prompt with (a --messages file, a --tools file, a --system message),
checked before the model loads: loading takes seconds to minutes, and a wrongly shaped conversation would otherwise
end it with the chat template's Jinja traceback. Light on purpose (no torch): a bad file is refused at once."""
from __future__ import annotations

import json
from pathlib import Path

from typing import Optional

from launcher.data.formats import RowError, parse_messages, parse_tools

MESSAGES_SHAPE = ('a JSON list of turns like [{"role": "system", "content": "..."}, {"role": "user", "content": '
                  '"..."}], roles system, user, assistant and tool, the last turn the user\'s (or a tool\'s result)')
TOOLS_SHAPE = ('a JSON list of the functions\' schemas like [{"type": "function", "function": {"name": "...", '
               '"description": "...", "parameters": {...}}}], as a training row\'s tools column holds them')


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
    if messages[-1]["role"] not in ("user", "tool"):
        raise PromptInputError(f"--messages {path}: the last turn is the {messages[-1]['role']}'s, so there is "
                               f"nothing to answer: end the list with the user turn the model should reply to "
                               f"(or the tool result it should read)")
    return messages


def read_tools_file(path: str | Path) -> list[dict]:
    """The functions' JSON schemas in a --tools file, as a training row's `tools` column takes them: the
    template renders them into the prompt as it rendered the row's tools in training."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PromptInputError(f"--tools {path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise PromptInputError(f"--tools {path}: not JSON ({err}); it should hold {TOOLS_SHAPE}") from None
    try:
        tools = parse_tools(value)
    except RowError as err:
        raise PromptInputError(f"--tools {path}: {err}; it should hold {TOOLS_SHAPE}") from None
    if tools is None:
        raise PromptInputError(f"--tools {path}: no tools in it; it should hold {TOOLS_SHAPE}")
    return tools


def check_renders(tokenizer, messages: list[dict], what: str, tools: Optional[list[dict]] = None) -> None:
    """The chat template must render the conversation (some refuse a system turn, or turns out of order), and
    the tools and tool turns when there are any (a template that ignores them would prompt without them);
    `what` names the input in the error."""
    from jinja2 import TemplateError

    from launcher.data.templates import tool_support, uses_tools

    if tools or uses_tools({"messages": messages}):
        problem = tool_support(tokenizer.chat_template or "")
        if problem is not None:
            raise PromptInputError(f"{what}: it holds tools or tool turns, but the chat template {problem}")
    try:
        tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except (TemplateError, ValueError, TypeError) as err:
        raise PromptInputError(f"{what}: the model's chat template cannot render it ({err})") from None
