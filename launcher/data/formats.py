"""Row formats: detect which one a dataset is in, check its rows, and normalise it to the canonical columns
the trainers take (`text`, `messages`, `prompt`/`completion`, `prompt`/`chosen`/`rejected`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from launcher.config.schema import DataConfig

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    """Canonical columns every row must have."""
    trainers: tuple[str, ...]
    """Trainers that take this format."""


# Detection tries these in order: the first whose columns are all present wins.
FORMATS = (
    Format("preference", ("prompt", "chosen", "rejected"), ("dpo", "orpo", "reward")),
    Format("reward_pair", ("chosen", "rejected"), ("reward",)),
    Format("alpaca", ("instruction", "output"), ("sft", "default")),
    Format("prompt_completion", ("prompt", "completion"), ("sft", "default")),
    Format("messages", ("messages",), ("sft", "default")),
    Format("text", ("text",), ("sft", "default")),
)
BY_NAME = {f.name: f for f in FORMATS}


class RowError(ValueError):
    """A row that does not fit its format; the message names the row."""


def rename_map(cfg: DataConfig, trainer: str) -> dict[str, str]:
    """User column -> canonical column, from `column_mapping` (AutoTrain's text/rejected_text/prompt)."""
    cols = cfg.column_mapping
    preference = trainer in ("reward", "dpo", "orpo")
    mapping = {}
    if cols.text_column != "text" or (preference and cols.rejected_text_column):
        mapping[cols.text_column] = "chosen" if preference else "text"
    if cols.rejected_text_column:
        mapping[cols.rejected_text_column] = "rejected"
    if cols.prompt_text_column:
        mapping[cols.prompt_text_column] = "prompt"
    return mapping


def detect(columns: list[str], cfg: DataConfig, trainer: str, first_row: dict) -> Optional[Format]:
    """The format of data with these (already renamed) columns, or None when nothing fits."""
    if cfg.format != "auto":
        fmt = BY_NAME[cfg.format]
        return fmt if set(fmt.columns) <= set(columns) else None
    if trainer == "reward" and {"text", "rejected_text"} <= set(columns):
        return BY_NAME["reward_pair"]
    for fmt in FORMATS:
        if set(fmt.columns) <= set(columns):
            if fmt.name == "text" and _is_messages(first_row.get("text")):
                return BY_NAME["messages"]  # a text column holding chat messages (AutoTrain allows it)
            return fmt
    return None


def normalise(row: dict, fmt: Format) -> dict:
    """One row in canonical columns; raises RowError when it does not fit."""
    if fmt.name == "reward_pair" and "text" in row:
        row = {"chosen": row["text"], "rejected": row.get("rejected_text")}
    if fmt.name == "messages":
        value = row.get("messages", row.get("text"))
        return {"messages": parse_messages(value)}
    if fmt.name == "alpaca":
        return {"instruction": _text(row, "instruction"), "input": row.get("input") or "",
                "output": _text(row, "output")}
    out = {}
    for col in fmt.columns:
        value = row.get(col)
        if fmt.name in ("preference", "reward_pair") and _is_messages(value):
            out[col] = parse_messages(value)
        else:
            out[col] = _text(row, col)
    return out


def parse_messages(value) -> list[dict]:
    """A list of {role, content}; a JSON string of one is accepted (chat data in a CSV cell)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("messages: a string that is not a JSON list of {role, content}") from None
    if not isinstance(value, list) or not value:
        raise RowError(f"messages: expected a non-empty list of {{role, content}}, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"messages[{i}]: expected {{role, content}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise RowError(f"messages[{i}]: unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
    if not any(m["role"] == "assistant" for m in value):
        raise RowError("messages: no assistant turn, so there is nothing to learn")
    return [{"role": m["role"], "content": str(m["content"])} for m in value]


def _is_messages(value) -> bool:
    if isinstance(value, list):
        return True
    return isinstance(value, str) and value.lstrip().startswith("[{") and '"role"' in value


def _text(row: dict, col: str) -> str:
    value = row.get(col)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"column '{col}' is empty")
    if not isinstance(value, str):
        raise RowError(f"column '{col}' should hold text, got {type(value).__name__}")
    return value
