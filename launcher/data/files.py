"""Find and read a split: AutoTrain's folder convention (`<path>/<split>.jsonl|.csv|.parquet`), one file,
or a hub dataset id.

A hub dataset takes its config either from the path (`org/name:config`) or, as AutoTrain does, from the split
(`train_split: config:split`); the split may carry a slice (`train[:1000]`).

Local JSONL and CSV are read here rather than by `datasets`, so that a malformed line is reported with its
file and line number, and so that AutoTrain's chat example (JSONL lines that are bare message lists, which
`datasets` cannot read) works.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class SplitSource:
    file: Optional[Path] = None
    """Local file holding the split."""
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "train"
    """The split as the hub names it (for a hub source, without the `config:` prefix)."""

    def describe(self) -> str:
        if self.file is not None:
            return str(self.file)
        return f"{self.hub_id}{':' + self.hub_config if self.hub_config else ''}[{self.split}]"


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
    if not looks_like_hub_id(path):
        return None
    name, _, config = path.partition(":")
    split_config, sep, split_name = split.partition(":")
    if sep:  # AutoTrain's `config:split`
        config, split = config or split_config, split_name
    return SplitSource(hub_id=name, hub_config=config or None, split=split)


def looks_like_hub_id(path: str) -> bool:
    """`org/name`, optionally `:config`: the only form read as a hub dataset id (a bare name is a mistyped local
    path far more often than a legacy hub dataset without an organisation)."""
    return HUB_ID.fullmatch(path) is not None and Path(path.partition(":")[0]).suffix not in EXTENSIONS


def respelled_local_path(path: str) -> Optional[str]:
    """`path` with each part that does not exist replaced by the closest name in the folder above it, when
    every part finds one (`sampels/chat` -> `samples/chat`); None otherwise."""
    p = Path(path).expanduser()
    base = Path(p.anchor) if p.is_absolute() else Path()
    for part in p.parts[len(base.parts):]:
        if not (base / part).exists():
            close = difflib.get_close_matches(part, _entries(base), n=1, cutoff=0.6)
            if not close:
                return None
            part = close[0]
        base = base / part
    return str(base) if str(base) != str(p) else None


def nearest_local_paths(path: str, limit: int = 3) -> list[str]:
    """Local files and folders spelled like `path`: its respelling, then the closest names beside it (in its
    parent folder when that exists) and in the working directory."""
    p = Path(path).expanduser()
    near = [respelled_local_path(path)]
    if p.parent != Path() and p.parent.is_dir():
        near += [str(p.parent / n) for n in difflib.get_close_matches(p.name, _entries(p.parent), cutoff=0.6)]
    near += difflib.get_close_matches(path, _entries(Path()), cutoff=0.6)
    return list(dict.fromkeys(n for n in near if n))[:limit]


def _entries(folder: Path, most: int = 2000) -> list[str]:
    """Names in `folder` (at most `most`: a suggestion is not worth listing a huge folder)."""
    try:
        return [entry.name for _, entry in zip(range(most), os.scandir(folder))]
    except OSError:
        return []


def read_rows(file: Path) -> list[dict]:
    """Every row of a local data file as a dict; raises DataFileError naming file and line."""
    if file.suffix in (".jsonl", ".json"):
        return _read_jsonl(file)
    if file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as fh:
            try:
                return list(csv.DictReader(fh))
            except csv.Error as err:
                raise DataFileError(f"{file}: not valid CSV ({err})") from None
    if file.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise DataFileError(f"{file}: not a readable parquet file ({err})") from None
    raise DataFileError(f"{file}: unsupported file type {file.suffix!r}; use one of {', '.join(EXTENSIONS)}")


def read_hub_rows(source: SplitSource) -> list[dict]:
    """A hub split as a list of rows (the worker's and `prepare`'s path; `plan` assumes no network)."""
    import datasets

    try:
        dataset = datasets.load_dataset(source.hub_id, source.hub_config, split=source.split,
                                        token=os.environ.get("HF_TOKEN"))
    except ValueError as err:
        if "Unknown split" not in str(err):
            raise
        # (plan cannot know the hub's splits without the network: this is the first moment it is known)
        raise DataFileError(f"{source.describe()}: the hub dataset has no split '{source.split}' ({err}): set "
                            "data.train_split / data.valid_split to one of its splits, data.valid_split=null, or "
                            "hold out training rows with data.validation_fraction=0.05") from None
    return dataset.to_list()


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
