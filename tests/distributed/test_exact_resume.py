"""Stopped runs resume to exactly the weights of an uninterrupted run (training.deterministic, CPU): after kill -9
mid-run, kill -9 in the middle of a checkpoint save (the partial checkpoint is skipped, never loaded), Ctrl-C and
SIGTERM (graceful: every rank saves the same step, exit 75) - with one process and with 2-process DDP. Two
uninterrupted runs of one configuration are bitwise equal. The probe only slows the tiny run down (a sleep per
step, or in the middle of a save) so that the test can stop it where it means to."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import TIMEOUT, kill_everything, max_weight_diff, probe_env, train, train_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
STEPS = 12
ARGS = ("peft=lora", "training.deterministic=true", f"training.max_steps={STEPS}", "training.save_strategy=steps",
        "training.save_steps=3", "training.save_total_limit=10", "logging.steps=1")
DDP = ("distributed=ddp", "distributed.num_processes=2")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def whole(base) -> dict:
    """Uninterrupted runs: one process (twice, for reproducibility) and DDP."""
    return {"one": train(base, "whole-one", *ARGS, probe=False).ok().run_dir,
            "one-again": train(base, "whole-one-again", *ARGS, probe=False).ok().run_dir,
            "ddp": train(base, "whole-ddp", *ARGS, *DDP, probe=False).ok().run_dir}


def max_diff(a: Path, b: Path) -> float:
    return max_weight_diff(a, b, "adapter_model.safetensors")


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_state.json").read_text())


def start(base: Path, name: str, *overrides: str, **probe) -> subprocess.Popen:
    env = probe_env(None, {f"TUNELAUNCH_PROBE_{k.upper()}": str(v) for k, v in probe.items()})
    return subprocess.Popen(train_command(base / name, *ARGS, *overrides), cwd=base, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def resume(base: Path, name: str, *overrides: str):
    again = train(base, name, *ARGS, *overrides, probe=False).ok()
    assert state(again.run_dir)["status"] == "finished"
    assert json.loads((again.run_dir / "trainer_state.json").read_text())["global_step"] == STEPS
    return again


def test_two_uninterrupted_runs_are_bitwise_equal(whole):
    assert max_diff(whole["one"], whole["one-again"]) == 0.0


@pytest.mark.parametrize("layout", ["one", "ddp"])
def test_kill_9_mid_run_then_the_same_command_resumes_exactly(base, whole, layout):
    name, extra = f"kill9-{layout}", DDP if layout == "ddp" else ()
    proc = start(base, name, *extra, step_sleep=0.4)
    wait_until(proc, lambda: (base / name / "checkpoint-6" / "trainer_state.json").is_file(), "checkpoint-6")
    time.sleep(0.6)  # a step or two past the checkpoint, mid-run
    kill_everything(proc)
    assert state(base / name)["status"] == "running"  # nobody said goodbye
    again = resume(base, name, *extra)
    assert "resuming from checkpoint-" in again.output
    assert max_diff(whole[layout], again.run_dir) <= 1e-5


def test_kill_9_during_a_save_leaves_a_partial_checkpoint_that_is_never_loaded(base, whole):
    name = "kill-mid-save"
    proc = start(base, name, save_sleep=4)
    partial = base / name / "tmp-checkpoint-6"
    wait_until(proc, partial.is_dir, "the save of checkpoint-6")
    time.sleep(1.0)  # model and optimizer written, RNG state and trainer state not yet
    kill_everything(proc)
    assert partial.is_dir() and not (base / name / "checkpoint-6").exists()
    again = resume(base, name)
    assert "resuming from checkpoint-3" in again.output
    assert "removed incomplete checkpoint folders" in (base / name / "train.log").read_text()
    assert not list((base / name).glob("tmp-*"))
    assert max_diff(whole["one"], again.run_dir) <= 1e-5


@pytest.mark.parametrize("layout, sig", [("one", signal.SIGINT), ("ddp", signal.SIGTERM)])
def test_a_stop_signal_saves_every_rank_and_the_same_command_resumes_exactly(base, whole, layout, sig):
    name, extra = f"stop-{layout}", DDP if layout == "ddp" else ()
    proc = start(base, name, *extra, step_sleep=0.4)
    wait_until(proc, lambda: (base / name / "checkpoint-3" / "trainer_state.json").is_file(), "checkpoint-3")
    time.sleep(0.6)  # mid-run, between two saves
    proc.send_signal(sig)  # to the CLI only, as a terminal's Ctrl-C or a `kill` would
    out = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 75, out[-4000:]
    assert "run the same command again to resume" in out
    st = state(base / name)
    assert st["status"] == "preempted" and 0 < st["global_step"] < STEPS
    checkpoint = base / name / st["checkpoint"]
    assert (checkpoint / "trainer_state.json").is_file()
    ranks = 2 if layout == "ddp" else 1
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == (
        [f"rng_state_{r}.pth" for r in range(ranks)] if ranks > 1 else ["rng_state.pth"])
    again = resume(base, name, *extra)
    assert f"resuming from {st['checkpoint']}" in again.output
    assert max_diff(whole[layout], again.run_dir) <= 1e-5

