"""Row formats: detect which one a dataset is in, check its rows, and normalise it to the canonical columns
the trainers take (`text`, `messages`, `prompt`/`completion`, `prompt`/`chosen`/`rejected`, and for unpaired
preference data `prompt`/`completion`/`label`)."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Mapping, Optional

from launcher.config.schema import DataConfig
from launcher.methods import METHODS

ROLES = ("system", "user", "assistant")
# ShareGPT rows hold the conversation in a `conversations` column, each turn {from, value} (or {role, content}).
SHAREGPT_COLUMN = "conversations"
# The roles ShareGPT's speaker names play. Tool output (tool, observation) has no role of its own in the chat
# templates (alpaca would train on it as a reply), so it is shown to the model as a user turn and never trained;
# the model's tool call (function_call) is its own reply. data.column_mapping.roles adds or overrides names.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "tool": "user", "observation": "user",
                  "function_call": "assistant"}


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    """Canonical columns every row must have."""

    @property
    def trainers(self) -> tuple[str, ...]:
        """Trainers that take this format (the methods table says)."""
        return tuple(m.name for m in METHODS.values() if self.name in m.formats)


# Detection tries these in order: the first whose columns are all present wins, a format the trainer takes
# before one it does not.
FORMATS = (
    Format("preference", ("prompt", "chosen", "rejected")),
    Format("reward_pair", ("chosen", "rejected")),
    Format("alpaca", ("instruction", "output")),
    Format("unpaired", ("prompt", "completion", "label")),
    Format("prompt_completion", ("prompt", "completion")),
    Format("unpaired_messages", ("messages", "label")),
    Format("messages", ("messages",)),
    Format("text", ("text",)),
    # The online methods' prompts: every other column goes along to the reward functions (e.g. a reference answer).
    Format("prompt_only", ("prompt",)),
)
# Single completions, each labelled desirable or undesirable (kto); both normalise to prompt/completion/label.
UNPAIRED = ("unpaired", "unpaired_messages")
BY_NAME = {f.name: f for f in FORMATS}
# Rows that hold answers to learn from, not prompts to sample: given to an online method they are refused (naming
# the format and its trainers) rather than read as prompts with extra columns.
OFFLINE_ANSWERS = ("preference", "reward_pair", "unpaired", "unpaired_messages")
# AutoTrain names the preferred and rejected answers `text` and `rejected_text`.
PREFERENCE_ALIASES = {"text": "chosen", "rejected_text": "rejected"}


class RowError(ValueError):
    """A row that does not fit its format; the message names the row."""


def rename_map(cfg: DataConfig, trainer: str) -> dict[str, str]:
    """User column -> canonical column, from `column_mapping` (AutoTrain's text/rejected_text/prompt).

    For sft, a prompt column makes the text column the completion (prompt/completion rows); for unpaired
    preference data (kto) the text column is the completion."""
    cols = cfg.column_mapping
    preference = METHODS[trainer].pairs
    mapping = {}
    if preference:
        if cols.text_column != "text" or cols.rejected_text_column:
            mapping[cols.text_column] = "chosen"
    elif METHODS[trainer].online:
        pass  # a prompt column (prompt_text_column, below) and whatever columns the rewards read
    elif set(UNPAIRED) & set(METHODS[trainer].formats):
        if cols.text_column != "text" or cols.prompt_text_column:
            mapping[cols.text_column] = "completion"
    elif cols.prompt_text_column:
        mapping[cols.text_column] = "completion"
    elif cols.text_column != "text":
        mapping[cols.text_column] = "text"
    if cols.rejected_text_column:
        mapping[cols.rejected_text_column] = "rejected"
    if cols.prompt_text_column:
        mapping[cols.prompt_text_column] = "prompt"
    if cols.label_column:
        mapping[cols.label_column] = "label"
    return mapping


def apply_aliases(columns: list[str], trainer: str) -> dict[str, str]:
    """Renames that make ShareGPT's `conversations` column and AutoTrain's preference columns (text,
    rejected_text) canonical, when unambiguous."""
    aliases = {SHAREGPT_COLUMN: "messages"} if is_sharegpt(columns) else {}
    if not METHODS[trainer].pairs or "chosen" in columns or "rejected" in columns:
        return aliases
    if not set(PREFERENCE_ALIASES) <= set(columns):
        return aliases
    return {**aliases, **PREFERENCE_ALIASES}


def is_sharegpt(columns: list[str]) -> bool:
    """ShareGPT rows: a `conversations` column and no `messages` column it would clash with."""
    return SHAREGPT_COLUMN in columns and "messages" not in columns


def detect(columns: list[str], cfg: DataConfig, trainer: str, first_row: dict) -> Optional[Format]:
    """The format of data with these (already renamed) columns, or None when nothing fits."""
    if cfg.format != "auto":
        fmt = BY_NAME[cfg.format]
        if fmt.name == "messages" and "text" in columns:
            return fmt  # a text column holding the message lists
        return fmt if set(fmt.columns) <= set(columns) else None
    if "prompt_only" in METHODS[trainer].formats:
        answers = next((BY_NAME[n] for n in OFFLINE_ANSWERS if set(BY_NAME[n].columns) <= set(columns)), None)
        if answers is not None:
            return answers  # preference or labelled rows are not prompts: the caller says which trainer reads them
    # A format the trainer takes wins over an earlier one it does not (sft rows may carry a label column).
    for fmt in sorted(FORMATS, key=lambda f: trainer not in f.trainers):
        if fmt.name == "prompt_only" and trainer not in fmt.trainers:
            continue  # a lone prompt column is a half-written layout for the others: "no layout" says what they need
        if set(fmt.columns) <= set(columns):
            if fmt.name == "text" and _is_messages(first_row.get("text")):
                return BY_NAME["messages"]  # a text column holding chat messages (AutoTrain allows it)
            return fmt
    return None


def normalise(row: dict, fmt: Format, label_column: str = "label", roles: Mapping[str, str] = {}) -> dict:
    """One row in canonical columns; raises RowError when it does not fit (naming the label by the user's column).
    `roles` maps the data's speaker names to chat roles (data.column_mapping.roles)."""
    if fmt.name == "messages":
        value = row.get("messages", row.get("text"))
        return {"messages": parse_messages(value, roles=roles)}
    if fmt.name == "alpaca":
        return {"instruction": _text(row, "instruction", fmt), "input": row.get("input") or "",
                "output": _text(row, "output", fmt)}
    if fmt.name == "prompt_only":
        return {**row, "prompt": _prompt(row, fmt, roles)}
    if fmt.name == "unpaired_messages":
        return {**_split_conversation(parse_messages(row.get("messages"), roles=roles)),
                "label": parse_label(row.get("label"), label_column)}
    out = {}
    for col in fmt.columns:
        value = row.get(col)
        if col == "label":
            out[col] = parse_label(value, label_column)
        elif fmt.name in ("preference", "reward_pair", "unpaired") and _is_messages(value):
            try:
                out[col] = parse_messages(value, need_assistant=col != "prompt", roles=roles)
            except RowError as err:
                raise RowError(f"{col}: {err}") from None
        else:
            out[col] = _text(row, col, fmt)
    return out


def _prompt(row: dict, fmt: Format, roles: Mapping[str, str]):
    """An online method's prompt: text, or a conversation ending with the user turn the model answers."""
    value = row.get("prompt")
    if not _is_messages(value):
        return _text(row, "prompt", fmt)
    messages = parse_messages(value, need_assistant=False, roles=roles)
    if messages[-1]["role"] != "user":
        raise RowError(f"prompt: the last turn must be the user turn the model answers, got {messages[-1]['role']!r} "
                       "(leave the answer out: the model samples it)")
    return messages


def parse_messages(value, need_assistant: bool = True, roles: Mapping[str, str] = {}) -> list[dict]:
    """A list of {role, content}, or ShareGPT's {from, value}; a string holding one (chat data in a CSV cell) is
    accepted as JSON or as Python's repr (`[{'role': 'user', ...}]`, as AutoTrain's docs print it). Speaker
    names become roles through `roles`, then ShareGPT's names (human, gpt, ...)."""
    if isinstance(value, str):
        value = _parse_list(value)
    if not isinstance(value, list) or not value:
        raise RowError(f"messages: expected a non-empty list of {{role, content}} or {{from, value}}, "
                       f"got {type(value).__name__}")
    messages = [_parse_turn(i, turn, roles) for i, turn in enumerate(value)]
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RowError("messages: no assistant turn, so there is nothing to learn")
    return messages


def _parse_turn(i: int, turn, roles: Mapping[str, str]) -> dict:
    """One turn as {role, content}, from {role, content} or ShareGPT's {from, value}."""
    if isinstance(turn, dict) and "role" in turn and "content" in turn:
        speaker, content = turn["role"], turn["content"]
    elif isinstance(turn, dict) and "from" in turn and "value" in turn:
        speaker, content = turn["from"], turn["value"]
    else:
        raise RowError(f"messages[{i}]: expected {{role, content}} or ShareGPT's {{from, value}}, got {turn!r:.80}")
    if not isinstance(speaker, str):
        raise RowError(f"messages[{i}]: the role should be text, got {speaker!r:.60}")
    role = roles.get(speaker, SHAREGPT_ROLES.get(speaker, speaker))
    if role not in ROLES:
        mapped = f" (data.column_mapping.roles maps {speaker!r} to it)" if speaker in roles else ""
        raise RowError(f"messages[{i}]: unknown role {role!r}{mapped}; use one of {', '.join(ROLES)}, or map the "
                       f"name to one, e.g. data.column_mapping.roles.{speaker}=assistant")
    return {"role": role, "content": str(content)}


def parse_label(value, column: str = "label") -> bool:
    """An unpaired row's label: true/1 = desirable, false/0 = undesirable (a CSV cell holds them as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if value is None:
        raise RowError(f"no '{column}' value: every row needs a label, true/1 (desirable) or false/0 (undesirable)")
    raise RowError(f"column '{column}' should hold true/false or 1/0 (desirable / undesirable), got {value!r:.60}: "
                   "write each label as one of those")


def label_counts(rows: list[dict]) -> tuple[int, int]:
    """(desirable, undesirable) rows among normalised unpaired rows."""
    desirable = sum(1 for r in rows if r["label"])
    return desirable, len(rows) - desirable


def _split_conversation(messages: list[dict]) -> dict:
    """A conversation whose last turn is the labelled completion: the turns before it are the prompt."""
    if messages[-1]["role"] != "assistant":
        raise RowError("messages: the last turn must be the assistant reply the label judges, got "
                       f"{messages[-1]['role']!r}")
    if len(messages) < 2:
        raise RowError("messages: no turn before the assistant reply, so there is no prompt")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _parse_list(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise RowError("messages: a string that is not a JSON list of {role, content}") from None


def _is_messages(value) -> bool:
    if isinstance(value, list):
        return True
    return (isinstance(value, str) and value.lstrip().startswith("[{")
            and any(f'{q}{key}{q}' in value for key in ("role", "from") for q in "\"'"))


def _text(row: dict, col: str, fmt: Format) -> str:
    if col not in row or row[col] is None:
        raise RowError(f"no '{col}' value ({fmt.name} rows need {', '.join(fmt.columns)} in every row)")
    value = row[col]
    if isinstance(value, str) and not value.strip():
        raise RowError(f"column '{col}' is empty")
    if not isinstance(value, str):
        raise RowError(f"column '{col}' should hold text, got {type(value).__name__}")
    return value
