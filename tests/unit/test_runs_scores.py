"""`tunelaunch runs DIR` with eval scores: a column per score some run has, sorted best first in lm-eval's own
direction for it; `--plot` on runs that logged nothing (tests/integration/test_compare.py draws a real sweep). The
scores are lm-evaluation-harness's real output on two different tiny models (test_model_card_scores.py runs it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from launcher import run_dir as runs
from launcher.embedded import build_tiny_llama
from launcher.evaluation.scores import read_scores
from launcher.runs import COLUMNS
from tests.conftest import run_cli
from tests.unit.helpers import plan
from tests.unit.test_model_card_scores import lm_eval_results, write_eval


def reseeded_tiny(out: Path, seed: int) -> Path:
    """The embedded tiny model's shape and tokenizer with other random weights: a second model that scores
    differently."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    tiny = build_tiny_llama()
    shutil.copytree(tiny, out)
    torch.manual_seed(seed)
    LlamaForCausalLM(AutoConfig.from_pretrained(tiny)).save_pretrained(out)
    return out


def make_run(root: Path, name: str, train_loss: float) -> Path:
    """A finished run's folder as `runs` reads it (config.yaml, run_state.json), without weights."""
    cfg = plan(root / name).cfg
    folder = root / name
    folder.mkdir(parents=True)
    runs.write_config(folder, cfg)
    runs.write_state(folder, runs.Status.FINISHED, train_loss=train_loss, global_step=4)
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Three runs: `a` scored with the tiny model, `b` with a reseeded one, `c` never scored."""
    root = tmp_path_factory.mktemp("sweep")
    other = reseeded_tiny(tmp_path_factory.mktemp("models") / "reseeded", seed=4)
    write_eval(make_run(root, "a", 2.0), lm_eval_results(str(build_tiny_llama())))
    write_eval(make_run(root, "b", 1.0), lm_eval_results(str(other)))
    make_run(root, "c", 3.0)
    return root


def table(root: Path, *args: str) -> list[dict[str, str]]:
    """`tunelaunch runs ROOT ARGS` as rows of {column: cell} (no cell here holds a space but overrides, last)."""
    lines = run_cli("runs", root, *args, cwd=None, check=0).stdout.splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(None, len(header) - 1))) for line in lines[1:]]


def test_scores_are_columns_after_the_table_s_own_and_sort_best_first(sweep):
    a, b = read_scores(sweep / "a"), read_scores(sweep / "b")
    assert a["tiny_text/word_perplexity"] != b["tiny_text/word_perplexity"]  # else the sort below shows nothing
    assert a["tiny_choice/acc"] != b["tiny_choice/acc"], "pick another seed in `sweep`: the accuracies tie"

    rows = table(sweep)
    assert [r["run"] for r in rows] == ["a", "b", "c"]
    scores = list(a)
    assert list(rows[0]) == [*COLUMNS[:-1], *scores]  # no overrides cell: none of these runs has a launch.json
    for row, expected in zip(rows, (a, b, {})):
        assert {k: row[k] for k in scores} == {k: f"{expected[k]:.4f}" if k in expected else "-" for k in scores}

    # perplexity: lower is better (lm-eval says so), so the lower one first; the unscored run last
    lower = min("ab", key=lambda r: read_scores(sweep / r)["tiny_text/word_perplexity"])
    by_perplexity = [r["run"] for r in table(sweep, "--sort", "tiny_text/word_perplexity")]
    assert by_perplexity == [lower, *"ab".replace(lower, ""), "c"]
    # accuracy: higher is better, the higher one first
    higher = max("ab", key=lambda r: read_scores(sweep / r)["tiny_choice/acc"])
    assert [r["run"] for r in table(sweep, "--sort", "tiny_choice/acc")] == [higher, *"ab".replace(higher, ""), "c"]
    # the table's own columns still ascend
    assert [r["run"] for r in table(sweep, "--sort", "train_loss")] == ["b", "a", "c"]


def test_a_folder_without_scores_has_no_score_columns(sweep):
    rows = table(sweep / "c")
    assert list(rows[0]) == list(COLUMNS[:-1]) and rows[0]["train_loss"] == "3.0000"


def test_an_unknown_sort_column_names_the_ones_there_are(sweep):
    done = run_cli("runs", sweep, "--sort", "arc_easy/acc", cwd=None)
    assert done.returncode == 2 and not done.stdout
    assert "--sort arc_easy/acc: not a column" in done.stderr and "tiny_choice/acc" in done.stderr
    done = run_cli("runs", sweep / "c", "--sort", "tiny_choice/acc", cwd=None)
    assert done.returncode == 2 and "no run under it has eval scores" in done.stderr


def test_plot_without_a_trainer_state_says_what_is_missing(sweep):
    done = run_cli("runs", sweep, "--plot", "train_loss", cwd=None)
    assert done.returncode == 2 and "no run under" in done.stderr and "trainer_state.json" in done.stderr
