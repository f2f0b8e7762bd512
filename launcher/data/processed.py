"""The processed sft datasets: every row encoded (`encode.py`), truncated to the sample limit with counts, packed
through trl when asked, and cached on disk so that tokenisation runs once.

Encoding and truncation run in batches on `data.num_proc` processes (null: the cores the job was given, counted
where the data is tokenised, so a Slurm job counts its own): worker processes through `datasets.map`, one process
in two threads that overlap the tokenizer's calls with the Python work (and, packed, the packing) of the other
batches. 1 or N processes give the same datasets, so num_proc is not part of the cache key.

The cache lives in `data.cache_dir` (default `<cache root>/data`), one folder per key. The key is a hash of the
canonical rows (so of the data files and the column mapping), the tokenizer, the chat template, the lengths,
the packing options, train_on/add_eos_token, the trainer and this code; any change makes a new folder, and a
second run with the same key loads the folder instead of tokenising. Under several processes the caller wraps
`prepare_sft` in a main-process-first block: the main process builds the folder, the others then load it.

Folder layout: `train/` and `valid/` are what the trainer takes (input_ids, labels and, packed, seq_lengths);
with packing `train-samples/` and `valid-samples/` keep the unpacked samples that `prepare --show` prints;
`stats.json` holds the counts; `key.json` what the key was made of.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from launcher import atomic
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, EncodeError, SFTEncoder
from launcher.data.formats import effective_template
from launcher.data.load import DataCheck

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH = 256
"""Rows per tokenizer call (and per datasets.map batch)."""
SPLITS = ("train", "valid")


@dataclass
class SplitStats:
    """What preparation did to one split; `prepare` prints it and the worker logs it."""
    rows: int = 0
    """Canonical rows in."""
    samples: int = 0
    """Samples out (rows minus the dropped ones)."""
    limit: int = 0
    """Longest sample kept (block_size; with best-fit packing at most chunk_size); 0 = not cut (wrapped)."""
    truncated: int = 0
    """Samples longer than the limit, cut to it (their tail is not trained)."""
    truncated_tokens: int = 0
    dropped: int = 0
    """Samples left with no trained token after truncation (a prompt alone filling the limit); not trained."""
    real_tokens: int = 0
    """Tokens of the kept samples after truncation."""
    trained_tokens: int = 0
    lengths: list = field(default_factory=list)
    """Token length of every row before truncation."""
    packing: str = "none"
    """none, bfd (best fit, padding-free) or wrapped."""
    seq_length: int = 0
    """Length of a packed sequence (chunk_size or block_size); 0 without packing."""
    sequences: int = 0
    """Rows the trainer sees: packed sequences, or samples."""
    split_samples: int = 0
    """wrapped: samples cut across a block boundary."""
    computed_tokens: int = 0
    """Tokens the model computes over an epoch, pad included, with batches of batch_size in file order."""
    unpacked_computed_tokens: int = 0
    """The same without packing (padded to the longest sample of each batch), for comparison."""

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 0.0

    @property
    def unpacked_efficiency(self) -> float:
        return self.real_tokens / self.unpacked_computed_tokens if self.unpacked_computed_tokens else 0.0

    @property
    def fill(self) -> float:
        """Packed sequences' fill: real tokens / (sequences x seq_length)."""
        return self.real_tokens / (self.sequences * self.seq_length) if self.sequences and self.seq_length else 0.0

    def summary(self, name: str) -> list[str]:
        lines = [f"{name}: {self.rows} rows -> {self.samples} samples, {self.real_tokens} tokens "
                 f"({self.trained_tokens} trained)"]
        if self.limit:
            lines.append(f"{name}: {self.truncated} of {self.rows} samples truncated to {self.limit} tokens "
                         f"({self.truncated_tokens} tokens cut)"
                         + (f"; {self.dropped} dropped with nothing left to train" if self.dropped else ""))
        if self.packing == "bfd":
            lines.append(f"{name}: packed {self.samples} samples into {self.sequences} sequences of up to "
                         f"{self.seq_length} tokens ({self.fill:.0%} full); padding-free, so real/computed tokens = "
                         f"{self.efficiency:.0%} (unpacked batches: {self.unpacked_efficiency:.0%})")
        elif self.packing == "wrapped":
            lines.append(f"{name}: wrapped {self.samples} samples into {self.sequences} blocks of {self.seq_length} "
                         f"tokens, {self.split_samples} samples split across blocks; real/computed tokens = "
                         f"{self.efficiency:.0%} (unpacked batches: {self.unpacked_efficiency:.0%})")
        else:
            lines.append(f"{name}: not packed; real/computed tokens = {self.efficiency:.0%} with batches padded to "
                         "their longest sample (file order)")
        return lines


@dataclass
class Prepared:
    train: object
    """datasets.Dataset the trainer takes."""
    valid: Optional[object]
    samples: dict
    """Split name -> unpacked samples (the same datasets as train/valid without packing)."""
    stats: dict
    """Split name -> SplitStats."""
    folder: Optional[Path]
    """The cache folder (None when the cache could not be written)."""
    reused: bool
    """True when the folder existed and nothing was tokenised."""
    key: str = ""

    def summary(self) -> list[str]:
        lines = [line for name, s in self.stats.items() for line in s.summary(name)]
        where = f"cache {self.folder}" if self.folder else "not cached"
        lines.append(f"data: {'reused' if self.reused else 'tokenised into'} {where}")
        return lines


def cache_folder(cfg: RunConfig) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    from launcher.embedded import cache_root

    return cache_root() / "data"


def sample_limit(cfg: RunConfig) -> int:
    """Longest sample kept: block_size, and with best-fit packing at most chunk_size; 0 for wrapped packing
    (which cuts the concatenation into blocks instead of truncating samples)."""
    d = cfg.data
    if d.packing and d.wrap_packed_sequences:
        return 0
    if d.packing:
        return min(d.block_size, d.chunk_size)  # chunk_size is resolved (launcher.resolve: null -> block_size)
    return d.block_size


def packing_strategy(cfg: RunConfig) -> str:
    if not cfg.data.packing:
        return "none"
    return "wrapped" if cfg.data.wrap_packed_sequences else "bfd"


def cache_key(cfg: RunConfig, tokenizer, data: DataCheck) -> tuple[str, dict]:
    """The hex key and what went into it (written beside the data as key.json)."""
    import tokenizers
    import transformers
    import trl

    d = cfg.data
    parts = {
        "format_version": FORMAT_VERSION,
        "code": _code_hash(),
        "rows": {name: _rows_hash(split.rows) for name, split in _splits(data).items()},
        "format": data.format,
        "tokenizer": _tokenizer_hash(tokenizer),
        "template": [effective_template(cfg, data.format), _sha(tokenizer.chat_template or "")],
        "lengths": {"block_size": d.block_size, "chunk_size": d.chunk_size, "limit": sample_limit(cfg),
                    "max_prompt_length": d.max_prompt_length, "max_completion_length": d.max_completion_length},
        "packing": packing_strategy(cfg),
        "train_on": cfg.trainer.train_on,
        "train_on_reasoning": cfg.trainer.train_on_reasoning,
        "add_eos_token": d.add_eos_token,
        "trainer": cfg.trainer.name,
        "batch_size": cfg.training.batch_size,  # only the efficiency figures depend on it
        "versions": [transformers.__version__, tokenizers.__version__, trl.__version__],
    }
    return _sha(json.dumps(parts, sort_keys=True))[:20], parts


def prepare_sft(cfg: RunConfig, tokenizer, data: DataCheck, use_cache: bool = True) -> Prepared:
    """The sft train/valid datasets, from the cache when it holds them, else built (and cached)."""
    key, parts = cache_key(cfg, tokenizer, data)
    root = cache_folder(cfg)
    folder = root / key
    if use_cache and (folder / "stats.json").is_file():
        try:
            return _load(folder, key)
        except Exception as err:  # a damaged folder is rebuilt, not fatal
            log.warning("data cache %s is unreadable (%s): tokenising again", folder, err)
            _discard(folder)
    with _quiet_datasets():
        built = _build(cfg, tokenizer, data, key)
    if not use_cache:
        return Prepared(*built, folder=None, reused=False, key=key)
    try:
        with _quiet_datasets():
            _save(folder, key, parts, *built)
    except OSError as err:
        log.warning("could not write the data cache under %s (%s): continuing without it", root, err)
        return Prepared(*built, folder=None, reused=False, key=key)
    return _load(folder, key, reused=False)


# ---- building

def _build(cfg: RunConfig, tokenizer, data: DataCheck, key: str):
    encoder = SFTEncoder.for_run(cfg, tokenizer, data.format)
    limit, strategy = sample_limit(cfg), packing_strategy(cfg)
    seq_length = cfg.data.chunk_size if strategy != "none" else 0
    out, samples, stats = {}, {}, {}
    for name, split in _splits(data).items():
        st = SplitStats(rows=len(split.rows), limit=limit, packing=strategy, seq_length=seq_length)
        pack = functools.partial(_pack, seq_length=seq_length, strategy=strategy) if strategy != "none" else None
        encoded = _encode_split(encoder, split, limit, _processes(cfg, len(split.rows)), f"{key}-{name}", pack)
        full, trained = encoded["length"], encoded["trained"]
        st.lengths = full.tolist()
        over = full[full > limit] - limit if limit else full[:0]
        st.truncated, st.truncated_tokens = len(over), int(over.sum())
        keep = _kept(trained)
        st.dropped = int((~keep).sum())
        dataset = encoded["dataset"]
        if st.dropped:
            dataset = dataset.select(np.flatnonzero(keep))
        kept_lengths = (np.minimum(full, limit) if limit else full)[keep]
        st.real_tokens = int(kept_lengths.sum())
        st.trained_tokens = int(trained[keep].sum())
        st.samples = len(dataset)
        if not st.samples:
            raise EncodeError(f"{split.source.describe()}: no sample has a trained token left within {limit} "
                              "tokens: raise data.block_size")
        samples[name] = dataset
        lengths = kept_lengths.tolist()
        st.unpacked_computed_tokens = _padded_tokens(lengths, cfg.training.batch_size)
        if strategy == "none":
            out[name] = dataset
            st.sequences, st.computed_tokens = st.samples, st.unpacked_computed_tokens
        else:
            packed = encoded["packed"]  # packed as the batches came in (some sample is kept: checked above)
            out[name] = packed
            st.sequences = len(packed)
            packed_lengths = _row_lengths(packed, "input_ids")
            # bfd is padding-free (a batch is one flattened sequence); wrapped batches pad to their longest.
            st.computed_tokens = (sum(packed_lengths) if strategy == "bfd"
                                  else _padded_tokens(packed_lengths, cfg.training.batch_size))
            if strategy == "wrapped":
                st.split_samples = _split_across(lengths, seq_length)
        stats[name] = st
    return out.get("train"), out.get("valid"), samples, stats


def _kept(trained: np.ndarray) -> np.ndarray:
    """The samples kept: a sample left with no trained token is dropped (and counted)."""
    return trained > 0


PACK_BATCH = 1000
"""Samples per packing batch. trl's pack_dataset packs each batch of its datasets.map on its own (bins never span
two batches), so the samples can be packed a batch at a time as soon as they are encoded, with the same result."""


def _pack(dataset, seq_length: int, strategy: str):
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, seq_length, strategy, map_kwargs={"batch_size": PACK_BATCH})


def _processes(cfg: RunConfig, rows: int) -> int:
    """data.num_proc; unset (a Slurm job resolves it where it runs), the cores this job was given."""
    from launcher.hardware import tokenising_processes

    return tokenising_processes(cfg.data.num_proc, rows)


def _encode_split(encoder: SFTEncoder, split, limit: int, num_proc: int, fingerprint: str,
                  pack: Optional[Callable] = None) -> dict:
    """The split's rows encoded and cut to `limit` in batches (one tokenizer call each) on `num_proc` processes:
    {"dataset": input_ids/labels, "length": each row's length before the cut, "trained": its trained tokens after
    it}, and with `pack` (`_pack` of a dataset of kept samples) "packed": the kept samples packed (when any are
    kept).
    An error names the file and the row."""
    from datasets import Dataset

    if not split.rows:
        return {"dataset": Dataset.from_dict({"input_ids": [], "labels": []}), "length": np.zeros(0, np.int64),
                "trained": np.zeros(0, np.int64)}
    # At most a process per batch: starting one costs more than a batch.
    num_proc = max(1, min(num_proc, -(-len(split.rows) // BATCH)))
    fn = _EncodeBatch(encoder, limit, split.source.describe(), split.rows)
    if num_proc == 1:
        return _encode_in_process(fn, len(split.rows), fingerprint, pack)
    return _encode_in_processes(fn, len(split.rows), num_proc, fingerprint, pack)


def _encode_in_process(fn: "_EncodeBatch", rows: int, fingerprint: str, pack: Optional[Callable] = None) -> dict:
    """`_encode_split` in this process. The batches are driven here rather than by datasets.map, for what that
    gains on 20k chat rows (benchmarks/preprocessing.py): the tokenizer's batch call runs in Rust without the GIL,
    so while it runs a second thread renders and masks another batch, and this thread packs the samples encoded
    so far (Python's share of the work overlaps the tokenizer's instead of adding to it); and each column is built
    once from the batches' arrays (Arrow list arrays over the concatenated tokens) rather than converted row by
    row."""
    from concurrent.futures import ThreadPoolExecutor

    batches = _batches(rows)
    collected = _Collected(fingerprint, pack)
    # The first batch alone: the tokenizer's first call may set its options (truncation, padding), which must not
    # change under a call running in the other thread. After it every call finds them set and only reads them.
    collected.take(fn.cut(batches[0]), last=len(batches) == 1)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode") as pool:
        # in order, each as soon as it is done; an error stops here and names its row
        for k, batch in enumerate(pool.map(fn.cut, batches[1:]), start=2):
            collected.take(batch, last=k == len(batches))
    return collected.result()


def _encode_in_processes(fn: "_EncodeBatch", rows: int, num_proc: int, fingerprint: str,
                         pack: Optional[Callable] = None) -> dict:
    """`_encode_split` on `num_proc` worker processes: forked, so each finds the rows and the encoder in its memory
    (nothing is pickled into it: a worker starts in milliseconds, where unpickling a tokenizer and its share of
    the rows took seconds through datasets.map); each encodes whole batches, one thread each, and sends back their
    arrays. This process takes them in order and packs them as they arrive, exactly as one process does, so
    the result is the same whatever the number of processes."""
    import multiprocessing

    global _WORKER_BATCH
    batches = _batches(rows)
    collected = _Collected(fingerprint, pack)
    _WORKER_BATCH = fn
    try:
        with _one_thread_per_process(num_proc), multiprocessing.get_context("fork").Pool(num_proc) as pool:
            for k, batch in enumerate(pool.imap(_encode_in_worker, batches), start=1):
                collected.take(batch, last=k == len(batches))
    finally:
        _WORKER_BATCH = None
    return collected.result()


_WORKER_BATCH: Optional["_EncodeBatch"] = None
"""The encoder of the split being encoded, set before the worker processes fork (they read it, never pickle it)."""


def _encode_in_worker(indices: range) -> dict:
    return _WORKER_BATCH.cut(indices)


def _batches(rows: int) -> list[range]:
    return [range(start, min(start + BATCH, rows)) for start in range(0, rows, BATCH)]


class _Collected:
    """Encoded batches taken in order: their columns, and (with `pack`) the kept samples packed PACK_BATCH at a
    time as soon as that many are in, so packing overlaps the encoding of later batches."""

    def __init__(self, fingerprint: str, pack: Optional[Callable]):
        self.fingerprint, self.pack = fingerprint, pack
        self.done, self.packed = [], []
        self.waiting = {"input_ids": [], "labels": []}  # kept samples not yet packed

    def take(self, batch: dict, last: bool) -> None:
        self.done.append(batch)
        if self.pack is None:
            return
        waiting = self.waiting
        for name in waiting:
            waiting[name] += [a for a, kept in zip(batch[name], _kept(batch["trained"])) if kept]
        while len(waiting["input_ids"]) >= PACK_BATCH or (last and waiting["input_ids"]):
            chunk = {name: kept[:PACK_BATCH] for name, kept in waiting.items()}
            self.packed.append(self.pack(_samples_dataset([chunk], f"{self.fingerprint}-{len(self.packed)}")))
            for name in waiting:
                del waiting[name][:PACK_BATCH]

    def result(self) -> dict:
        from datasets import concatenate_datasets

        out = {"dataset": _samples_dataset(self.done, self.fingerprint),
               "length": np.concatenate([batch["length"] for batch in self.done]),
               "trained": np.concatenate([batch["trained"] for batch in self.done])}
        if self.packed:
            out["packed"] = concatenate_datasets(self.packed)
        return out


def _samples_dataset(batches: list[dict], fingerprint: str):
    """A dataset of input_ids/labels from batches of their arrays. Named by `fingerprint` (unique to the data):
    datasets would otherwise hash every token to name it."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    columns = {name: pa.chunked_array([_list_array(batch[name], value_type) for batch in batches],
                                      type=pa.list_(value_type)) for name, value_type in _column_types().items()}
    return Dataset(InMemoryTable(pa.table(columns)), fingerprint=fingerprint)


def _column_types() -> dict:
    """The samples' Arrow types: input_ids as int32 (every vocabulary fits, and datasets stores a column of that
    name so), labels int64 (IGNORE is negative and trl's collators read them as they are)."""
    import pyarrow as pa

    return {"input_ids": pa.int32(), "labels": pa.int64()}


def _list_array(arrays: list[np.ndarray], value_type):
    """One Arrow list array over int64 arrays (their concatenation and its offsets: no per-row conversion), its
    values cast to `value_type` (a safe cast: a value out of its range raises)."""
    import pyarrow as pa

    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = pa.array(np.concatenate(arrays) if arrays else np.zeros(0, np.int64)).cast(value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _row_lengths(dataset, column: str) -> list[int]:
    """Length of each row's list, from Arrow (reading the column would build a Python int per token)."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")[column]).to_pylist()


class _EncodeBatch:
    """Encodes and cuts batches of a split's rows, named by their indices in `rows` (`cut`), in this process's
    threads or in forked worker processes."""

    def __init__(self, encoder: SFTEncoder, limit: int, source: str, rows: list):
        self.encoder, self.limit, self.source, self.rows = encoder, limit, source, rows

    def cut(self, indices) -> dict:
        """The rows at these indices of `rows`, encoded and cut."""
        return self._encode([self.rows[i] for i in indices], indices)

    def _encode(self, rows: list[dict], indices) -> dict:
        try:
            encoded = self.encoder.arrays(rows)
        except EncodeError as err:
            number = indices[err.row] + 1 if err.row is not None else indices[0] + 1
            raise EncodeError(f"{self.source}: row {number}: {err}") from None
        length = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
        if self.limit:
            encoded = [(ids[:self.limit], labels[:self.limit]) for ids, labels in encoded]
        # The first label is never predicted (labels shift by one inside the model).
        trained = np.fromiter((np.count_nonzero(labels[1:] != IGNORE) for _, labels in encoded), dtype=np.int64,
                              count=len(encoded))
        return {"input_ids": [ids for ids, _ in encoded], "labels": [labels for _, labels in encoded],
                "length": length, "trained": trained}


@contextlib.contextmanager
def _one_thread_per_process(num_proc: int):
    """Worker processes forked after the tokenizer ran its own threads switch them off, each with a warning;
    with num_proc processes each runs one thread anyway, so say so up front (the parent's setting comes back
    after)."""
    name = "TOKENIZERS_PARALLELISM"
    if num_proc <= 1 or name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _padded_tokens(lengths: list[int], batch_size: int) -> int:
    return sum(len(lengths[i:i + batch_size]) * max(lengths[i:i + batch_size])
               for i in range(0, len(lengths), batch_size))


def _split_across(lengths: list[int], block: int) -> int:
    n, pos = 0, 0
    for length in lengths:
        if pos // block != (pos + length - 1) // block:
            n += 1
        pos += length
    return n


# ---- cache folder

def _save(folder: Path, key: str, parts: dict, train, valid, samples: dict, stats: dict) -> None:
    if (folder / "stats.json").is_file():
        return  # another process finished it first
    with atomic.folder(folder, complete_marker="stats.json") as tmp:
        for name, dataset in (("train", train), ("valid", valid)):
            if dataset is None:
                continue
            dataset.save_to_disk(str(tmp / name))
            if samples[name] is not dataset:
                samples[name].save_to_disk(str(tmp / f"{name}-samples"))
        (tmp / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True))
        (tmp / "stats.json").write_text(json.dumps({n: asdict(s) for n, s in stats.items()}))


def _discard(folder: Path) -> None:
    aside = folder.with_name(f".damaged-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _load(folder: Path, key: str, reused: bool = True) -> Prepared:
    from datasets import Dataset

    stats = {n: SplitStats(**s) for n, s in json.loads((folder / "stats.json").read_text()).items()}
    ready, samples = {}, {}
    for name in stats:
        ready[name] = Dataset.load_from_disk(str(folder / name))
        unpacked = folder / f"{name}-samples"
        samples[name] = Dataset.load_from_disk(str(unpacked)) if unpacked.is_dir() else ready[name]
    return Prepared(ready.get("train"), ready.get("valid"), samples, stats, folder, reused, key)


# ---- hashing

def _splits(data: DataCheck) -> dict:
    return {name: split for name, split in (("train", data.train), ("valid", data.valid)) if split is not None}


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _rows_hash(rows: list) -> str:
    h = hashlib.sha256()
    for start in range(0, len(rows), 1000):  # a JSON list at a time: a third less than a dumps call per row
        h.update(json.dumps(rows[start:start + 1000], sort_keys=True).encode())
    return h.hexdigest()


def _tokenizer_hash(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True).encode())
    h.update(json.dumps({str(k): str(v) for k, v in tokenizer.added_tokens_decoder.items()}, sort_keys=True).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def _code_hash() -> str:
    here = Path(__file__).resolve().parent
    return _sha(b"".join((here / name).read_bytes() for name in ("encode.py", "fast_render.py", "processed.py",
                                                                    "templates.py", "load.py", "formats.py",
                                                                    "byte_offsets.py")))[:16]


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars for maps and saves of a few thousand rows (the summary says what happened)."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


@contextlib.contextmanager
def main_process_first():
    """Under several processes the main one prepares (and caches) first, then the others load the cache; trl's
    own dataset preparation uses the same block. Needs the process state the trainer's config sets up."""
    from launcher.distributed import runtime

    if runtime.world_size() <= 1:
        yield
        return
    from trl.trainer.utils import global_then_local_main_first

    with global_then_local_main_first():
        yield
