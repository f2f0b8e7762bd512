"""data.streaming with two processes (DDP, gloo on CPU): each rank reads its own rows of the stream (recorded
from inside the ranks: no row is read by both), and kill -9 after a checkpoint then the same command resumes
every rank's stream where it was: the final weights equal an uninterrupted two-process run's."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.distributed.conftest import max_weight_diff
from tests.integration.streaming_corpus import write_chat_corpus
from tests.integration.test_streaming import LAYOUTS, kill_after_checkpoint_and_resume, probe_env, train_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
DDP = ("distributed=ddp", "distributed.num_processes=2")


def test_two_ranks_read_disjoint_rows_and_a_kill_9_resumes_exactly(tmp_path):
    data = write_chat_corpus(tmp_path / "data", rows=3000)
    args = (*LAYOUTS["sft-packed"], *DDP)
    whole = subprocess.run(train_command(tmp_path / "whole", data, *args), cwd=tmp_path, capture_output=True,
                           text=True, timeout=900, env=probe_env(tmp_path / "whole-probe"))
    assert whole.returncode == 0, whole.stderr[-4000:]
    ranks = {r: json.loads((tmp_path / "whole-probe" / f"rank{r}.json").read_text()) for r in (0, 1)}
    ids = {r: ranks[r]["ids"] for r in ranks}
    assert ids[0] and ids[1]
    assert not set(ids[0]) & set(ids[1]), "a row was read by both ranks"
    assert all(i % 2 == r for r in ids for i in ids[r])  # one file: datasets deals it row by row
    for r in (0, 1):  # the rows each rank reads are its first ones in file order (some more than once: the
        # libraries peek at the first sample of a dataset), far from the whole corpus
        assert sorted(set(ids[r])) == list(range(r, max(ids[r]) + 1, 2)) and len(set(ids[r])) < 3000 / 4

    resumed = kill_after_checkpoint_and_resume(tmp_path, data, args, {})
    for r in (0, 1):
        saved = json.loads((resumed / "checkpoint-6" / f"stream_state_rank{r}.json").read_text())
        assert saved["rank"] == r and saved["world_size"] == 2
    diff = max_weight_diff(tmp_path / "whole", resumed)
    assert diff <= 1e-5, f"resumed weights differ from the uninterrupted run's by {diff}"
