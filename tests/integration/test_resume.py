"""Resuming an unfinished run from the user's side (issue 17, "safe resume"): a configuration that would train
something else than the checkpoints is refused before anything is written; an extended run or a chosen checkpoint
resumes; a resume that fails before it started leaves the run folder as it was."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

# A LoRA run of 4 steps that keeps checkpoint-2 and checkpoint-4; evaluation off to keep every run short.
BASE = ("recipe=sft/chat_tiny", "peft=lora", "training.save_strategy=steps", "training.save_steps=2",
        "training.save_total_limit=2", "training.eval_strategy=no")


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """An unfinished LoRA run as a kill after checkpoint-4 leaves it (trained once for the whole module)."""
    root = tmp_path_factory.mktemp("base")
    run = root / "run"
    first = run_cli("train", *BASE, f"project_name={run}", "training.max_steps=4", cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    (run / "run_state.json").write_text(json.dumps({"status": "running"}))  # killed before it finished
    return run


@pytest.fixture
def run(killed_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(killed_run, copy)
    return copy


def digests(folder: Path, only=lambda rel: True) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and only(str(f.relative_to(folder)))}


def config_and_checkpoints(rel: str) -> bool:
    return rel == "config.yaml" or rel.startswith("checkpoint-")


def test_a_resume_with_another_method_data_or_lora_shape_is_refused_and_writes_nothing(run, tmp_path):
    other_data = tmp_path / "other-data"
    shutil.copytree(REPO / "samples" / "chat", other_data)
    before = digests(run)
    result = run_cli("train", *BASE, f"project_name={run}", "training.max_steps=8", f"data.path={other_data}",
                     "peft.r=8", "trainer.train_on=all", "training.lr=0.01", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    for change in (f"data.path '{REPO / 'samples' / 'chat'}' -> '{other_data}'", "peft.r 16 -> 8",
                   "trainer.train_on 'completion' -> 'all'", "training.lr 0.001 -> 0.01"):
        assert change in result.stderr, result.stderr
    assert "holds an unfinished run whose checkpoint-4" in result.stderr
    assert "project_name=" in result.stderr and "overwrite=true" in result.stderr
    assert result.stderr.count(f"{run} holds an unfinished run") == 1  # one problem for all the changes
    assert "launcher.worker" not in result.stdout
    assert digests(run) == before  # not a byte written


def test_an_extended_max_steps_resumes_and_ends_at_the_new_total(run, tmp_path):
    args = ("train", *BASE, f"project_name={run}", "training.max_steps=6")
    plan = run_cli("plan", *args[1:], cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "training resumes from checkpoint-4" in plan.stdout
    assert "resume: training.max_steps 4 -> 6" in plan.stdout

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "resuming from checkpoint-4" in log and "resumed at step 4 of 6" in log
    state = json.loads((run / "trainer_state.json").read_text())
    assert (state["global_step"], state["max_steps"]) == (6, 6)
    # the progress bar counts from the checkpoint's step to the new total, never to the old one (transformers'
    # own bar is drawn at 0/6 when created, then jumps to 5/6 at the first step; ours starts at 4/6)
    err = result.stderr
    assert "4/6 [" in err and err.index("4/6 [") < err.index("5/6 [") < err.index("6/6 [")
    assert "/4 [" not in err and all(f" {n}/6 [" not in err for n in (1, 2, 3))
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["max_steps"] == 6
    assert not (run / "config.resume.yaml").exists()


def test_resume_from_a_chosen_checkpoint(run, tmp_path):
    result = run_cli("train", *BASE, f"project_name={run}", "training.max_steps=4",
                     "training.resume_from=checkpoint-2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "resuming from checkpoint-2" in log and "resuming from checkpoint-4" not in log
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]  # steps 3 and 4 trained again
    # the choice was for this start: a restart of the run (a requeue) continues from its newest checkpoint
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["resume_from"] == "latest"


def test_a_resume_that_fails_before_it_started_leaves_config_and_checkpoints_as_they_were(run, tmp_path):
    # checkpoint-4's optimizer state damaged on disk: the worker fails while loading it, before training resumes
    (run / "checkpoint-4" / "optimizer.pt").write_bytes(b"damaged")
    before = digests(run, config_and_checkpoints)
    result = run_cli("train", *BASE, f"project_name={run}", "training.max_steps=6", "logging.steps=1",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert digests(run, config_and_checkpoints) == before
    assert not (run / "config.resume.yaml").exists()
    assert "The resume from checkpoint-4 failed before training started" in result.stderr
    assert "training.resume_from=checkpoint-N (it has: checkpoint-2, checkpoint-4)" in result.stderr
    assert "run the same command again" not in result.stderr
