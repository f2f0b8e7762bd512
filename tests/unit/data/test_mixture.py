"""data.datasets: every source checked as one data.path is, the rows mixed by weight (interleave) or in order
(concat), the validation rows unweighted, and the mixes that no trainer reads as one refused."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launcher.config.schema import ColumnMapping, DataSource, RunConfig
from launcher.data.formats import BY_NAME
from launcher.data.load import check_data
from launcher.manifest import data_hash, source_hashes
from tests.unit.helpers import SAMPLES


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                          {"role": "assistant", "content": f"{i} plus one is {i + 1}."}]} for i in range(n)]


def alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": "Add one to the number.", "input": str(i), "output": str(i + 1)} for i in range(n)]


def qa_rows(n: int) -> list[dict]:
    return [{"prompt": f"Question: what follows {i}?", "completion": f" {i + 1} follows {i}."} for i in range(n)]


def write_sources(folder: Path, sizes: tuple[int, int, int]) -> list[Path]:
    """A chat JSONL, an Alpaca CSV and a prompt/completion parquet of these sizes."""
    chat, alpaca, qa = folder / "chat.jsonl", folder / "alpaca.csv", folder / "qa.parquet"
    chat.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(sizes[0])))
    with alpaca.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(alpaca_rows(sizes[1]))
    pq.write_table(pa.Table.from_pylist(qa_rows(sizes[2])), qa)
    return [chat, alpaca, qa]


def mixture_cfg(paths: list[Path], weights=(0.5, 0.3, 0.2), mixture="interleave", **source_keys) -> RunConfig:
    cfg = RunConfig()
    cfg.data.chat_template = "chatml"
    cfg.data.mixture = mixture
    cfg.data.datasets = [DataSource(path=str(p), weight=w, name=p.stem) for p, w in zip(paths, weights)]
    for i, values in source_keys.items():
        for key, value in values.items():
            setattr(cfg.data.datasets[int(i[1:])], key, value)
    return cfg


def test_interleaved_shares_follow_the_weights_and_every_row_is_a_source_row_once(tmp_path):
    paths = write_sources(tmp_path, (1000, 600, 400))
    out = check_data(mixture_cfg(paths))
    assert out.problems == []
    assert out.format == "messages"
    rows, origins = out.train.rows, out.train.origins
    assert len(rows) == len(origins) > 1500  # first_exhausted: stops when the first source runs out
    for k, weight in enumerate((0.5, 0.3, 0.2)):
        assert abs(origins.count(k) / len(origins) - weight) <= 0.02, (k, origins.count(k), len(origins))
    # each mixed row is its source's row, converted to chat messages, and none is repeated
    sources = [chat_rows(1000), alpaca_rows(600), qa_rows(400)]
    formats = ("messages", "alpaca", "prompt_completion")
    picks = out.mixture.picks
    assert len(set(picks)) == len(picks)
    for row, (k, r) in zip(rows, picks):
        assert row == BY_NAME[formats[k]].sft_sample(sources[k][r], chat=True)
    assert all("messages" in row and set(row) == {"messages"} for row in rows)
    assert any("mixture (interleave, first_exhausted)" in n and "data.datasets[1] (alpaca) alpaca" in n
               for n in out.notes)


def test_the_seed_decides_the_draw(tmp_path):
    paths = write_sources(tmp_path, (60, 40, 30))
    a, b = mixture_cfg(paths), mixture_cfg(paths)
    b.training.seed = 7
    assert check_data(a).mixture.picks == check_data(mixture_cfg(paths)).mixture.picks
    assert check_data(a).mixture.picks != check_data(b).mixture.picks


def test_all_exhausted_sees_every_row_of_every_source(tmp_path):
    paths = write_sources(tmp_path, (30, 20, 10))
    cfg = mixture_cfg(paths)
    cfg.data.stopping_strategy = "all_exhausted"
    picks = check_data(cfg).mixture.picks
    assert {(k, r) for k, n in enumerate((30, 20, 10)) for r in range(n)} <= set(picks)


def test_concat_takes_every_row_once_in_order_and_says_the_weights_are_unused(tmp_path):
    paths = write_sources(tmp_path, (5, 4, 3))
    out = check_data(mixture_cfg(paths, mixture="concat"))
    assert out.mixture.picks == [(0, r) for r in range(5)] + [(1, r) for r in range(4)] + [(2, r) for r in range(3)]
    assert out.train.origins == [0] * 5 + [1] * 4 + [2] * 3
    assert any("weights are not used" in n for n in out.notes)
    same = check_data(mixture_cfg(paths, weights=(1, 1, 1), mixture="concat"))
    assert not any("weights are not used" in n for n in same.notes)


def test_validation_rows_are_each_sources_own_unweighted(tmp_path):
    cfg = mixture_cfg([SAMPLES / "chat", SAMPLES / "mixture" / "alpaca.csv"], weights=(0.9, 0.1),
                      s0={"valid_split": "valid"})
    out = check_data(cfg)
    assert out.problems == []
    valid_rows = (SAMPLES / "chat" / "valid.jsonl").read_text().splitlines()
    assert len(out.valid.rows) == len(valid_rows) and out.valid.origins == [0] * len(valid_rows)
    # the run's hold-out rule applies to each source's training rows
    cfg.data.datasets[0].valid_split = None
    cfg.data.validation_fraction = 0.1
    out = check_data(cfg)
    assert out.problems == []
    assert out.valid.origins.count(0) == 4 and out.valid.origins.count(1) == 3  # 10% of 40 and of 30
    assert not {tuple(map(str, r.items())) for r in out.valid.rows} & {tuple(map(str, r.items()))
                                                                      for s in out.mixture.sources for r in s.rows}


def test_a_bad_column_names_the_source_and_its_file(tmp_path):
    paths = write_sources(tmp_path, (10, 10, 10))
    cfg = mixture_cfg(paths, s1={"column_mapping": ColumnMapping(text_column="response")})
    problems = check_data(cfg).problems
    assert len(problems) == 1
    assert problems[0].key == "data.datasets[1].column_mapping"
    message = problems[0].message
    assert message.startswith(f"data.datasets[1] (alpaca): {paths[1]}: ")
    assert "data.datasets[1].column_mapping.text_column=response" in message and "instruction, input, output" in message


def test_a_missing_source_and_a_bad_row_are_named_by_source(tmp_path):
    paths = write_sources(tmp_path, (10, 10, 10))
    with paths[0].open("a") as fh:
        fh.write(json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}) + "\n")
    cfg = mixture_cfg([paths[0], tmp_path / "nowhere", paths[2]])
    problems = {p.key: p.message for p in check_data(cfg).problems}
    assert problems["data.datasets[1].path"].startswith("data.datasets[1] (nowhere): ")
    assert problems["data.datasets[0]"].startswith(f"data.datasets[0] (chat): {paths[0]}: row 11: ")
    cfg.data.datasets[1].path = ""
    assert "data.datasets[1] has no path" in {p.key: p.message for p in check_data(cfg).problems}["data.datasets[1].path"]


@pytest.mark.parametrize("key, value", [("path", "samples/chat"), ("format", "messages"), ("valid_split", "valid")])
def test_data_path_and_its_keys_beside_datasets_are_refused_naming_both(tmp_path, key, value):
    cfg = mixture_cfg(write_sources(tmp_path, (3, 3, 3)))
    setattr(cfg.data, key, value)
    problems = check_data(cfg).problems
    assert [p.key for p in problems] == [f"data.datasets / data.{key}"]
    assert f"data.{key}={value} would not be read" in problems[0].message


def test_sources_no_trainer_reads_as_one_are_refused_naming_both(tmp_path):
    paths = write_sources(tmp_path, (3, 3, 3))
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "plain text"}) + "\n")
    problems = check_data(mixture_cfg([paths[0], text], weights=(1, 1))).problems
    assert [p.key for p in problems] == ["data.datasets[0] / data.datasets[1]"]
    assert "data.datasets[0] (chat) is messages rows and data.datasets[1] (text) is text rows" in problems[0].message

    no_template = mixture_cfg(paths[1:], weights=(1, 1))  # alpaca + prompt_completion: fine each, apart without
    no_template.data.chat_template = "none"
    problems = check_data(no_template).problems
    assert [p.key for p in problems] == ["data.datasets[0] / data.datasets[1]"]
    assert "data.chat_template=chatml" in problems[0].message

    dpo = mixture_cfg([SAMPLES / "preference", SAMPLES / "reward"], weights=(1, 1))
    dpo.trainer.name = "reward"
    problems = check_data(dpo).problems
    assert [p.key for p in problems] == ["data.datasets[0] / data.datasets[1]"]
    assert "preference rows" in problems[0].message and "reward_pair rows" in problems[0].message


def test_the_default_trainer_mixes_chat_formats_as_conversations_too(tmp_path):
    cfg = mixture_cfg(write_sources(tmp_path, (4, 4, 4)))
    cfg.trainer.name = "default"
    out = check_data(cfg)
    assert out.problems == [] and out.format == "messages" and len(out.train.rows) == len(out.train.origins) > 0


def test_a_weight_must_be_positive(tmp_path):
    paths = write_sources(tmp_path, (3, 3, 3))
    problems = check_data(mixture_cfg(paths, weights=(1, 0, 1))).problems
    assert [p.key for p in problems] == ["data.datasets[1].weight"]


def test_the_hashes_cover_every_source_file(tmp_path):
    paths = write_sources(tmp_path, (3, 3, 3))
    cfg = mixture_cfg(paths)
    before = data_hash(cfg)
    assert sorted(before) == sorted(str(p) for p in paths) and all(len(h) == 64 for h in before.values())
    assert [(s["name"], s["weight"], list(s["files"])) for s in source_hashes(cfg)] == [
        (p.stem, w, [str(p)]) for p, w in zip(paths, (0.5, 0.3, 0.2))]
    paths[2].write_bytes(paths[2].read_bytes() + b"\n")
    after = data_hash(cfg)
    assert [name for name in before if before[name] != after[name]] == [str(paths[2])]


def test_a_hub_source_is_read_and_mixed_by_the_worker(tmp_path, monkeypatch):
    import datasets

    from launcher.data.load import load_splits

    calls = []

    def fake_load_dataset(path, name=None, split=None, token=None):  # (the network: plan must not call it)
        calls.append((path, split))
        return datasets.Dataset.from_list(qa_rows(50))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    paths = write_sources(tmp_path, (100, 60, 1))
    cfg = mixture_cfg(paths[:2], weights=(1, 1))
    cfg.data.datasets.append(DataSource(path="someone/qa", weight=2))
    planned = check_data(cfg)
    assert planned.problems == [] and not calls and planned.train is None
    assert any("when the worker" in n for n in planned.notes)

    loaded = load_splits(cfg)
    assert calls == [("someone/qa", "train")]
    assert loaded.format == "messages"
    assert set(loaded.train.origins) == {0, 1, 2} and len(loaded.train.rows) == len(loaded.mixture.picks)
    assert loaded.train.origins.count(2) > loaded.train.origins.count(1)  # weight 2 against 1


def test_a_slurm_container_mounts_every_source(tmp_path):
    from launcher.cluster.script import mounts

    folders = [tmp_path / name for name in ("a", "b")]
    for folder in folders:
        folder.mkdir()
    paths = [write_sources(folder, (2, 2, 2))[0] for folder in folders]
    cfg = mixture_cfg(paths, weights=(1, 1))
    cfg.data.cache_dir = str(tmp_path / "cache")
    cwd = tmp_path / "work"
    cwd.mkdir()
    mounted = mounts(cfg, cwd / "run", cwd)
    assert str(folders[0]) in mounted and str(folders[1]) in mounted
