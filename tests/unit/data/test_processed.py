"""The processed sft datasets: truncation counts, packing, and the cache that makes tokenisation run once."""
import json
import os

import pytest

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data import encode, processed
from launcher.data.encode import IGNORE
from launcher.data.load import check_data
from launcher.embedded import build_tiny_llama
from tests.unit.helpers import SAMPLES


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(build_tiny_llama())


def config(tiny, tmp_path, sample="chat", template="chatml", **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = tiny
    cfg.data.path = str(SAMPLES / sample)
    cfg.data.chat_template = template
    cfg.data.block_size = 512
    cfg.data.valid_split = None
    cfg.data.cache_dir = str(tmp_path / "cache")
    for key, value in data.items():
        setattr(cfg.data, key, value)
    if cfg.data.packing and cfg.data.chunk_size is None:
        cfg.data.chunk_size = cfg.data.block_size  # as the plan resolves it (test_chunk_size_defaults_to_block_size)
    return cfg


def prepare(cfg, **kwargs):
    data = check_data(cfg)
    assert not data.problems, data.problems
    return processed.prepare_sft(cfg, models.load_tokenizer(cfg), data, **kwargs)


def test_second_run_reuses_the_cache_without_tokenising(tiny, tmp_path, monkeypatch):
    cfg = config(tiny, tmp_path)
    first = prepare(cfg)
    assert not first.reused and first.folder.parent == tmp_path / "cache"
    stats_file = first.folder / "stats.json"
    mtime = stats_file.stat().st_mtime_ns

    calls = []
    original = encode.SFTEncoder.arrays

    def counting(self, rows):
        calls.extend(rows)
        return original(self, rows)

    monkeypatch.setattr(encode.SFTEncoder, "arrays", counting)
    second = prepare(config(tiny, tmp_path))
    assert second.reused and second.folder == first.folder
    assert calls == []  # nothing was tokenised
    assert stats_file.stat().st_mtime_ns == mtime
    assert second.train["input_ids"] == first.train["input_ids"] and second.train["labels"] == first.train["labels"]
    assert "reused" in second.summary()[-1]

    # a changed length is another key: tokenised again, into a new folder
    third = prepare(config(tiny, tmp_path, block_size=64))
    assert not third.reused and third.folder != first.folder and len(calls) == 40


@pytest.mark.parametrize("change", [
    {"chat_template": "zephyr"}, {"packing": True}, {"add_eos_token": False}, {"block_size": 256},
    {"path": str(SAMPLES / "pirate_chat")}, {"num_validation_samples": 2},
])
def test_the_key_covers_template_packing_lengths_and_data(tiny, tmp_path, change):
    base = config(tiny, tmp_path)
    tok = models.load_tokenizer(base)
    key, parts = processed.cache_key(base, tok, check_data(base))
    other = config(tiny, tmp_path, **change)
    other_key, _ = processed.cache_key(other, models.load_tokenizer(other), check_data(other))
    assert other_key != key
    assert {"rows", "tokenizer", "template", "lengths", "packing", "trainer", "code"} <= set(parts)


def test_train_on_and_trainer_are_in_the_key(tiny, tmp_path):
    cfg = config(tiny, tmp_path)
    tok, data = models.load_tokenizer(cfg), check_data(cfg)
    key = processed.cache_key(cfg, tok, data)[0]
    cfg.trainer.train_on = "all"
    assert processed.cache_key(cfg, tok, data)[0] != key


def test_truncation_is_counted(tiny, tmp_path):
    cfg = config(tiny, tmp_path, block_size=48)
    out = prepare(cfg, use_cache=False)
    st = out.stats["train"]
    longer = sum(1 for n in st.lengths if n > 48)
    assert longer > 0 and st.truncated + st.dropped == longer
    assert st.truncated_tokens >= st.truncated
    assert max(len(x) for x in out.train["input_ids"]) == 48
    assert st.samples == st.rows - st.dropped == len(out.train)
    assert f"{st.truncated} of {st.rows} samples truncated to 48 tokens" in " ".join(out.summary())


def test_samples_whose_reply_is_cut_off_entirely_are_dropped_and_counted(tiny, tmp_path):
    cfg = config(tiny, tmp_path, block_size=20)  # the prompt alone fills 20 tokens in most chat rows
    out = prepare(cfg, use_cache=False)
    st = out.stats["train"]
    assert st.dropped > 0
    assert all(any(x != IGNORE for x in labels[1:]) for labels in out.train["labels"])
    assert "dropped with nothing left to train" in " ".join(out.summary())


def test_packing_best_fit_keeps_every_sample_whole(tiny, tmp_path):
    cfg = config(tiny, tmp_path, packing=True, chunk_size=256)
    out = prepare(cfg)
    st = out.stats["train"]
    assert st.packing == "bfd" and st.seq_length == 256 and st.limit == 256
    assert st.sequences == len(out.train) < st.samples
    assert all(len(x) <= 256 for x in out.train["input_ids"])
    # every sample sits whole inside one sequence, with its boundaries for the position ids
    assert sorted(n for row in out.train["seq_lengths"] for n in row) == sorted(
        len(x) for x in out.samples["train"]["input_ids"])
    assert sum(len(x) for x in out.train["input_ids"]) == st.real_tokens
    assert st.efficiency == 1.0 and 0.5 < st.fill <= 1.0 and st.unpacked_efficiency < 1.0
    assert (out.folder / "train-samples").is_dir()


def test_packing_wrapped_cuts_the_concatenation_into_full_blocks(tiny, tmp_path):
    cfg = config(tiny, tmp_path, packing=True, wrap_packed_sequences=True, chunk_size=128)
    out = prepare(cfg, use_cache=False)
    st = out.stats["train"]
    lengths = [len(x) for x in out.train["input_ids"]]
    assert st.packing == "wrapped" and st.limit == 0 and st.truncated == 0
    assert all(n == 128 for n in lengths[:-1]) and sum(lengths) == st.real_tokens
    assert st.split_samples > 0


def test_chunk_size_defaults_to_block_size(tiny, tmp_path):
    from launcher.hardware import Hardware
    from launcher.resolve import resolve

    cfg = config(tiny, tmp_path, block_size=128)
    cfg.data.packing = True
    resolve(cfg, Hardware())  # a machine without GPUs
    assert cfg.data.chunk_size == 128
    out = prepare(cfg, use_cache=False)
    assert out.stats["train"].seq_length == 128


def test_validation_split_is_prepared_too(tiny, tmp_path):
    out = prepare(config(tiny, tmp_path, num_validation_samples=4))
    assert len(out.valid) == 4 and len(out.train) == 36
    saved = json.loads((out.folder / "stats.json").read_text())
    assert set(saved) == {"train", "valid"} and saved["valid"]["rows"] == 4


def test_a_damaged_cache_folder_is_rebuilt(tiny, tmp_path):
    cfg = config(tiny, tmp_path)
    first = prepare(cfg)
    (first.folder / "train" / "dataset_info.json").write_text("{not json")
    second = prepare(cfg)
    assert not second.reused and second.train["input_ids"] == first.train["input_ids"]


def test_an_unwritable_cache_is_not_fatal(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = config(tiny, tmp_path, cache_dir=str(blocker / "cache"))  # a folder under a file cannot exist
    out = prepare(cfg)
    assert out.folder is None and len(out.train) == 40


@pytest.mark.parametrize("sample, template", [("chat", "chatml"), ("text", "none"), ("prompt_completion", "none")])
def test_two_processes_give_what_one_gives_under_the_same_key(tiny, tmp_path, monkeypatch, sample, template):
    monkeypatch.setattr(processed, "BATCH", 8)  # several batches of the 40 rows, so 2 processes do start
    one = config(tiny, tmp_path, sample=sample, template=template, num_proc=1, block_size=32)
    two = config(tiny, tmp_path, sample=sample, template=template, num_proc=2, block_size=32)
    tok = models.load_tokenizer(one)
    assert processed.cache_key(one, tok, check_data(one)) == processed.cache_key(two, tok, check_data(two))
    pids = tmp_path / "pids"
    cut = processed._EncodeBatch.cut

    def recording(self, indices):  # (the forked workers find it in their copy of the class)
        with pids.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return cut(self, indices)

    monkeypatch.setattr(processed._EncodeBatch, "cut", recording)
    a = prepare(one, use_cache=False)
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()
    b = prepare(two, use_cache=False)
    workers = set(pids.read_text().split())
    # the 2-process run encoded in worker processes (which of the 2 takes each batch is the pool's choice)
    assert 1 <= len(workers) <= 2 and str(os.getpid()) not in workers
    assert a.train["input_ids"] == b.train["input_ids"] and a.train["labels"] == b.train["labels"]
    assert a.stats == b.stats and a.stats["train"].truncated > 0  # the cut (and dropped) rows too
    assert a.train.features == b.train.features


def test_an_unset_num_proc_is_one_process(tiny, tmp_path):
    cfg = config(tiny, tmp_path, num_proc=None)
    out = prepare(cfg, use_cache=False)
    assert out.train["input_ids"] == prepare(config(tiny, tmp_path, num_proc=1), use_cache=False).train["input_ids"]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_bad_row_in_a_batch_is_named(tiny, tmp_path, monkeypatch, num_proc):
    monkeypatch.setattr(processed, "BATCH", 8)
    cfg = config(tiny, tmp_path, num_proc=num_proc)
    data = check_data(cfg)
    bad = dict(data.train.rows[3])
    bad["messages"] = [m for m in bad["messages"] if m["role"] != "assistant"]  # nothing to train
    data.train.rows[3] = bad
    with pytest.raises(encode.EncodeError, match=r"row 4: the chatml template marks no assistant tokens"):
        processed.prepare_sft(cfg, models.load_tokenizer(cfg), data)
