"""Several sources mixed into one training set (data.datasets, data.mixture, data.stopping_strategy).

Each source is checked exactly as a one-source `data.path` is (`launcher.data.load.check_data` on a copy of the
run's config holding that source's path, splits, column_mapping and format), so the messages are the same, only
prefixed with the source (`data.datasets[1] (alpaca): <file>: ...`) and keyed `data.datasets[1].column_mapping`
etc. The chat template, lengths, packing and hold-out rules are the run's (data.*), applied to every source.

Formats: sources of one format mix as they are. Different formats mix only where the trainer reads each and
they become one kind of sample (each format's `mixes_as`, launcher.data.formats): for sft and default under a chat
template, messages, alpaca and prompt_completion rows all become chat conversations (`messages`, through the format's
`sft_sample`, as the sft encoder would convert them); for kto, unpaired and unpaired_messages rows both become
prompt/completion/label conversations. Anything else is refused
naming the two sources, their formats and why. The mixed split then carries one format, so the trainers take it
as they take one source.

Training rows:
- concat: every row of every source once, in the sources' order (the trainer shuffles); the weights are not
  used (noted when they differ).
- interleave: `datasets.interleave_datasets` draws each row from a source with probability its normalised
  weight, seeded with training.seed; stopping_strategy first_exhausted stops when a source runs out (no row
  repeated), all_exhausted when every source has been seen whole (rows of the others are repeated).
  (It draws over (source, row) index pairs rather than the rows, so the rows reach the trainer exactly as
  checked: an arrow table would add every key any message has to every message, as None.)
Validation rows are never weighted: each source's own valid_split, or what the run's hold-out rules
(data.validation_fraction, data.num_validation_samples) take from each source's training rows, concatenated.
Which source each mixed row came from is kept in a list beside the rows (`Split.origins`), not in a column: the
trainers would see a column.
With data.streaming the sources are checked by their first rows and mixed as training reads them
(launcher.data.streaming); `convert` is the one conversion both use.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from typing import Callable

from launcher.config.errors import Problem
from launcher.config.schema import DataConfig, DataSource, RunConfig
from launcher.data import formats
from launcher.data.files import SplitSource

# The keys each source has its own value of: the run's (data.*) are not read when data.datasets is set.
SOURCE_KEYS = ("path", "train_split", "valid_split", "column_mapping", "format")
# The trainers that read the chat formats (formats.Format.chat) as conversations under a chat template (the
# default trainer renders each conversation to text for its token stream).
CHAT_READERS = ("sft", "default")
_SOURCE_KEY = re.compile(r"\bdata\.(path|train_split|valid_split|column_mapping|format)\b")


@dataclass(frozen=True)
class OneSource:
    """What launcher.data.load lends the mixture: its one-source check and the types it returns. (load sends
    data.datasets here, so this module cannot import load back: the package's imports stay acyclic.)"""
    check: Callable
    """cfg -> DataCheck of data.path (load.check_data without data.datasets)."""
    fill_hub_rows: Callable
    """(cfg, DataCheck) -> None: read a checked source's hub rows."""
    data_check: type
    split: type


@dataclass(frozen=True)
class MixedSource(SplitSource):
    """Where the rows of a mixed split come from, as messages name it."""
    label: str = "data.datasets"

    def describe(self) -> str:
        return self.label


@dataclass
class Source:
    index: int
    label: str
    """`data.datasets[i] (name or path)`, the prefix of its messages."""
    weight: float
    check: object
    """Its own one-source DataCheck (train and valid splits, format, notes)."""
    rows: list = field(default_factory=list)
    """Its training rows in the mixture's format."""
    valid_rows: list = field(default_factory=list)


@dataclass
class Mixture:
    sources: list
    strategy: str
    stopping_strategy: str
    format: str
    one: OneSource
    picks: list = field(default_factory=list)
    """(source index, row index in that source's training rows) of each mixed training row, in order."""

    def shares(self) -> list[float]:
        """The weights normalised to sum to 1."""
        total = sum(s.weight for s in self.sources)
        return [s.weight / total for s in self.sources]

    def picked_rows(self) -> list[int]:
        """Training rows each source gives the mixture."""
        counts = [0] * len(self.sources)
        for k, _ in self.picks:
            counts[k] += 1
        return counts


def source_label(i: int, src: DataSource) -> str:
    return f"data.datasets[{i}] ({src.name or src.path})"


def describe(cfg: RunConfig) -> str:
    """The data of a run in one phrase: data.path, or the mixture's sources with their weights."""
    d = cfg.data
    if not d.datasets:
        return d.path
    parts = ", ".join(f"{s.name or s.path} {s.weight:g}" for s in d.datasets)
    return f"mixture ({d.mixture}) of {len(d.datasets)} sources: {parts}"


def source_config(cfg: RunConfig, src: DataSource) -> RunConfig:
    """The run's config as a one-source run of `src`: its own path, splits, columns and format; the rest the run's."""
    one = copy.deepcopy(cfg)
    one.data.datasets = []
    for key in SOURCE_KEYS:
        setattr(one.data, key, copy.deepcopy(getattr(src, key)))
    return one


def check_mixture(cfg: RunConfig, one: OneSource):
    """Check every source as a one-source run, then mix their training rows (see the module docstring)."""
    out = one.data_check()
    out.problems += _conflicting_keys(cfg) + _weight_problems(cfg)
    sources = []
    for i, src in enumerate(cfg.data.datasets):
        label = source_label(i, src)
        if not src.path:  # (an empty path would read the working folder)
            out.problems.append(Problem(f"data.datasets[{i}].path", (
                f"data.datasets[{i}] has no path: give each source a folder of <split>.jsonl|.csv|.parquet, a data "
                "file, or a hub dataset id (org/name)")))
            continue
        check = one.check(source_config(cfg, src))
        _carry(check, i, label, src, out)
        sources.append(Source(i, label, src.weight, check))
    if out.problems:
        return out
    if any(_unread(s) for s in sources):  # (a hub source's format is known once its rows are read)
        out.mixture = Mixture(sources, cfg.data.mixture, cfg.data.stopping_strategy, "", one)
        out.notes.append("data: the formats of the sources are matched and the mixture is drawn when the worker "
                         "(or `tunelaunch prepare`) has read the hub sources' rows")
        return out
    fmt = _common_format(cfg, sources, out)
    if fmt is None:
        return out
    out.format = fmt
    out.mixture = Mixture(sources, cfg.data.mixture, cfg.data.stopping_strategy, fmt, one)
    mix(cfg, out)
    return out


def _unread(s: Source) -> bool:
    """A hub source whose rows the worker (or `prepare`) reads: plan assumes no network."""
    return s.check.train is not None and bool(s.check.train.source.hub_id) and not s.check.train.rows


def fill_hub_rows(cfg: RunConfig, checked) -> None:
    """Read the hub sources of a checked mixture (`load.fill_hub_rows` on each), then mix."""
    from launcher.data.files import DataFileError

    mixture = checked.mixture
    pending = [s for s in mixture.sources if _unread(s)]
    if not pending:
        return
    for s in pending:
        try:
            mixture.one.fill_hub_rows(source_config(cfg, cfg.data.datasets[s.index]), s.check)
        except DataFileError as err:
            raise DataFileError(_prefixed(str(err), s.index, s.label)) from None
    fmt = _common_format(cfg, mixture.sources, checked)
    if fmt is None:
        raise DataFileError("\n".join(str(p) for p in checked.problems))
    mixture.format = checked.format = fmt
    mix(cfg, checked)


def mix(cfg: RunConfig, out) -> None:
    """Convert each source's rows to the mixture's format and draw the training split (and the unweighted
    validation split) into `out`."""
    m = out.mixture
    Split = m.one.split
    for s in m.sources:
        fmt = s.check.format
        s.rows = [convert(r, fmt, m.format) for r in s.check.train.rows]
        s.valid_rows = [convert(r, fmt, m.format) for r in s.check.valid.rows] if s.check.valid else []
    sizes = [len(s.rows) for s in m.sources]
    if m.strategy == "interleave":
        m.picks = _interleave(sizes, m.shares(), cfg.training.seed, m.stopping_strategy)
    else:
        m.picks = [(k, r) for k, n in enumerate(sizes) for r in range(n)]
        if len({s.weight for s in m.sources}) > 1:
            out.notes.append("data: mixture=concat takes every row of every source once, so the weights are not "
                             "used; data.mixture=interleave draws rows by them")
    label = f"data.datasets ({len(m.sources)} sources, {m.strategy})"
    out.train = Split("mixture", MixedSource(label=label), [m.sources[k].rows[r] for k, r in m.picks],
                      origins=[k for k, _ in m.picks])
    if any(s.valid_rows for s in m.sources):
        out.valid = Split("mixture-valid", MixedSource(label=f"{label}: validation"),
                          [row for s in m.sources for row in s.valid_rows],
                          origins=[s.index for s in m.sources for _ in s.valid_rows])
    head, *per_source = summary_lines(m)
    streamed = (" (drawn from the first rows of each source, the ones checked; training draws the same way from "
                "the whole streams)") if cfg.data.streaming else ""
    out.notes.append(f"data: {head}: " + "; ".join(per_source) + streamed)


def summary_lines(m: Mixture) -> list[str]:
    """Per source: rows before and after weighting and the realised share, against the weight."""
    picked, total = m.picked_rows(), max(1, len(m.picks))
    head = (f"mixture ({m.strategy}" + (f", {m.stopping_strategy}" if m.strategy == "interleave" else "")
            + f") of {len(m.sources)} sources as {m.format} rows, {len(m.picks)} training rows")
    return [head] + [f"{s.label} {s.check.format}: {len(s.rows)} rows -> {n} ({100 * n / total:.1f}%, weight "
                     f"{100 * share:.1f}%)" for s, n, share in zip(m.sources, picked, m.shares())]


def _interleave(sizes: list[int], shares: list[float], seed: int, stopping: str) -> list[tuple[int, int]]:
    # (datasets is imported here, not at module level: a plan without an interleaved mixture imports none of
    # the training stack; an interleaved one pays its ~1 s import to state the mixture it will train on)
    from datasets import Dataset, interleave_datasets

    parts = [Dataset.from_dict({"source": [k] * n, "row": list(range(n))}) for k, n in enumerate(sizes)]
    mixed = interleave_datasets(parts, probabilities=shares, seed=seed, stopping_strategy=stopping)
    return list(zip(mixed["source"], mixed["row"]))


def convert(row: dict, fmt: str, target: str) -> dict:
    """A checked row of format `fmt` in the mixture's format `target`."""
    source = formats.BY_NAME[fmt]
    if fmt == target or not source.chat:
        return row  # (unpaired rows stay as they are: the kto trainer's trl_row makes string prompts user turns)
    return source.sft_sample(row, chat=True)  # (chat formats mix under a chat template: _common_format says so)


def _common_format(cfg: RunConfig, sources: list, out):
    """The one format the mixed rows take, or None with a problem naming two sources that cannot mix."""
    kinds = list(dict.fromkeys(s.check.format for s in sources))
    if len(kinds) == 1:
        return kinds[0]
    trainer, chat = cfg.trainer.name, cfg.data.chat_template != "none"
    rows = [formats.BY_NAME[k] for k in kinds]
    common = {f.mixes_as for f in rows}
    # (chat rows become conversations only where a chat template renders them and the trainer reads them so;
    # unpaired rows mix for the one trainer that reads them)
    if len(common) == 1 and None not in common and (not rows[0].chat or (trainer in CHAT_READERS and chat)):
        return common.pop()
    a = sources[0]
    b = next(s for s in sources if s.check.format != a.check.format)
    if trainer in CHAT_READERS and all(f.chat for f in rows):
        why = (f"without a chat template the {trainer} trainer reads them as different samples (alpaca under the alpaca "
               "template, prompt_completion as plain text): set data.chat_template=chatml (or zephyr, tokenizer, "
               "a Jinja file), under which messages, alpaca and prompt_completion all become chat conversations")
    elif trainer in CHAT_READERS:
        why = (f"the {trainer} trainer mixes only messages, alpaca and prompt_completion sources (as chat conversations, "
               "under a chat template); text rows train on every token as written: convert one source, or train "
               "them one after the other")
    else:
        why = (f"the {trainer} trainer reads one format per run (only sft and default, under a chat template, mix "
               "messages, alpaca and prompt_completion, and kto mixes unpaired with unpaired_messages): convert one "
               "source")
    out.problems.append(Problem(f"data.datasets[{a.index}] / data.datasets[{b.index}]", (
        f"{a.label} is {a.check.format} rows and {b.label} is {b.check.format} rows: {why}")))
    return None


def _carry(check, i: int, label: str, src: DataSource, out) -> None:
    """The source's problems and notes into the mixture's check: its own keys renamed to data.datasets[i].*, its
    messages prefixed with the source; the run-wide ones (template, lengths) once."""
    files = [str(s.source.describe()) for s in (check.train, check.valid) if s is not None]
    for p in check.problems:
        own = bool(_SOURCE_KEY.search(p.key)) or p.key == "data" or any(f in p.message for f in files) or (
            src.path and src.path in p.message)
        problem = Problem(_SOURCE_KEY.sub(rf"data.datasets[{i}].\1", p.key) if p.key != "data" else
                          f"data.datasets[{i}]", _prefixed(p.message, i, label)) if own else p
        if problem not in out.problems:
            out.problems.append(problem)
    names = [s.source.file.name for s in (check.train, check.valid) if s is not None and s.source.file is not None]
    for note in check.notes:
        own = any(f in note for f in files + names)
        note = note.replace("data: ", f"data: {label}: ", 1) if own else note
        if note not in out.notes:
            out.notes.append(note)


def _prefixed(message: str, i: int, label: str) -> str:
    return f"{label}: " + _SOURCE_KEY.sub(rf"data.datasets[{i}].\1", message)


def _conflicting_keys(cfg: RunConfig) -> list[Problem]:
    """data.datasets together with a data.path, split, column_mapping or format of its own: two answers to where
    the rows come from (or how they are read)."""
    default = DataConfig()
    return [Problem(f"data.datasets / data.{key}", (
        f"data.datasets lists the sources, each with its own {key}, so data.{key}={_shown(getattr(cfg.data, key))} "
        f"would not be read: remove data.{key}, or set it on the source it belongs to (data.datasets[i].{key})"))
        for key in SOURCE_KEYS if getattr(cfg.data, key) != getattr(default, key)]


def _shown(value) -> str:
    if hasattr(value, "__dataclass_fields__"):
        default = type(value)()
        return "{" + ", ".join(f"{f.name}: {getattr(value, f.name)}" for f in fields(value)
                               if getattr(value, f.name) != getattr(default, f.name)) + "}"
    return str(value)


def _weight_problems(cfg: RunConfig) -> list[Problem]:
    import math

    return [Problem(f"data.datasets[{i}].weight", (
        f"{source_label(i, s)}: weight must be a positive number, got {s.weight}: weights are relative shares "
        "(e.g. 0.5, 0.3, 0.2, or 5, 3, 2)")) for i, s in enumerate(cfg.data.datasets)
        if not (isinstance(s.weight, (int, float)) and math.isfinite(s.weight) and s.weight > 0)]
