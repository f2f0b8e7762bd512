"""data.streaming (issue 20, item 2): the training split read, tokenised and packed as training goes.

- the stream's saved position resumes it exactly (the next sequences are those an uninterrupted stream gives),
  for the default trainer's blocks and sft's best-fit packing, inside a pass and across the start of the next;
- the preflight reads only the first rows, with the messages of data read whole; a bad row further on is an
  error naming the file and row when training reaches it;
- a worker streaming a corpus far larger than its memory growth trains on it (peak RSS measured from inside the
  worker against the same run on a small corpus: materialising the corpus would fail the check);
- (slow) kill -9 after a checkpoint, then the same command: the final weights are those of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.data import load, streaming
from launcher.data.files import DataFileError
from launcher.trainers.default import token_blocks
from tests.conftest import REPO, cli_env, run_cli, tunelaunch
from tests.integration.streaming_corpus import write_chat_corpus, write_large_corpus

STREAM_PROBE = REPO / "tests" / "distributed" / "stream_probe"
PROBE_SITE = REPO / "tests" / "distributed" / "probe_site"


def planned_cfg(tmp_path: Path, *overrides: str):
    """The resolved configuration of recipe=sft/chat_tiny with the overrides, as the worker reads it."""
    from launcher.planning import make_plan

    return make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", "data.streaming=true",
                            "training.max_steps=10", *overrides]).cfg


def stream_of(cfg, rank: int = 0, world: int = 1):
    from launcher import models

    env = {"RANK": str(rank), "WORLD_SIZE": str(world)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        checked = streaming.check_stream(cfg)
        assert not checked.problems, checked.problems
        cut = token_blocks if cfg.trainer.name == "default" else None
        return streaming.train_stream(cfg, models.load_tokenizer(cfg), checked, cut_blocks=cut)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def take(iterator, n: int) -> list:
    return [dict(next(iterator)) for _ in range(n)]


@pytest.mark.parametrize("trainer, extra", [
    ("sft", ("data.packing=true", "data.packing_buffer=8", "data.block_size=128")),
    ("default", ("data.packing_buffer=5", "data.block_size=32")),
    ("sft", ("data.packing=true", "data.packing_buffer=8", "data.block_size=128", "data.shuffle_window=3")),
], ids=["sft-packed", "default", "sft-packed-shuffled"])
def test_the_saved_position_resumes_the_stream_exactly(tmp_path, trainer, extra):
    data = write_chat_corpus(tmp_path / "data", rows=60)
    cfg = planned_cfg(tmp_path, f"trainer={trainer}", f"data.path={data}", "data.valid_split=null", *extra)
    whole = stream_of(cfg)
    it = iter(whole)
    first = take(it, 7)
    assert len({json.dumps(s["input_ids"]) for s in first}) == 7  # real, distinct sequences
    assert all(len(s["input_ids"]) == len(s["labels"]) for s in first)
    if trainer == "default":
        assert all(len(s["input_ids"]) == cfg.data.block_size for s in first)
    state = json.loads(json.dumps(whole.state_dict()))  # as the checkpoint holds it
    passes = 0
    rest = []
    while passes < 2:  # on past the end of the corpus, into the second pass
        rest += take(it, 5)
        passes = whole.state_dict()["epoch"] + whole.state_dict()["examples_iterable"]["repeat_index"]
    resumed = stream_of(cfg)
    resumed.load_state_dict(state)
    assert take(iter(resumed), len(rest)) == rest
    fresh = stream_of(cfg)  # and a stream that was never resumed starts at the beginning
    assert take(iter(fresh), 7) == first


def test_each_process_trains_on_its_own_rows(tmp_path):
    """Two ranks' streams (RANK/WORLD_SIZE as a launcher sets them): rank r's sequences are rows r, r+2, ...
    (read back from the tokens), so no row is trained twice and none is skipped."""
    from launcher import models

    data = write_chat_corpus(tmp_path / "data", rows=40)
    cfg = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null", "data.block_size=128")
    tokenizer = models.load_tokenizer(cfg)
    seen = {}
    for rank in (0, 1):
        texts = [tokenizer.decode(s["input_ids"]) for s in take(iter(stream_of(cfg, rank, 2)), 25)]
        seen[rank] = [int(t.split("question ")[1].split(":")[0]) for t in texts]
    assert seen[0] == [*range(0, 40, 2), *range(0, 10, 2)]  # 20 rows, then the next pass
    assert seen[1] == [*range(1, 40, 2), *range(1, 10, 2)]


def question_numbers(cfg, sequences: list) -> list[int]:
    from launcher import models

    tokenizer = models.load_tokenizer(cfg)
    return [int(t.split("question ")[1].split(":")[0]) for t in (tokenizer.decode(s["input_ids"]) for s in sequences)]


def test_a_shuffle_window_permutes_each_window_of_each_processs_rows(tmp_path):
    """data.shuffle_window=8 on two ranks: each rank's rows come in windows of 8 of its own rows, each window a
    permutation of them (not file order), the two ranks' windows shuffled differently, no row on both; seed 0 and
    seed 1 shuffle differently, and the same seed the same."""
    data = write_chat_corpus(tmp_path / "data", rows=64)
    cfg = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null", "data.block_size=128",
                      "data.shuffle_window=8")
    seen = {rank: question_numbers(cfg, take(iter(stream_of(cfg, rank, 2)), 32)) for rank in (0, 1)}
    for rank, order in seen.items():
        share = list(range(rank, 64, 2))
        windows = [order[i:i + 8] for i in range(0, 32, 8)]
        assert [sorted(w) for w in windows] == [share[i:i + 8] for i in range(0, 32, 8)]
        assert sum(w != sorted(w) for w in windows) >= 3, windows  # shuffled, not read in order
    assert [x - 1 for x in seen[1]] != seen[0]  # each rank has its own permutations
    other = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null", "data.block_size=128",
                        "data.shuffle_window=8", "training.seed=1")
    once, again = (question_numbers(c, take(iter(stream_of(c)), 16)) for c in (cfg, cfg))
    assert once == again and question_numbers(other, take(iter(stream_of(other)), 16)) != once


def test_a_windows_permutation_depends_on_its_place_only():
    """What makes a shuffled resume exact wherever datasets re-reads from: a window is shuffled by the seed, the
    rank and its place in the stream, not by how many windows this object shuffled before."""
    batch = {"x": list(range(50, 58))}
    fresh = streaming.ShuffleWindow(seed=3, rank=0, size=8)(batch, list(range(40, 48)))
    used = streaming.ShuffleWindow(seed=3, rank=0, size=8)
    for start in (0, 8, 16):
        used({"x": list(range(8))}, list(range(start, start + 8)))
    assert used(batch, list(range(40, 48))) == fresh
    assert sorted(fresh["x"]) == batch["x"] and fresh["x"] != batch["x"]
    assert [x - 50 + 40 for x in fresh["x"]] == fresh[streaming.ROW]  # each row keeps its own place
    assert streaming.ShuffleWindow(3, 1, 8)(batch, list(range(40, 48))) != fresh  # another rank
    assert streaming.ShuffleWindow(3, 0, 8)(batch, list(range(48, 56)))["x"] != fresh["x"]  # another window


def test_a_stream_that_gives_no_sequence_is_an_error_not_an_empty_run(tmp_path):
    data = write_chat_corpus(tmp_path / "data", rows=3)
    cfg = planned_cfg(tmp_path, "trainer=default", f"data.path={data}", "data.valid_split=null",
                      "data.block_size=512")
    with pytest.raises(DataFileError, match="give no training sequence .* lower data.block_size"):
        stream_of(cfg)


def test_the_preflight_reads_the_first_rows_only_with_the_messages_of_data_read_whole(tmp_path):
    data = write_chat_corpus(tmp_path / "data", rows=load.RENDER_CHECK_ROWS + 50)
    cfg = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null")
    train = data / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[load.RENDER_CHECK_ROWS + 10] = "{not json"  # beyond what the preflight reads
    train.write_text("\n".join(lines) + "\n")
    checked = streaming.check_stream(cfg)
    assert not checked.problems and checked.format == "messages"
    assert len(checked.train.rows) == load.RENDER_CHECK_ROWS

    bad = json.loads(lines[2])
    bad["messages"][1]["role"] = "wizard"
    lines[2] = json.dumps(bad)
    train.write_text("\n".join(lines[:20]) + "\n")  # (short enough for check_data, which reads every row)
    streamed = [str(p) for p in streaming.check_stream(cfg).problems]
    whole = [str(p) for p in load.check_data(cfg).problems]
    assert len(streamed) == 1 and "row 3: messages[1]: unknown role 'wizard'" in streamed[0]
    assert streamed == whole

    train.write_text(json.dumps([{"role": "user", "content": "hi"}]) + "\n")  # a bare message list per line
    (problem,) = streaming.check_stream(cfg).problems
    assert f"{train}:1" in str(problem) and "{\"messages\": [...]}" in str(problem)


def test_rows_held_out_of_the_training_split_are_refused_with_streaming(tmp_path):
    cfg = planned_cfg(tmp_path, "data.valid_split=null")
    cfg.data.validation_fraction = 0.1
    (problem,) = streaming.check_stream(cfg).problems
    assert problem.key == "data.validation_fraction" and "data.valid_split=<split>" in str(problem)
    cfg.data.validation_fraction, cfg.data.num_validation_samples = None, 5
    (problem,) = streaming.check_stream(cfg).problems
    assert problem.key == "data.num_validation_samples"


def test_the_validation_split_is_its_first_rows(tmp_path):
    data = write_chat_corpus(tmp_path / "data", rows=40, valid_rows=30)
    cfg = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=valid", "data.num_validation_samples=12")
    checked = streaming.check_stream(cfg)
    assert [r["messages"][0]["content"].split(":")[0] for r in checked.valid.rows] == [
        f"question {i}" for i in range(40, 52)]


def test_a_bad_row_further_on_stops_training_naming_file_and_row(tmp_path):
    bad = load.RENDER_CHECK_ROWS + 20  # past the rows the preflight reads
    data = write_chat_corpus(tmp_path / "data", rows=bad + 10)
    train = data / "train.jsonl"
    lines = train.read_text().splitlines()
    row = json.loads(lines[bad])
    row["messages"] = [{"role": "user", "content": "no reply"}]
    cfg = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null", "data.block_size=64")
    lines[bad] = json.dumps(row)
    train.write_text("\n".join(lines) + "\n")
    stream = stream_of(cfg)
    with pytest.raises(DataFileError, match=rf"{train}: row {bad + 1}: messages: no assistant turn"):
        take(iter(stream), bad + 10)
    # shuffled, the row is still named by its place in the file
    shuffled = planned_cfg(tmp_path, f"data.path={data}", "data.valid_split=null", "data.block_size=64",
                           "data.shuffle_window=16")
    with pytest.raises(DataFileError, match=rf"{train}: row {bad + 1}: messages: no assistant turn"):
        take(iter(stream_of(shuffled)), bad + 10)


def probe_env(probe_dir: Path, extra: dict | None = None) -> dict:
    return cli_env(STREAM_PROBE, PROBE_SITE, TUNELAUNCH_STREAM_PROBE_DIR=str(probe_dir), **(extra or {}))


def test_a_corpus_far_larger_than_the_workers_memory_growth_is_streamed(tmp_path):
    """The worker on a 400 MB corpus against the same worker on 2000 rows: peak RSS (VmHWM, from inside the
    worker) may not grow by a quarter of the corpus (measured: 37-58 MB, the reader's chunks and Arrow buffers).
    The JSON alone, held as Python rows, is several times its size on disk, so a worker that materialised the
    corpus would fail."""
    small = write_chat_corpus(tmp_path / "small", rows=2000)
    args = ("recipe=sft/chat_tiny", "trainer=default", "data.streaming=true", "data.valid_split=null",
            "training.max_steps=4", "training.save_strategy=no", "data.block_size=64", "data.packing_buffer=200")
    run = run_cli("train", *args, f"project_name={tmp_path / 'small-run'}", f"data.path={small}", cwd=tmp_path,
                  env=probe_env(tmp_path / "small-probe"))
    assert run.returncode == 0, run.stderr[-3000:]
    baseline = json.loads((tmp_path / "small-probe" / "rank0.json").read_text())

    started = time.monotonic()
    size = write_large_corpus(tmp_path / "large" / "train.jsonl", megabytes=400)
    assert time.monotonic() - started < 10
    # The same resolved run on the large corpus, started as the launcher starts a worker.
    config = yaml.safe_load((tmp_path / "small-run" / "config.yaml").read_text())
    config["project_name"] = str(tmp_path / "large-run")
    config["data"]["path"] = str(tmp_path / "large")
    (tmp_path / "large-run").mkdir()
    (tmp_path / "large-run" / "config.yaml").write_text(yaml.safe_dump(config))
    worker = subprocess.run([sys.executable, "-m", "launcher.worker", str(tmp_path / "large-run" / "config.yaml")],
                            cwd=tmp_path, env=probe_env(tmp_path / "large-probe"), capture_output=True, text=True,
                            timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    large = json.loads((tmp_path / "large-probe" / "rank0.json").read_text())
    assert json.loads((tmp_path / "large-run" / "trainer_state.json").read_text())["global_step"] == 4
    for peak in ("peak_rss_trained_kib", "peak_rss_kib"):  # training, then the whole worker (its records too)
        growth = (large[peak] - baseline[peak]) * 1024
        assert growth < size / 4, (f"{peak}: peak RSS grew by {growth / 2**20:.0f} MB with a "
                                    f"{size / 2**20:.0f} MB corpus")
    assert len(large["ids"]) < 20000  # it read the head it trained on, not the corpus
    (tmp_path / "large" / "train.jsonl").unlink()


# ---- kill -9 and resume, one process (slow)

RESUME_ARGS = ("recipe=sft/chat_tiny", "data.streaming=true", "data.valid_split=null", "training.deterministic=true",
               "training.max_steps=12", "training.save_strategy=steps", "training.save_steps=3",
               "training.save_total_limit=10", "logging.steps=1")
LAYOUTS = {"sft-packed": ("trainer=sft", "data.packing=true", "data.packing_buffer=16", "data.block_size=128"),
           "default": ("trainer=default", "data.packing_buffer=10", "data.block_size=64", "data.shuffle_window=25")}


def train_command(run_dir: Path, data: Path, *extra: str) -> list[str]:
    return tunelaunch("train", *RESUME_ARGS, f"data.path={data}", f"project_name={run_dir}", *extra)


def kill_after_checkpoint_and_resume(tmp_path: Path, data: Path, extra: tuple, env: dict) -> Path:
    """Start the run slowed by a sleep per step, kill -9 every process of it a step or two after checkpoint-6,
    then run the same command again; the resumed run folder."""
    from tests.distributed.conftest import kill_everything

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_command(run_dir, data, *extra), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=probe_env(tmp_path / "killed-probe", {**env, "TUNELAUNCH_PROBE_STEP_SLEEP": "0.5"}))
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint-6" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint-6"
        time.sleep(0.2)
    time.sleep(0.7)
    kill_everything(proc)
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "running"
    assert not (run_dir / "checkpoint-12").exists()
    again = subprocess.run(train_command(run_dir, data, *extra), cwd=tmp_path, capture_output=True, text=True,
                           env=probe_env(tmp_path / "again-probe", env), timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming the stream where checkpoint-" in again.stderr + again.stdout
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 12
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kill_9_mid_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, layout):
    from tests.distributed.conftest import max_weight_diff

    data = write_chat_corpus(tmp_path / "data", rows=3000)
    whole = subprocess.run(train_command(tmp_path / "whole", data, *LAYOUTS[layout]), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, env=probe_env(tmp_path / "whole-probe"))
    assert whole.returncode == 0, whole.stderr[-4000:]
    resumed = kill_after_checkpoint_and_resume(tmp_path, data, LAYOUTS[layout], {})
    diff = max_weight_diff(tmp_path / "whole", resumed)
    assert diff <= 1e-5, f"resumed weights differ from the uninterrupted run's by {diff}"


# ---- a streamed mixture

def streamed_mixture_cfg(tmp_path: Path, paths: list, *overrides: str):
    from launcher.planning import make_plan
    from tests.integration.test_mixture import config_file

    return make_plan(config_file(tmp_path, paths), [f"project_name={tmp_path / 'run'}", "data.streaming=true",
                                                    "data.valid_split=null", "training.max_steps=10",
                                                    "data.block_size=128", *overrides]).cfg


def mixed_rows(cfg, rank: int = 0, world: int = 1):
    """The stream of mixed canonical rows a process tokenises (with where each came from)."""
    checked = streaming.check_stream(cfg)
    assert not checked.problems, checked.problems
    return streaming._mixed_rows(cfg, checked.mixture, rank, world)


def test_a_streamed_mixture_draws_by_weight_and_resumes_exactly(tmp_path):
    """Three sources in three formats (chat JSONL, Alpaca CSV, prompt/completion parquet) streamed at once: rows are
    drawn by the weights 0.5/0.3/0.2 (within 3 points over 1,000 rows), every source's rows in their order, and
    the tokenised stream's saved position resumes it exactly."""
    from tests.unit.data.test_mixture import write_sources

    paths = write_sources(tmp_path, (1000, 600, 400))
    cfg = streamed_mixture_cfg(tmp_path, paths)
    wheres = [row[streaming.WHERE] for _, row in zip(range(1000), iter(mixed_rows(cfg)))]
    for index, (path, weight) in enumerate(zip(paths, (0.5, 0.3, 0.2))):
        mine = [w for w in wheres if w.startswith(f"data.datasets[{index}] ({path.stem}): {path}: row ")]
        assert abs(len(mine) / 1000 - weight) <= 0.03, (index, len(mine))
        assert [int(w.rsplit(" ", 1)[1]) for w in mine] == list(range(1, len(mine) + 1))  # in order, none twice
    whole = stream_of(cfg)
    it = iter(whole)
    take(it, 9)
    state = json.loads(json.dumps(whole.state_dict()))
    rest = take(it, 40)
    resumed = stream_of(cfg)
    resumed.load_state_dict(state)
    assert take(iter(resumed), 40) == rest


def test_each_process_mixes_its_own_share_of_every_source(tmp_path):
    from tests.unit.data.test_mixture import write_sources

    paths = write_sources(tmp_path, (40, 30, 20))
    cfg = streamed_mixture_cfg(tmp_path, paths)
    seen = {rank: [row[streaming.WHERE] for _, row in zip(range(45), iter(mixed_rows(cfg, rank, 2)))]
            for rank in (0, 1)}
    assert not set(seen[0]) & set(seen[1])
    for rank, wheres in seen.items():
        numbers = [int(w.rsplit(" ", 1)[1]) for w in wheres]
        assert all((n - 1) % 2 == rank for n in numbers), wheres  # rank r: rows r, r + 2, ... of each source
        assert {w.split(" ", 1)[0] for w in wheres} == {"data.datasets[0]", "data.datasets[1]", "data.datasets[2]"}


def test_a_bad_row_further_in_a_streamed_source_is_named_with_source_file_and_row(tmp_path):
    from tests.unit.data.test_mixture import write_sources

    bad = load.RENDER_CHECK_ROWS + 50  # past the head the preflight checks
    paths = write_sources(tmp_path, (30, bad + 20, 30))
    alpaca = paths[1]
    lines = alpaca.read_text().splitlines()
    lines[bad] = "an instruction,,"  # no output
    alpaca.write_text("\n".join(lines) + "\n")
    cfg = streamed_mixture_cfg(tmp_path, paths, "data.mixture=concat")
    with pytest.raises(DataFileError, match=rf"data.datasets\[1\] \(alpaca\): {alpaca}: row {bad}: "):
        take(iter(stream_of(cfg)), 30 + bad + 10)


def test_a_bad_column_in_a_streamed_source_stops_the_plan_naming_source_and_file(tmp_path):
    from launcher.config.errors import ConfigError
    from launcher.planning import make_plan
    from tests.integration.test_mixture import config_with_a_bad_column

    config, paths = config_with_a_bad_column(tmp_path)
    with pytest.raises(ConfigError) as err:
        make_plan(config, [f"project_name={tmp_path / 'run'}", "data.streaming=true", "training.max_steps=10"])
    assert (f"data.datasets[1] (alpaca): {paths[1]}: data.datasets[1].column_mapping.text_column=response names a "
            "column the file does not have") in str(err.value)


def test_a_streamed_row_is_encoded_as_the_run_says_reasoning_untrained_included(tmp_path):
    """The stream encodes with the run's encoder settings (SFTEncoder.for_run), trainer.train_on_reasoning too:
    the first streamed sample is the prepared encoding of the first row, and differs from it trained."""
    from launcher import models
    from launcher.data.encode import SFTEncoder

    rows = json.loads((REPO / "samples" / "reasoning" / "train.json").read_text())
    (tmp_path / "reasoning").mkdir()
    (tmp_path / "reasoning" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = planned_cfg(tmp_path, f"data.path={tmp_path / 'reasoning'}", "data.valid_split=null",
                      "trainer.train_on_reasoning=false")
    checked = streaming.check_stream(cfg)
    tokenizer = models.load_tokenizer(cfg)
    first = checked.train.rows[0]
    expected = SFTEncoder.for_run(cfg, tokenizer, checked.format)(first)
    streamed = take(iter(stream_of(cfg)), 1)[0]
    assert (streamed["input_ids"], streamed["labels"]) == (expected.input_ids, expected.labels)
    cfg.trainer.train_on_reasoning = True
    assert SFTEncoder.for_run(cfg, tokenizer, checked.format)(first).trained > expected.trained
