"""Find and read a split: AutoTrain's folder convention (`<path>/<split>.jsonl|.csv|.parquet`), one file,
or a hub dataset id (`org/name`, optionally `org/name:config`).

Local JSONL and CSV are read here rather than by `datasets`, so that a malformed line is reported with its
file and line number, and so that AutoTrain's chat example (JSONL lines that are bare message lists, which
`datasets` cannot read) works.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class SplitSource:
    file: Optional[Path] = None
    """Local file holding the split."""
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "train"


def locate(path: str, split: str) -> SplitSource | None:
    """Where `split` of `path` lives, or None when nothing matches."""
    p = Path(path).expanduser()
    if p.is_file():
        return SplitSource(file=p, split=split)
    if p.is_dir():
        for ext in EXTENSIONS:
            if (p / f"{split}{ext}").is_file():
                return SplitSource(file=p / f"{split}{ext}", split=split)
        return None
    if path.startswith((".", "/", "~")) or p.suffix in EXTENSIONS:
        return None
    name, _, config = path.partition(":")
    return SplitSource(hub_id=name, hub_config=config or None, split=split)


def read_rows(file: Path) -> list[dict]:
    """Every row of a local data file as a dict; raises DataFileError naming file and line."""
    if file.suffix in (".jsonl", ".json"):
        return _read_jsonl(file)
    if file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    raise DataFileError(f"{file}: unsupported file type {file.suffix!r}; use one of {', '.join(EXTENSIONS)}")


def _read_jsonl(file: Path) -> list[dict]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        return [_as_row(r, file, i + 1) for i, r in enumerate(rows)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{file}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        rows.append(_as_row(value, file, number))
    return rows


def _as_row(value, file: Path, number: int) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, list):  # AutoTrain's chat example: a line is the message list itself
        return {"messages": value}
    raise DataFileError(f"{file}:{number}: expected a JSON object per line, got {type(value).__name__}")
