"""Read the splits, check every row, and turn them into the canonical rows a trainer takes.

The same code serves the preflight (`check_data`, no tokenizer, no model) and the worker (`load_splits`), so
what `plan` accepted is exactly what training reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.data import formats
from launcher.data.files import DataFileError, SplitSource, locate, read_rows
from launcher.data.templates import alpaca_messages

MAX_ROW_ERRORS = 5


@dataclass
class Split:
    name: str
    source: SplitSource
    rows: list = field(default_factory=list)
    """Canonical rows (empty for a hub split, which is only read in the worker)."""


@dataclass
class DataCheck:
    format: Optional[str] = None
    train: Optional[Split] = None
    valid: Optional[Split] = None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def check_data(cfg: RunConfig) -> DataCheck:
    """Find, read and check the train and validation splits; every problem is collected."""
    out = DataCheck()
    d = cfg.data
    for split_name, key in ((d.train_split, "data.train_split"), (d.valid_split, "data.valid_split")):
        if split_name is None:
            continue
        source = locate(d.path, split_name)
        if source is None:
            out.problems.append(Problem(f"data.path / {key}", _not_found(d.path, split_name)))
            continue
        split = Split(split_name, source)
        if source.file is not None:
            _check_rows(cfg, split, out)
        else:
            out.notes.append(f"data: hub dataset {source.hub_id} split {split_name}: rows are checked when the "
                             "worker loads them (no network at plan time is assumed)")
        if key == "data.train_split":
            out.train = split
        else:
            out.valid = split
    if out.train and out.train.rows and d.num_validation_samples and out.valid is None:
        if d.num_validation_samples >= len(out.train.rows):
            out.problems.append(Problem("data.num_validation_samples",
                                        f"{d.num_validation_samples} leaves no training rows out of "
                                        f"{len(out.train.rows)}"))
        else:  # the tail of train, as the hosted fine-tuning APIs do
            out.valid = Split("tail-of-train", out.train.source, out.train.rows[-d.num_validation_samples:])
            out.train.rows = out.train.rows[:-d.num_validation_samples]
    return out


def load_splits(cfg: RunConfig) -> DataCheck:
    """The worker's entry: local splits come checked from `check_data`; hub splits are read here."""
    checked = check_data(cfg)
    if checked.problems:
        raise DataFileError("\n".join(str(p) for p in checked.problems))
    for split in (checked.train, checked.valid):
        if split is not None and split.source.hub_id:
            import datasets

            raw = datasets.load_dataset(split.source.hub_id, split.source.hub_config, split=split.source.split)
            _check_rows(cfg, split, checked, list(raw))
            if checked.problems:
                raise DataFileError("\n".join(str(p) for p in checked.problems))
    return checked


def sft_row(row: dict, fmt: str, chat: bool) -> dict:
    """A canonical row as the SFT trainer takes it: `text`, `messages`, or `prompt`/`completion`."""
    if fmt == "alpaca":
        return {"messages": alpaca_messages(row["instruction"], row["input"], row["output"])}
    if fmt == "prompt_completion" and chat:
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["completion"]}]}
    return row


def _check_rows(cfg: RunConfig, split: Split, out: DataCheck, raw_rows: list | None = None) -> None:
    where = split.source.file or f"{split.source.hub_id}[{split.source.split}]"
    if raw_rows is None:
        try:
            raw_rows = read_rows(split.source.file)
        except DataFileError as err:
            out.problems.append(Problem("data.path", str(err)))
            return
    if not raw_rows:
        out.problems.append(Problem("data.path", f"{where}: no rows"))
        return
    rename = formats.rename_map(cfg.data, cfg.trainer.name)
    found = list(raw_rows[0])
    missing = [src for src in rename if src not in found]
    if missing:
        out.problems.append(Problem("data.column_mapping", (
            f"{where}: column(s) {', '.join(missing)} not found; the file has: {', '.join(found)}")))
        return
    rows = [{rename.get(k, k): v for k, v in r.items()} for r in raw_rows]
    fmt = formats.detect(list(rows[0]), cfg.data, cfg.trainer.name, rows[0])
    if fmt is None:
        out.problems.append(Problem("data.column_mapping", _no_format_message(where, found, cfg)))
        return
    if cfg.trainer.name not in fmt.trainers:
        out.problems.append(Problem("data.format", (
            f"{where}: rows are {fmt.name} ({', '.join(fmt.columns)}), which the {cfg.trainer.name} trainer "
            f"cannot use; it takes {', '.join(f.name for f in formats.FORMATS if cfg.trainer.name in f.trainers)}")))
        return
    if out.format and out.format != fmt.name:
        out.problems.append(Problem("data.valid_split", f"{where}: {fmt.name} rows, but train is {out.format}"))
    out.format = fmt.name
    errors = []
    for number, row in enumerate(rows, start=1):
        try:
            split.rows.append(formats.normalise(row, fmt))
        except formats.RowError as err:
            errors.append(f"{where}: row {number}: {err}")
    for message in errors[:MAX_ROW_ERRORS]:
        out.problems.append(Problem("data", message))
    if len(errors) > MAX_ROW_ERRORS:
        out.problems.append(Problem("data", f"{where}: {len(errors) - MAX_ROW_ERRORS} more rows with problems"))
    _check_template(cfg, fmt.name, out)


def _check_template(cfg: RunConfig, fmt: str, out: DataCheck) -> None:
    if cfg.data.chat_template != "none":
        return
    if fmt == "messages":
        problem = Problem("data.chat_template", "rows are chat messages but chat_template is none: set chatml, "
                          "zephyr, tokenizer (the model's own) or a Jinja file")
        if problem not in out.problems:
            out.problems.append(problem)
    elif fmt == "alpaca":
        note = "data: Alpaca rows with chat_template none are rendered with the alpaca template"
        if note not in out.notes:
            out.notes.append(note)


def _not_found(path: str, split: str) -> str:
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_dir():
        present = sorted(x.name for x in p.iterdir() if x.is_file())
        return (f"no {split}.jsonl, {split}.csv or {split}.parquet in {p} (it holds: "
                f"{', '.join(present) or 'nothing'})")
    return f"{path} does not exist (give a folder of <split>.jsonl|.csv|.parquet, a file, or a hub dataset id)"


def _no_format_message(where, found: list[str], cfg: RunConfig) -> str:
    needs = {"sft": "text, messages, prompt+completion or instruction+output",
             "default": "text", "reward": "text+rejected_text or chosen+rejected",
             "dpo": "prompt+chosen+rejected", "orpo": "prompt+chosen+rejected"}[cfg.trainer.name]
    text_like = [c for c in found if c not in ("id", "index")]
    example = text_like[0] if text_like else "<column>"
    fix = f"data.column_mapping.text_column={example}"
    if cfg.trainer.name in ("dpo", "orpo"):
        fix += " data.column_mapping.prompt_text_column=<column> data.column_mapping.rejected_text_column=<column>"
    elif cfg.trainer.name == "reward":
        fix += " data.column_mapping.rejected_text_column=<column>"
    return (f"{where}: no column layout the {cfg.trainer.name} trainer understands; it needs {needs}, the file "
            f"has: {', '.join(found)}. Map yours, e.g. {fix}")
