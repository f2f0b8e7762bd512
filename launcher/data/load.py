"""Read the splits, check every row, and turn them into the canonical rows a trainer takes.

The same code serves the preflight (`check_data`, no tokenizer, no model) and the worker (`load_splits`), so
what `plan` accepted is exactly what training reads. The preflight also renders the conversations through the
chosen chat template (the template text only, no tokenizer), so a template that cannot render a row fails
before anything loads.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.data import formats, mixture
from launcher.data.fast_render import render_if_plain
from launcher.methods import METHODS
from launcher.data.files import (
    DataFileError, SplitSource, locate, looks_like_hub_id, nearest_local_paths, read_hub_rows, read_rows,
    respelled_local_path,
)
from launcher.data.templates import (
    BUILTIN, check_tool_template, get_template, has_generation_markers, model_chat_template,
    model_special_tokens, render,
)

MAX_ROW_ERRORS = 5
RENDER_CHECK_ROWS = 2000
"""Rows per split the preflight renders through the chat template (the rest are rendered when tokenised)."""


@dataclass
class Split:
    name: str
    source: SplitSource
    rows: list = field(default_factory=list)
    """Canonical rows (empty for a hub split until the worker or `prepare` reads it)."""
    origins: list = field(default_factory=list)
    """A mixture's split: the index in data.datasets of the source each row came from (beside the rows, not a
    column in them: the trainers would see a column). Empty for one source."""


@dataclass
class DataCheck:
    format: Optional[str] = None
    train: Optional[Split] = None
    valid: Optional[Split] = None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    mixture: Optional[object] = None
    """data.datasets: the sources, each with its own check, and how they were mixed (launcher.data.mixture)."""


def check_data(cfg: RunConfig) -> DataCheck:
    """Find, read and check the train and validation splits; every problem is collected. With data.datasets,
    each source is checked so and the sources are mixed (launcher.data.mixture)."""
    if cfg.data.datasets:  # (each source's check runs the run-wide ones too: packing, hold-out keys)
        return mixture.check_mixture(cfg, _one_source())
    out = DataCheck()
    d = cfg.data
    out.problems += _validation_key_problems(cfg)
    mistyped = _mistyped_path(d.path)
    if mistyped is not None:
        out.problems.append(mistyped)
        return out
    for split_name, key in _splits_to_read(cfg, out):
        source = locate(d.path, split_name)
        if source is None:
            out.problems.append(Problem(f"data.path / {key}", _not_found(d.path, split_name)))
            continue
        if key == "data.valid_split" and _same_rows(out.train, source):
            # Checked before reading, so the file is read (and any problem in it reported) once.
            out.problems.append(Problem("data.path / data.valid_split", _validation_is_training(d, source)))
            continue
        split = Split(split_name, source)
        if source.file is not None:
            _check_rows(cfg, split, out)
        else:
            out.notes.append(f"data: hub dataset {source.describe()}: rows are checked when the worker (or "
                             "`tunelaunch prepare`) reads them; plan assumes no network")
        if key == "data.train_split":
            out.train = split
        else:
            out.valid = split
    _select_validation(cfg, out)
    _check_labels(cfg, out)
    _check_packing(cfg, out)
    return out


def _splits_to_read(cfg: RunConfig, out: DataCheck) -> list[tuple[str, str]]:
    """(split, key) pairs to read: train, and the validation split unless validation rows are held out of train
    (validation_fraction replaces valid_split)."""
    d = cfg.data
    splits = [(d.train_split, "data.train_split")]
    if d.valid_split is not None and d.validation_fraction is None:
        splits.append((d.valid_split, "data.valid_split"))
    elif d.valid_split is not None:
        _note(out, f"data: valid_split '{d.valid_split}' is not read: validation_fraction holds out training rows "
                   "instead")
    return splits


def _same_rows(train: Optional[Split], source: SplitSource) -> bool:
    """Whether the validation source is the training source itself (one file, or one hub split)."""
    if train is None:
        return False
    if train.source.file is not None and source.file is not None:
        return train.source.file.resolve() == source.file.resolve()
    return train.source == source


def load_splits(cfg: RunConfig) -> DataCheck:
    """The worker's entry: local splits come checked from `check_data`; hub splits are read here."""
    checked = check_data(cfg)
    if checked.problems:
        raise DataFileError("\n".join(str(p) for p in checked.problems))
    fill_hub_rows(cfg, checked)
    return checked


def fill_hub_rows(cfg: RunConfig, checked: DataCheck) -> None:
    """Read and check the hub splits of an already checked plan (they are the only ones without rows)."""
    if checked.mixture is not None:
        mixture.fill_hub_rows(cfg, checked)
        return
    hub = [s for s in (checked.train, checked.valid) if s is not None and s.source.hub_id and not s.rows]
    for split in hub:
        _check_rows(cfg, split, checked, read_hub_rows(split.source))
    if hub:
        _select_validation(cfg, checked)
        _check_labels(cfg, checked)
    if checked.problems:
        raise DataFileError("\n".join(str(p) for p in checked.problems))


def _one_source() -> mixture.OneSource:
    return mixture.OneSource(check_data, fill_hub_rows, DataCheck, Split)


# ---- checks

def _check_rows(cfg: RunConfig, split: Split, out: DataCheck, raw_rows: list | None = None) -> None:
    where = split.source.describe()
    if raw_rows is None:
        try:
            raw_rows = read_rows(split.source.file)
        except DataFileError as err:
            out.problems.append(Problem("data.path", str(err)))
            return
    if not raw_rows:
        out.problems.append(Problem("data.path", f"{where}: no rows (an empty dataset): nothing to train on"))
        return
    found = list(dict.fromkeys(k for r in raw_rows for k in r))  # every column, in order of appearance
    rename = formats.rename_map(cfg.data, cfg.trainer.name)
    missing = [src for src in rename if src not in found]
    if missing:
        out.problems.append(Problem("data.column_mapping", _missing_mapped(cfg, where, missing, found)))
        return
    rename.update({k: v for k, v in formats.apply_aliases([rename.get(c, c) for c in found],
                                                          cfg.trainer.name).items() if k not in rename})
    rows = [{rename.get(k, k): v for k, v in r.items()} for r in raw_rows] if rename else raw_rows
    columns = [rename.get(c, c) for c in found]
    fmt = formats.detect(columns, cfg.data, cfg.trainer.name, rows[0])
    if fmt is None:
        out.problems.append(Problem("data.column_mapping", _no_format_message(where, found, cfg)))
        return
    if cfg.trainer.name not in fmt.trainers:
        out.problems.append(_wrong_format(cfg, where, fmt, columns))
        return
    if out.format and out.format != fmt.name:
        out.problems.append(Problem("data.valid_split", f"{where}: {fmt.name} rows, but train is {out.format}"))
    out.format = fmt.name
    if rename.get(formats.SHAREGPT_COLUMN) == "messages":
        _note(out, f"data: {where}: ShareGPT rows: the `conversations` column is read as chat messages (human -> "
                   "user, gpt -> assistant; data.column_mapping.roles maps other speaker names)")
    if "label" in columns and not fmt.unpaired:
        _note(out, f"data: {where}: the {cfg.trainer.name} trainer does not read the column 'label' and trains on "
                   "every row, the undesirable ones too (trainer=kto learns from the labels)")
    errors = []
    for number, row in enumerate(rows, start=1):
        try:
            split.rows.append(formats.normalise(row, fmt, cfg.data.column_mapping.label_column or "label",
                                                cfg.data.column_mapping.roles))
        except formats.RowError as err:
            errors.append(f"{where}: row {number}: {err}")
    _add_row_errors(out, where, errors)
    if not errors:
        _check_template(cfg, fmt, out)
        _check_rendering(cfg, fmt, split, out)


def _add_row_errors(out: DataCheck, where: str, errors: list[str], key: str = "data") -> None:
    for message in errors[:MAX_ROW_ERRORS]:
        out.problems.append(Problem(key, message))
    if len(errors) > MAX_ROW_ERRORS:
        out.problems.append(Problem(key, f"{where}: {len(errors) - MAX_ROW_ERRORS} more rows with problems"))


def _check_template(cfg: RunConfig, fmt: formats.Format, out: DataCheck) -> None:
    if cfg.data.chat_template != "none":
        return
    if fmt.under_none == formats.REFUSED:  # (Alpaca rows under none get the alpaca template: launcher.resolve says so)
        problem = Problem("data.chat_template", "rows are chat messages but chat_template is none: set chatml, "
                          "zephyr, tokenizer (the model's own) or a Jinja file")
        if problem not in out.problems:
            out.problems.append(problem)


def _template_source(cfg: RunConfig, name: str, out: DataCheck) -> Optional[tuple[str, dict]]:
    """The Jinja text of the template rows will be rendered with, and the model's special tokens, when they
    can be read without loading anything; None (with a note or a problem) otherwise."""
    model = cfg.model.name_or_path
    local = bool(model) and Path(model).expanduser().is_dir() and not cfg.model.gguf_file
    special = model_special_tokens(model) if local else {}
    if name != "tokenizer":
        if name not in BUILTIN and not Path(name).expanduser().is_file():
            return None  # validation reports the missing file
        return get_template(name).jinja, special
    if not local:
        _note(out, f"data: the model's own chat template is checked when its tokenizer loads ({model} is not a "
                   "local folder of safetensors)")
        return None
    jinja = model_chat_template(model)
    if jinja is None:
        problem = Problem("data.chat_template", f"'tokenizer' means the model's own chat template, but {model} "
                          "has none: use chatml, zephyr, alpaca or a Jinja file")
        if problem not in out.problems:
            out.problems.append(problem)
        return None
    return jinja, special


def _check_rendering(cfg: RunConfig, fmt: formats.Format, split: Split, out: DataCheck) -> None:
    """Render the first rows' conversations through the template: a row it cannot render, or one in which it
    marks nothing to train, is a problem now rather than an exception in every worker later."""
    name = fmt.template(cfg.data.chat_template)
    if name == "none" or not split.rows or not fmt.conversations(split.rows[0]):
        return  # (plain text goes through no template)
    source = _template_source(cfg, name, out)
    if source is None:
        return
    jinja, special = source
    from jinja2 import TemplateError, TemplateSyntaxError

    where = split.source.describe()
    tools_problem = check_tool_template(jinja, name, split.rows[:RENDER_CHECK_ROWS], where, special)
    if tools_problem is not None:  # it would render the chats without their calls, and train on the results
        out.problems.append(Problem("data.chat_template", tools_problem))
        return
    markers = has_generation_markers(jinja)
    completion_only = cfg.trainer.train_on == "completion" and cfg.trainer.name == "sft"
    errors = []
    for number, row in enumerate(split.rows[:RENDER_CHECK_ROWS], start=1):
        for conversation in fmt.conversations(row):
            try:
                text, spans = (render_if_plain(jinja, conversation, special, row.get("tools"))
                               or render(jinja, conversation, special=special, tools=row.get("tools")))
                if completion_only and not markers and not _prefix_preserving(jinja, conversation, special, text,
                                                                                 row.get("tools")):
                    if name == "tokenizer":
                        _note(out, "data: the model's chat template has no {% generation %} markers and renders "
                                   "earlier turns differently depending on what follows; training uses trl's "
                                   "training variant of it if trl knows it, else stops before loading the model "
                                   "(chatml, zephyr, alpaca or trainer.train_on=all avoid this)")
                        return
                    errors.append(f"{where}: row {number}: the {name} template renders earlier turns differently "
                                  "depending on what follows, so the assistant replies cannot be located: add "
                                  "{% generation %} ... {% endgeneration %} around them, or set trainer.train_on=all")
                elif completion_only and markers and not spans:
                    errors.append(f"{where}: row {number}: the {name} template marks no assistant reply in this "
                                  "conversation, so nothing would be trained")
            except TemplateSyntaxError as err:
                out.problems.append(Problem("data.chat_template", f"{name}: not a valid Jinja template (line "
                                            f"{err.lineno}: {err.message})"))
                return
            except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
                errors.append(f"{where}: row {number}: the {name} template cannot render this conversation "
                              f"({type(err).__name__}: {err})")
        if len(errors) > MAX_ROW_ERRORS:
            break
    _add_row_errors(out, where, errors, key="data.chat_template")
    if completion_only and not markers and not errors:
        _note(out, f"data: the {name} template has no {{% generation %}} markers: the assistant replies to train "
                   "are marked by trl's training variant of it when trl knows the template, else located by "
                   "rendering each conversation up to each reply")


def _prefix_preserving(jinja: str, conversation: list[dict], special: dict, full: str, tools=None) -> bool:
    for i, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = (render(jinja, conversation[:i], add_generation_prompt=True, special=special, tools=tools)[0]
                  if i else "")
        upto = render(jinja, conversation[:i + 1], special=special, tools=tools)[0]
        if not upto.startswith(before) or not full.startswith(upto):
            return False
    return True


def _validation_key_problems(cfg: RunConfig) -> list[Problem]:
    """validation_fraction: a fraction in (0, 0.5] (more would train on less than it validates on), and not
    together with num_validation_samples (two answers to the same question)."""
    d = cfg.data
    if d.validation_fraction is None:
        return []
    problems = []
    if d.num_validation_samples:
        problems.append(Problem("data.num_validation_samples / data.validation_fraction", (
            f"both hold out training rows for validation ({d.num_validation_samples} rows, and "
            f"{d.validation_fraction}): set one, e.g. data.num_validation_samples=0")))
    if not 0 < d.validation_fraction <= 0.5:
        problems.append(Problem("data.validation_fraction", (
            f"must be in (0, 0.5], got {d.validation_fraction}: e.g. 0.05 holds out 5% of the training rows "
            "(null = no held-out rows)")))
    return problems


def _hold_out_fraction(cfg: RunConfig, out: DataCheck) -> None:
    """validation_fraction: rows drawn at random with training.seed, so every run and every process of a run
    holds out the same ones; both parts keep the file's order."""
    fraction, seed = cfg.data.validation_fraction, cfg.training.seed
    if _validation_key_problems(cfg) or out.train is None or out.valid is not None:
        return  # (a problem is reported, or the rows are held out already)
    share = f"{fraction * 100:g}% of {_split_name(out.train.source)}"
    rows = out.train.rows
    if not rows:  # a hub split: read by the worker (or `prepare`)
        if out.train.source.hub_id:
            _note(out, f"data: validation: {share} held out when the rows are read (seed {seed})")
        return
    n = max(1, round(len(rows) * fraction))
    if n >= len(rows):
        out.problems.append(Problem("data.validation_fraction", (
            f"{fraction} of {len(rows)} rows leaves no training rows: give more rows, or set "
            "data.validation_fraction=null")))
        return
    held = set(random.Random(seed).sample(range(len(rows)), n))
    out.valid = Split("held-out", out.train.source, [r for i, r in enumerate(rows) if i in held])
    out.train.rows = [r for i, r in enumerate(rows) if i not in held]
    _note(out, f"data: validation: {share} held out ({n} rows, seed {seed}); training uses the other "
               f"{len(out.train.rows)}")


def _split_name(source: SplitSource) -> str:
    return source.file.name if source.file is not None else source.describe()


def _select_validation(cfg: RunConfig, out: DataCheck) -> None:
    """num_validation_samples: from the TAIL of train when there is no validation split (as the hosted
    fine-tuning APIs do), from the head of the validation split otherwise. validation_fraction: drawn from
    train."""
    if cfg.data.validation_fraction is not None:
        _hold_out_fraction(cfg, out)
        return
    n = cfg.data.num_validation_samples
    if not n or out.train is None or not out.train.rows:
        return
    if out.valid is None:
        if n >= len(out.train.rows):
            out.problems.append(Problem("data.num_validation_samples",
                                        f"{n} leaves no training rows out of {len(out.train.rows)}"))
            return
        out.valid = Split("tail-of-train", out.train.source, out.train.rows[-n:])
        out.train.rows = out.train.rows[:-n]
        _note(out, f"data: the last {n} training rows are held out for validation")
    elif out.valid.rows and len(out.valid.rows) > n and out.valid.name != "tail-of-train":
        out.valid.rows = out.valid.rows[:n]
        _note(out, f"data: validation uses the first {n} rows of {out.valid.name}")


def _check_packing(cfg: RunConfig, out: DataCheck) -> None:
    d = cfg.data
    if not d.packing:  # the packing keys are read only with packing on: noted, never refused
        for key, value in (("wrap_packed_sequences", d.wrap_packed_sequences), ("chunk_size", d.chunk_size)):
            if value:
                _note(out, f"data: {key} is ignored because data.packing is off")
        return
    if d.chunk_size is not None:
        if d.chunk_size < 1:
            out.problems.append(Problem("data.chunk_size", f"must be a positive length, got {d.chunk_size}"))
            return
        if d.chunk_size > cfg.model.max_length:
            out.problems.append(Problem("data.chunk_size / model.max_length", (
                f"chunk_size {d.chunk_size} exceeds model max length {cfg.model.max_length}")))
            return
    # (which trainers read the packing keys is the method table's: validate.unused_keys notes the others; how a
    # trainer packs is stated by launcher.resolve, once the block size is concrete)


def _check_labels(cfg: RunConfig, out: DataCheck) -> None:
    """Unpaired (kto) rows: the training rows hold both classes; their balance is noted, with the class weights
    that fit it when the configured ones do not (the KTO paper's rule, which trl also warns about)."""
    fmt = formats.BY_NAME.get(out.format or "")
    if fmt is None or not fmt.unpaired or out.train is None or not out.train.rows or out.problems:
        return  # (rows with problems were left out: count the classes once the data is read whole)
    column = cfg.data.column_mapping.label_column or "label"
    desirable, undesirable = formats.label_counts(out.train.rows)
    if not desirable or not undesirable:
        have, need = ("true (desirable)", "false/0 (undesirable)") if desirable else (
            "false (undesirable)", "true/1 (desirable)")
        out.problems.append(Problem("data", (
            f"{out.train.source.describe()}: every training row is labelled {have} in column '{column}': kto "
            f"learns from the contrast, so it needs {need} completions too; add some (for desirable rows alone, "
            "train with trainer=sft)")))
        return
    t = cfg.trainer
    note = (f"data: kto labels ('{column}'): {desirable} desirable, {undesirable} undesirable training rows "
            f"({100 * desirable / (desirable + undesirable):.0f}% desirable)")
    ratio = t.desirable_weight * desirable / (t.undesirable_weight * undesirable)
    if not 1 <= ratio <= 4 / 3:
        base_u = t.desirable_weight * desirable / undesirable
        base_d = t.undesirable_weight * undesirable / desirable
        note += (f"; desirable_weight x desirable / (undesirable_weight x undesirable) is {ratio:.2f}, the KTO "
                 f"paper keeps it in [1, 1.33]: set trainer.undesirable_weight in {_inside(base_u * 3 / 4, base_u)} "
                 f"or trainer.desirable_weight in {_inside(base_d, base_d * 4 / 3)}")
    _note(out, note)


def _note(out: DataCheck, note: str) -> None:
    if note not in out.notes:
        out.notes.append(note)


# ---- messages

def _not_found(path: str, split: str) -> str:
    p = Path(path).expanduser()
    if p.is_dir():
        present = sorted(x.name for x in p.iterdir() if x.is_file())
        return (f"no {split}.jsonl, {split}.csv or {split}.parquet in {p} (it holds: "
                f"{', '.join(present) or 'nothing'})")
    return f"{path} does not exist (give a folder of <split>.jsonl|.csv|.parquet, a file, or a hub dataset id)"


def _validation_is_training(d, source: SplitSource) -> str:
    if Path(d.path).expanduser().is_file():
        what = (f"{d.path} is a single file, so valid_split '{d.valid_split}' would read the same rows as "
                "train_split")
    else:
        what = f"valid_split '{d.valid_split}' resolves to {source.describe()}, the training split itself"
    return (f"{what}: validating on the training rows measures nothing. Give a folder holding one file per "
            "split (<split>.jsonl|.csv|.parquet, e.g. train.jsonl and valid.jsonl), set data.valid_split=null (no "
            "validation), or hold out part of the training rows: data.validation_fraction=0.05")


def _mistyped_path(path: str) -> Optional[Problem]:
    """A data.path that is neither a local file or folder nor a hub id (`org/name`) is a typo, not a hub
    dataset: refused with the nearest local paths. An `org/name` that is not local stays a hub id (plan assumes
    no network), unless correcting its spelling gives a local path, which is then far likelier meant."""
    if Path(path).expanduser().exists():
        return None
    if looks_like_hub_id(path):
        respelled = respelled_local_path(path)
        if respelled is None:
            return None
        return Problem("data.path", (f"{path} is not a local folder or file. Did you mean {respelled}? (As it "
                                     f"stands it would be read as the hub dataset id {path}.)"))
    near = nearest_local_paths(path)
    hint = f" Did you mean {' or '.join(near)}?" if near else " Nothing local is named like it."
    return Problem("data.path", (
        f"{path} is not a local folder or file.{hint} A name is taken as a hub dataset id only in the form "
        "org/name (e.g. HuggingFaceH4/no_robots); otherwise give a folder of <split>.jsonl|.csv|.parquet or "
        "one data file"))


def _missing_mapped(cfg: RunConfig, where: str, missing: list[str], found: list[str]) -> str:
    cols = cfg.data.column_mapping
    keys = {cols.text_column: "text_column", cols.rejected_text_column: "rejected_text_column",
            cols.prompt_text_column: "prompt_text_column", cols.label_column: "label_column"}
    named = ", ".join(f"data.column_mapping.{keys.get(m, 'text_column')}={m}" for m in missing)
    return (f"{where}: {named} names a column the file does not have; its columns are: {', '.join(found)}. "
            f"Map one of those instead, e.g. data.column_mapping.{keys.get(missing[0], 'text_column')}="
            f"{_text_like(found)[0] if _text_like(found) else '<column>'}")


def _inside(low: float, high: float) -> str:
    """[low, high] rounded inwards to two decimals, so any value printed fits."""
    return f"[{math.ceil(low * 100) / 100:.2f}, {math.floor(high * 100) / 100:.2f}]"


def _wrong_format(cfg: RunConfig, where: str, fmt, columns: list[str]) -> Problem:
    trainer = cfg.trainer.name
    takes = METHODS[trainer].formats
    if any(formats.BY_NAME[n].unpaired for n in takes) and "label" not in columns:
        pairs = ("; for chosen/rejected pairs use a pair trainer (dpo), or make each pair two rows, its chosen "
                 "answer labelled true and its rejected one false") if "rejected" in fmt.columns else ""
        return Problem("data.column_mapping.label_column", (
            f"{where}: rows are {fmt.name} ({', '.join(fmt.columns)}) with no label column: the {trainer} trainer "
            "needs each completion labelled true/1 (desirable) or false/0 (undesirable) in a column `label`; add "
            f"one, or name yours with data.column_mapping.label_column=<column>{pairs}"))
    readers = f" (read by trainer={', '.join(fmt.trainers)})" if fmt.trainers else ""
    online = ("; for prompts to sample from, give a `prompt` column (other columns go to the reward functions) "
              "without chosen/rejected or label columns") if METHODS[trainer].online else ""
    return Problem("data.format", (f"{where}: rows are {fmt.name} ({', '.join(fmt.columns)}){readers}, which the "
                                   f"{trainer} trainer cannot use; it takes {', '.join(takes)}{online}"))


def _text_like(found: list[str]) -> list[str]:
    return [c for c in found if c not in ("id", "index", "idx", "source", "category")]


def _no_format_message(where, found: list[str], cfg: RunConfig) -> str:
    trainer = cfg.trainer.name
    method = METHODS[trainer]
    needs = method.needs
    cols = _text_like(found) or ["<column>"]
    first, second, third = (cols + ["<column>"] * 3)[:3]
    takes = [formats.BY_NAME[n] for n in method.formats]
    if method.pairs and any("prompt" in f.columns for f in takes):  # (pairs with a prompt column)
        fix = (f"data.column_mapping.prompt_text_column={first} data.column_mapping.text_column={second} "
               f"data.column_mapping.rejected_text_column={third}")
    elif any(f.unpaired for f in takes):
        fix = (f"data.column_mapping.prompt_text_column={first} data.column_mapping.text_column={second} "
               f"data.column_mapping.label_column={third}")
    elif method.pairs:
        fix = f"data.column_mapping.text_column={first} data.column_mapping.rejected_text_column={second}"
    elif trainer == "sft" and len(cols) >= 2:
        fix = (f"data.column_mapping.text_column={first} (one text column), or data.column_mapping.prompt_text_"
               f"column={first} data.column_mapping.text_column={second} (prompt and completion)")
    else:
        fix = f"data.column_mapping.text_column={first}"
    return (f"{where}: no column layout the {trainer} trainer understands; it needs {needs}, the file "
            f"has: {', '.join(found)}. Map yours, e.g. {fix}")
