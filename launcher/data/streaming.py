"""Training data read as it trains (data.streaming=true): for corpora too large to prepare up front.

The training split is opened with datasets' `load_dataset(..., streaming=True)` (a local `.jsonl`/`.csv`/
`.parquet` file, or a hub id), dealt across processes and nodes before anything is tokenised (no row is
trained by two): each process streams its own shards (`split_dataset_by_node`) when the source has a multiple of
the processes' count of them (files), else takes every world-th row (one file), and each row is checked and
normalised (`formats.normalise`, as for data
read whole), tokenised and cut or packed by one batched `map`. A mixture (data.datasets) streams every source
so, each row converted to the mixture's format as data read whole is mixed (launcher.data.mixture), and each
process draws from its shares of the sources by weight (`datasets.interleave_datasets`, whose random state is
part of the stream's) or takes them one after the other (concat):

- default: the texts of a group of data.packing_buffer rows are concatenated (eos after each with
  data.add_eos_token) and cut into blocks of data.block_size; the tail of each group that fills no block is
  dropped (data read whole drops only the tail of the split).
- sft: each row is encoded by `SFTEncoder` (the same masks as data read whole), cut to the sample limit; with
  data.packing the samples of a group of data.packing_buffer rows are packed best-fit by trl's `pack_dataset`,
  as data read whole is packed (over the whole split there).

Each process's rows are read in file order, or with data.shuffle_window shuffled within consecutive windows of
that many rows (`ShuffleWindow`); the stream starts again from its first row when it runs out; training.max_steps
ends training, and is the Trainer's one "epoch" (an epoch save or evaluation strategy acts at the end).

Exact resume: every checkpoint holds `stream_state_rank<R>.json`, datasets' `IterableDataset.state_dict()` of
that process's stream at the step saved (its pass, the row reached, and the position inside the group being
cut or packed); a resume loads it and continues from there, instead of letting the Trainer re-read and discard
the batches already trained (accelerate's `skip_first_batches`, which re-tokenises the whole trained prefix).
datasets re-reads the raw rows of the current file up to the position (without tokenising them).

Validation: the validation split is not streamed: its first rows (data.num_validation_samples, or VALID_ROWS
when that is 0) are read once, checked like the data read whole, and evaluated as usual. Rows held out of the
training split (data.validation_fraction, or num_validation_samples without a valid_split) need the whole split
and are refused.
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Optional

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.data import formats, load, mixture
from launcher.data.files import DataFileError, SplitSource, locate

log = logging.getLogger(__name__)

VALID_ROWS = 1000
"""Validation rows read (from the head of data.valid_split) when data.num_validation_samples is 0."""
TOKENISE_BATCH = 64
"""Rows per tokenizer call when nothing is packed (the output does not depend on it)."""
STATE_FILE = "stream_state_rank{rank}.json"
ROW = "__tunelaunch_row"
"""The column that carries each row's place in this process's share through the shuffle (for error messages)."""
SAMPLE, WHERE = "__tunelaunch_sample", "__tunelaunch_where"
"""A streamed mixture's columns: each canonical row as JSON, and where it came from (source, file, row)."""
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


# ---- preflight

def check_stream(cfg: RunConfig, read_hub: bool = False) -> load.DataCheck:
    """The preflight of a streamed run: the first load.RENDER_CHECK_ROWS rows of the training split and the
    validation rows that will be used, checked with the same checks and messages as data read whole; the rest of
    the training split is never read here. `train.rows` then holds only those first rows (a sample for the
    checks, not the training data). A hub split is read only with read_hub (the worker: plan assumes no
    network)."""
    if cfg.data.datasets:
        # each source's head checked as one streamed source is, then mixed as data read whole is mixed (the
        # mixture's shares and samples in plan and prepare are those of the heads)
        return mixture.check_mixture(cfg, mixture.OneSource(
            check=lambda one: check_stream(one, read_hub), fill_hub_rows=lambda one, check: None,
            data_check=load.DataCheck, split=load.Split))
    out = load.DataCheck()
    d = cfg.data
    out.problems += streaming_problems(cfg)
    mistyped = load._mistyped_path(d.path)
    if mistyped is not None:
        out.problems.append(mistyped)
        return out
    splits = [(d.train_split, "data.train_split", load.RENDER_CHECK_ROWS)]
    if d.valid_split is not None:
        splits.append((d.valid_split, "data.valid_split", d.num_validation_samples or VALID_ROWS))
    for split_name, key, head in splits:
        source = locate(d.path, split_name)
        if source is None:
            out.problems.append(Problem(f"data.path / {key}", load._not_found(d.path, split_name)))
            continue
        if key == "data.valid_split" and load._same_rows(out.train, source):
            out.problems.append(Problem("data.path / data.valid_split", load._validation_is_training(d, source)))
            continue
        split = load.Split(split_name, source)
        if source.file is None and not read_hub:
            out.notes.append(f"data: hub dataset {source.describe()}: streamed; its first rows are checked when "
                             "the worker opens the stream (plan assumes no network)")
        else:
            try:
                raw = head_rows(source, head)
            except DataFileError as err:
                out.problems.append(Problem("data.path", str(err)))
                continue
            load._check_rows(cfg, split, out, raw)
        if key == "data.train_split":
            out.train = split
        else:
            out.valid = split
    if out.train is not None and out.train.source.file is not None and not out.problems:
        out.notes.append(f"data: streaming {out.train.source.describe()}: its first {len(out.train.rows)} rows "
                         "are checked now, the others as training reads them")
    return out


def streaming_problems(cfg: RunConfig) -> list[Problem]:
    """What streaming cannot do with the data keys (the method, max_steps and mixture rules are the plan's:
    launcher.resolve)."""
    d = cfg.data
    problems = []
    if d.validation_fraction is not None:
        problems.append(Problem("data.validation_fraction", (
            "holding out a fraction of the training rows needs the whole split, which data.streaming never "
            "reads: give a validation file with data.valid_split=<split> (its first rows are used), or set "
            "data.validation_fraction=null")))
    elif d.num_validation_samples and d.valid_split is None:
        problems.append(Problem("data.num_validation_samples", (
            "holds out the last rows of the training split, which data.streaming never reaches: give a "
            "validation file with data.valid_split=<split> (its first data.num_validation_samples rows are "
            "used), or set data.num_validation_samples=0")))
    return problems


def head_rows(source: SplitSource, n: int) -> list[dict]:
    """The first n raw rows of a split, reading no further than them."""
    if source.file is None:
        return list(itertools.islice(iter(open_rows(source)), n))
    file = source.file
    if file.suffix not in BUILDERS:
        raise DataFileError(f"{file}: unsupported file type {file.suffix!r}; use one of {', '.join(BUILDERS)}")
    if file.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batch = next(pq.ParquetFile(file).iter_batches(batch_size=n), None)
        except (pa.ArrowException, OSError) as err:
            raise DataFileError(f"{file}: not a readable parquet file ({err})") from None
        return batch.to_pylist() if batch is not None else []
    with file.open(newline="", encoding="utf-8") as fh:
        if file.suffix == ".csv":
            try:
                return list(itertools.islice(csv.DictReader(fh), n))
            except csv.Error as err:
                raise DataFileError(f"{file}: not valid CSV ({err})") from None
        return _head_jsonl(fh, file, n)


def _head_jsonl(fh, file: Path, n: int) -> list[dict]:
    rows = []
    for number, line in enumerate(fh, start=1):
        if len(rows) == n:
            break
        if not line.strip():
            continue
        if number == 1 and file.suffix == ".json" and line.lstrip().startswith("["):
            raise DataFileError(f"{file}: a JSON array, which is read whole: data.streaming reads JSON Lines (one "
                                "object per line); convert it, or set data.streaming=false")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{file}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(value, dict):
            # datasets' JSON reader (which streams the file) takes objects only (FACTS: bare message lists fail)
            raise DataFileError(f"{file}:{number}: expected a JSON object per line, got {type(value).__name__}: "
                                "data.streaming reads lines like {\"messages\": [...]}; wrap each line so, or set "
                                "data.streaming=false")
        rows.append(value)
    return rows


# ---- the stream

def open_rows(source: SplitSource):
    """The raw rows of a split as a datasets.IterableDataset (nothing is read until it is iterated)."""
    import datasets

    if source.file is not None:
        # CSV cells are text, as the rows read whole are (csv.DictReader): pandas would make "42" an int and an
        # empty cell NaN
        as_text = {"features": _text_columns(source.file), "na_filter": False} if source.file.suffix == ".csv" else {}
        return datasets.load_dataset(BUILDERS[source.file.suffix], data_files=str(source.file), split="train",
                                     streaming=True, **as_text)
    return datasets.load_dataset(source.hub_id, source.hub_config, split=source.split, streaming=True,
                                 token=os.environ.get("HF_TOKEN"))


def _text_columns(file: Path):
    """Every column of a CSV file's header as text (datasets.Features)."""
    from datasets import Features, Value

    with file.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return Features({name: Value("string") for name in header})


class RowReader:
    """Raw rows of one split -> canonical rows: the columns renamed and the format detected as for data read
    whole (from the first rows), then `formats.normalise`; a row it refuses is an error naming file and row."""

    def __init__(self, cfg: RunConfig, source: SplitSource, first_rows: list[dict]):
        found = list(dict.fromkeys(k for r in first_rows for k in r))
        rename = formats.rename_map(cfg.data, cfg.trainer.name)
        rename.update({k: v for k, v in formats.apply_aliases([rename.get(c, c) for c in found],
                                                              cfg.trainer.name).items() if k not in rename})
        self.rename, self.columns = rename, found
        renamed = [{rename.get(k, k): v for k, v in first_rows[0].items()}]
        self.format = formats.detect([rename.get(c, c) for c in found], cfg.data, cfg.trainer.name, renamed[0])
        self.where = source.describe()
        self.label = cfg.data.column_mapping.label_column or "label"
        self.roles = cfg.data.column_mapping.roles

    def __call__(self, raw: dict, number: str) -> dict:
        try:
            return formats.normalise({self.rename.get(k, k): v for k, v in raw.items()}, self.format, self.label,
                                     self.roles)
        except formats.RowError as err:
            raise DataFileError(f"{self.where}: row {number}: {err} (streamed rows are checked as training reads "
                                "them: fix or drop the row, and resume)") from None


def _raw_rows(batch: dict) -> list[dict]:
    """A batch of columns (datasets' batched map) as rows."""
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


class Tokenise:
    """The batched map of a stream: a group of raw rows -> training sequences (see the module docstring)."""

    def __init__(self, cfg: RunConfig, tokenizer, reader: Optional[RowReader], rank: int, world: int,
                 row_level: bool, cut_blocks=None, fmt: Optional[str] = None):
        self.cfg, self.tokenizer, self.reader, self.cut_blocks = cfg, tokenizer, reader, cut_blocks
        self.rank, self.world, self.row_level = rank, world, row_level
        self.format = formats.BY_NAME[fmt] if fmt else reader.format
        self.encoder = None
        if cfg.trainer.name == "sft":
            from launcher.data.encode import SFTEncoder

            self.encoder = SFTEncoder.for_run(cfg, tokenizer, self.format.name)  # (as data read whole is encoded)

    def row_number(self, index: int) -> str:
        return row_number(index, self.rank, self.world, self.row_level)

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        if SAMPLE in batch:  # a mixture's rows, read and converted by each source's MixedRows
            rows = [json.loads(x) for x in batch[SAMPLE]]
            where = batch[WHERE]
        else:
            if ROW in batch:  # shuffled: each row's own place in the share
                batch = dict(batch)
                indices = batch.pop(ROW)
            rows = [self.reader(raw, self.row_number(i)) for raw, i in zip(_raw_rows(batch), indices)]
            where = [f"{self.reader.where}: row {self.row_number(i)}" for i in indices]
        if self.encoder is None:
            blocks, _ = self.cut_blocks(self.cfg, self.tokenizer, rows, self.format.name)
            return {"input_ids": blocks, "labels": [list(b) for b in blocks]}
        return self._sft(rows, where)

    def _sft(self, rows: list[dict], where: list[str]) -> dict:
        from launcher.data.encode import IGNORE, EncodeError
        from launcher.data.processed import sample_limit

        limit = sample_limit(self.cfg)
        columns = {"input_ids": [], "labels": []}
        try:
            encoded = self.encoder.many(rows)
        except EncodeError:
            for row, at in zip(rows, where):  # the row the error is about
                try:
                    self.encoder(row)
                except EncodeError as err:
                    raise EncodeError(f"{at}: {err}") from None
            raise
        for enc in encoded:
            ids, labels = enc.input_ids[:limit], enc.labels[:limit]
            if len(labels) - 1 - labels[1:].count(IGNORE) <= 0:
                continue  # nothing left to train after truncation (as data read whole drops it)
            columns["input_ids"].append(ids)
            columns["labels"].append(labels)
        if not self.cfg.data.packing or not columns["input_ids"]:
            return columns
        from datasets import Dataset
        from trl.data_utils import pack_dataset

        from launcher.data.processed import _quiet_datasets

        # trl's best-fit packing, as data read whole is packed, over this group of samples (no progress bar for
        # each group)
        with _quiet_datasets():
            return pack_dataset(Dataset.from_dict(columns), self.cfg.data.chunk_size, "bfd").to_dict()


def row_number(index: int, rank: int, world: int, row_level: bool) -> str:
    """A row's number in its file when the processes share it row by row, else its place in this process's share
    (a split by whole files/shards)."""
    if world == 1 or row_level:
        return str(index * world + rank + 1)
    return f"{index + 1} of those process {rank} reads"


class MixedRows:
    """The batched map that reads one source of a streamed mixture: its raw rows -> canonical rows in the
    mixture's format (launcher.data.mixture's conversion), each as JSON in the SAMPLE column with where it came
    from in WHERE. JSON, not columns: the sources' rows differ in keys, and the mixed stream's Arrow-free rows
    reach the tokeniser exactly as checked."""

    def __init__(self, reader: RowReader, label: str, fmt: str, target: str, rank: int, world: int,
                 row_level: bool):
        self.reader, self.label, self.fmt, self.target = reader, label, fmt, target
        self.rank, self.world, self.row_level = rank, world, row_level

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        out = {SAMPLE: [], WHERE: []}
        for raw, i in zip(_raw_rows(batch), indices):
            number = row_number(i, self.rank, self.world, self.row_level)
            try:
                row = self.reader(raw, number)
            except DataFileError as err:
                raise DataFileError(f"{self.label}: {err}") from None
            out[SAMPLE].append(json.dumps(mixture.convert(row, self.fmt, self.target)))
            out[WHERE].append(f"{self.label}: {self.reader.where}: row {number}")
        return out


class ShuffleWindow:
    """The batched map that shuffles each window of rows (a batch of `size`), by a permutation seeded with the
    seed, the process's rank and the window's place in the stream (its first row's index). datasets' shuffle
    buffer cannot be resumed exactly (its state does not hold the buffer's rows); a window can: the stream's state
    inside this map is the position of the window's first row and the rows of it already given, so a resume
    re-reads the window and shuffles it the same way. Each row keeps its place in the share in the ROW column."""

    def __init__(self, seed: int, rank: int, size: int):
        self.seed, self.rank, self.size = seed, rank, size

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        import numpy as np

        rng = np.random.default_rng([self.seed, self.rank, indices[0] // self.size])
        order = rng.permutation(len(indices))
        out = {name: [values[i] for i in order] for name, values in batch.items()}
        out[ROW] = [indices[i] for i in order]
        return out


def train_stream(cfg: RunConfig, tokenizer, checked: load.DataCheck, cut_blocks=None):
    """This process's training sequences, endlessly (a datasets.IterableDataset), from a checked plan. The default
    trainer passes its `token_blocks(cfg, tokenizer, rows, fmt) -> (blocks, tokens)`, which cuts each group of
    rows as it cuts a split read whole (sft encodes with SFTEncoder)."""
    from launcher.distributed import runtime

    rank, world = runtime.rank(), runtime.world_size()
    if checked.mixture is not None:
        rows, names, row_level, reader = _mixed_rows(cfg, checked.mixture, rank, world), [SAMPLE, WHERE], True, None
        what = mixture.describe(cfg)
    else:
        source = checked.train.source
        rows, row_level = _dealt(open_rows(source), rank, world)
        reader = RowReader(cfg, source, head_rows(source, load.RENDER_CHECK_ROWS))
        names = rows.column_names or reader.columns
        what = source.describe()
    group = cfg.data.packing_buffer if (cfg.trainer.name == "default" or cfg.data.packing) else TOKENISE_BATCH
    window = cfg.data.shuffle_window
    if window > 1:
        rows = rows.map(ShuffleWindow(cfg.training.seed, rank, window), batched=True, batch_size=window,
                        with_indices=True)
        names = [*names, ROW]
    fmt = checked.format if checked.mixture is not None else None  # (one source: the reader's, from its head)
    sequences = rows.map(Tokenise(cfg, tokenizer, reader, rank, world, row_level, cut_blocks, fmt),
                         batched=True, batch_size=group, with_indices=True, remove_columns=names)

    log.info("streaming %s: process %d of %d reads %s, %s", what, rank, world,
             ("its share of each source" if checked.mixture is not None and world > 1 else
              "every %d-th row" % world if world > 1 and row_level else "its own shards" if world > 1 else
              "every row") + (f" shuffled within windows of {window} rows" if window > 1 else ""),
             f"packed in groups of {group} samples" if cfg.data.packing and cfg.trainer.name == "sft" else
             f"cut into blocks of {cfg.data.block_size} tokens in groups of {group} rows"
             if cfg.trainer.name == "default" else "one sequence per row")
    if next(iter(sequences), None) is None:  # (else the Trainer would end at step 0 and call it finished)
        raise DataFileError(f"{what}: the rows process {rank} reads give no training sequence (every "
                            "row shorter than a block, or with nothing to train): add data or lower data.block_size")
    # endless: a pass that ends starts the next (its number is in the state, so a resume lands in the same pass)
    return sequences.repeat(None)


def _dealt(rows, rank: int, world: int):
    """This process's share of a source's raw rows, and whether it was dealt row by row."""
    from datasets.distributed import split_dataset_by_node

    row_level = rows.n_shards % world != 0
    if world > 1 and not row_level:
        # each process streams its own shards (files) of the source
        rows = split_dataset_by_node(rows, rank=rank, world_size=world)
    elif world > 1:
        # Fewer shards than processes (one file): split_dataset_by_node would deal every world-th item of what the
        # whole pipeline yields, i.e. the tokenised sequences, and every process would tokenise every row. The
        # rows are dealt here, before they are tokenised: process r takes rows r, r + world, ...
        rows = rows.filter(lambda batch, indices: [i % world == rank for i in indices], with_indices=True,
                           batched=True, batch_size=1000)
    return rows, row_level


def _mixed_rows(cfg: RunConfig, mix, rank: int, world: int):
    """A streamed mixture: each source's share of rows read and converted (MixedRows), then drawn by weight
    (datasets.interleave_datasets, seeded with training.seed; its random state is part of the stream's) or
    taken one source after the other (concat). Each process mixes its own shares of the sources."""
    from datasets import concatenate_datasets, interleave_datasets

    parts = []
    for s in mix.sources:
        one = mixture.source_config(cfg, cfg.data.datasets[s.index])
        source = s.check.train.source
        rows, row_level = _dealt(open_rows(source), rank, world)
        reader = RowReader(one, source, head_rows(source, load.RENDER_CHECK_ROWS))
        parts.append(rows.map(MixedRows(reader, s.label, s.check.format, mix.format, rank, world, row_level),
                              batched=True, batch_size=TOKENISE_BATCH, with_indices=True,
                              remove_columns=rows.column_names or reader.columns).select_columns([SAMPLE, WHERE]))
        # (select_columns: without it the mixed rows carry every source's raw columns, as None)
    if mix.strategy == "interleave":
        return interleave_datasets(parts, probabilities=mix.shares(), seed=cfg.training.seed,
                                   stopping_strategy=mix.stopping_strategy)
    return concatenate_datasets(parts)


# ---- the trainer and checkpoints

def attach(trainer, stream, resume_from: Optional[str]) -> None:
    """Make `trainer` read `stream` through a plain DataLoader, save the stream's position in every checkpoint,
    and (resuming) start from the position saved in `resume_from`.

    The DataLoader is not passed through accelerate: it would deal the rows a second time (its own shard of a
    datasets stream, or an IterableDatasetShard that has every process read everything), or with
    dispatch_batches have the main process read for all; the rows are already this process's own. The Trainer
    moves each batch to the device itself."""
    from torch.utils.data import DataLoader

    from launcher import checkpointing
    from launcher.distributed import runtime

    def train_dataloader():
        return DataLoader(stream, batch_size=trainer._train_batch_size, collate_fn=trainer.data_collator,
                          num_workers=0, pin_memory=trainer.args.dataloader_pin_memory)

    trainer.get_train_dataloader = train_dataloader
    # the position comes from the checkpoint: nothing to re-read and discard
    trainer.get_resumed_dataloader = lambda dataloader, num_batches: dataloader
    rank, world = runtime.rank(), runtime.world_size()

    def write_state(folder: Path) -> None:
        # num_workers=0 and no prefetch: at a step boundary the stream stands exactly after the rows trained
        state = {"rank": rank, "world_size": world, "state": stream.state_dict()}
        (Path(folder) / STATE_FILE.format(rank=rank)).write_text(json.dumps(state))

    checkpointing.add_checkpoint_writer(trainer, write_state)
    if resume_from:
        stream.load_state_dict(read_state(Path(resume_from), rank, world))
        log.info("streaming: resuming the stream where %s left it", Path(resume_from).name)


def read_state(checkpoint: Path, rank: int, world: int) -> dict:
    """This process's stream position saved in a checkpoint; an error says what does not match."""
    file = checkpoint / STATE_FILE.format(rank=rank)
    if not file.is_file():
        raise DataFileError(f"{checkpoint} holds no stream position for process {rank} ({file.name}): it was not "
                            "written by a streamed run with as many processes; resume with the settings it was "
                            "saved with (data.streaming, distributed.num_processes), or start a new run")
    saved = json.loads(file.read_text())
    if saved["world_size"] != world:
        raise DataFileError(f"{checkpoint} was saved by {saved['world_size']} processes, each with its own share of "
                            f"the stream; this resume runs {world}: resume with {saved['world_size']} processes, "
                            "or start a new run")
    return saved["state"]
