"""Row formats: detect which one a dataset is in, check its rows, and normalise it to the canonical columns
the trainers take (`text`, `messages`, `prompt`/`completion`, `prompt`/`chosen`/`rejected`, and for unpaired
preference data `prompt`/`completion`/`label`)."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Optional

from launcher.config.schema import DataConfig
from launcher.methods import METHODS

ROLES = ("system", "user", "assistant")


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
)
# Single completions, each labelled desirable or undesirable (kto); both normalise to prompt/completion/label.
UNPAIRED = ("unpaired", "unpaired_messages")
BY_NAME = {f.name: f for f in FORMATS}
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
    """Renames that make AutoTrain's preference columns (text, rejected_text) canonical, when unambiguous."""
    if not METHODS[trainer].pairs or "chosen" in columns or "rejected" in columns:
        return {}
    if not set(PREFERENCE_ALIASES) <= set(columns):
        return {}
    return dict(PREFERENCE_ALIASES)


def detect(columns: list[str], cfg: DataConfig, trainer: str, first_row: dict) -> Optional[Format]:
    """The format of data with these (already renamed) columns, or None when nothing fits."""
    if cfg.format != "auto":
        fmt = BY_NAME[cfg.format]
        if fmt.name == "messages" and "text" in columns:
            return fmt  # a text column holding the message lists
        return fmt if set(fmt.columns) <= set(columns) else None
    # A format the trainer takes wins over an earlier one it does not (sft rows may carry a label column).
    for fmt in sorted(FORMATS, key=lambda f: trainer not in f.trainers):
        if set(fmt.columns) <= set(columns):
            if fmt.name == "text" and _is_messages(first_row.get("text")):
                return BY_NAME["messages"]  # a text column holding chat messages (AutoTrain allows it)
            return fmt
    return None


def normalise(row: dict, fmt: Format, label_column: str = "label") -> dict:
    """One row in canonical columns; raises RowError when it does not fit (naming the label by the user's column)."""
    if fmt.name == "messages":
        value = row.get("messages", row.get("text"))
        return {"messages": parse_messages(value)}
    if fmt.name == "alpaca":
        return {"instruction": _text(row, "instruction", fmt), "input": row.get("input") or "",
                "output": _text(row, "output", fmt)}
    if fmt.name == "unpaired_messages":
        return {**_split_conversation(parse_messages(row.get("messages"))),
                "label": parse_label(row.get("label"), label_column)}
    out = {}
    for col in fmt.columns:
        value = row.get(col)
        if col == "label":
            out[col] = parse_label(value, label_column)
        elif fmt.name in ("preference", "reward_pair", "unpaired") and _is_messages(value):
            try:
                out[col] = parse_messages(value, need_assistant=col != "prompt")
            except RowError as err:
                raise RowError(f"{col}: {err}") from None
        else:
            out[col] = _text(row, col, fmt)
    return out


def parse_messages(value, need_assistant: bool = True) -> list[dict]:
    """A list of {role, content}; a string holding one (chat data in a CSV cell) is accepted as JSON or as
    Python's repr (`[{'role': 'user', ...}]`, as AutoTrain's docs print it)."""
    if isinstance(value, str):
        value = _parse_list(value)
    if not isinstance(value, list) or not value:
        raise RowError(f"messages: expected a non-empty list of {{role, content}}, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"messages[{i}]: expected {{role, content}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise RowError(f"messages[{i}]: unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        raise RowError("messages: no assistant turn, so there is nothing to learn")
    return [{"role": m["role"], "content": str(m["content"])} for m in value]


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
            and ('"role"' in value or "'role'" in value))


def _text(row: dict, col: str, fmt: Format) -> str:
    if col not in row or row[col] is None:
        raise RowError(f"no '{col}' value ({fmt.name} rows need {', '.join(fmt.columns)} in every row)")
    value = row[col]
    if isinstance(value, str) and not value.strip():
        raise RowError(f"column '{col}' is empty")
    if not isinstance(value, str):
        raise RowError(f"column '{col}' should hold text, got {type(value).__name__}")
    return value
