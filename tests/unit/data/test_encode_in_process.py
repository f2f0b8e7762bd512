"""Encoding a split in one process (launcher.data.processed: batches driven by two threads, the columns built from
the batches' arrays) prepares exactly what datasets.map in worker processes prepares, packed or not, and an error
in any batch, the threads' included, names its row."""
from __future__ import annotations

import pytest

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data import encode, processed
from launcher.data.load import check_data
from launcher.embedded import build_tiny_llama
from tests.unit.helpers import SAMPLES


def config(tmp_path, num_proc: int, **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = str(build_tiny_llama())
    cfg.data.path, cfg.data.chat_template, cfg.data.valid_split = str(SAMPLES / "chat"), "chatml", None
    cfg.data.cache_dir, cfg.data.num_proc, cfg.data.block_size = str(tmp_path / "cache"), num_proc, 48
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


@pytest.mark.parametrize("packing", [{}, {"packing": True, "chunk_size": 96},
                                     {"packing": True, "chunk_size": 48, "wrap_packed_sequences": True}],
                         ids=["unpacked", "bfd", "wrapped"])
def test_one_process_prepares_what_worker_processes_prepare(tmp_path, monkeypatch, packing):
    monkeypatch.setattr(processed, "BATCH", 4)  # ten batches of the 40 rows: most go through the threads
    one, two = config(tmp_path, 1, **packing), config(tmp_path, 2, **packing)
    tok = models.load_tokenizer(one)
    a = processed.prepare_sft(one, tok, check_data(one), use_cache=False)
    b = processed.prepare_sft(two, tok, check_data(two), use_cache=False)
    assert a.train.features == b.train.features and a.train.column_names == b.train.column_names
    for column in a.train.column_names:
        assert a.train[column] == b.train[column], column
    assert a.samples["train"]["labels"] == b.samples["train"]["labels"] and a.stats == b.stats
    assert a.stats["train"].truncated > 0 or a.stats["train"].packing == "wrapped"


@pytest.mark.parametrize("bad_row", [2, 31])  # in the first batch (encoded alone) and in one the threads encode
def test_a_bad_row_in_any_batch_is_named(tmp_path, monkeypatch, bad_row):
    monkeypatch.setattr(processed, "BATCH", 4)
    cfg = config(tmp_path, 1)
    data = check_data(cfg)
    row = dict(data.train.rows[bad_row - 1])
    row["messages"] = [m for m in row["messages"] if m["role"] != "assistant"]  # nothing to train
    data.train.rows[bad_row - 1] = row
    with pytest.raises(encode.EncodeError, match=rf"train.jsonl: row {bad_row}: the chatml template marks no"):
        processed.prepare_sft(cfg, models.load_tokenizer(cfg), data)


@pytest.mark.parametrize("strategy", ["bfd", "wrapped"])
def test_packing_as_the_samples_come_is_trls_packing_of_them_all(tmp_path, monkeypatch, strategy):
    import inspect

    from datasets import Dataset
    from trl.data_utils import pack_dataset

    # trl packs each batch of datasets.map on its own, in batches of map's default size: PACK_BATCH is that size
    assert processed.PACK_BATCH == inspect.signature(Dataset.map).parameters["batch_size"].default
    monkeypatch.setattr(processed, "BATCH", 4)
    monkeypatch.setattr(processed, "PACK_BATCH", 7)  # packing batches that straddle the encoding batches
    cfg = config(tmp_path, 1, block_size=24, packing=True, chunk_size=24 if strategy == "wrapped" else 64,
                 wrap_packed_sequences=strategy == "wrapped")
    out = processed.prepare_sft(cfg, models.load_tokenizer(cfg), check_data(cfg), use_cache=False)
    assert out.stats["train"].dropped > 0 or strategy == "wrapped"  # dropped samples shift the packing batches
    want = pack_dataset(out.samples["train"], cfg.data.chunk_size, strategy, map_kwargs={"batch_size": 7})
    assert out.train.features == want.features and len(out.train) == len(want) > 40 // 7
    for column in want.column_names:
        assert out.train[column] == want[column], column
