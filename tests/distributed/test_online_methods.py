"""grpo on two real worker processes (DDP over gloo), and the exact resume of grpo, rloo and distill after kill -9,
sampling included.

What distribution means for an online method, checked from inside the workers (the probe) and from samples.jsonl
(rank 0 gathers every rank's prompts and completions in rank order): world size 2, identical parameters after
training, each rank sampling its own prompts, every prompt's group of num_generations completions whole on one
rank. And a run killed with kill -9 mid-run resumes, with the same command, to the weights of an uninterrupted
run (training.deterministic: the sampler's order and the sampling RNG are restored from the checkpoint)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.distributed.conftest import max_weight_diff, probe_env, train, train_command
from tests.distributed.test_exact_resume import kill_everything, state, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
GRPO = ("recipe=grpo/format_tiny", "logging.steps=1")
DDP = ("distributed=ddp", "distributed.num_processes=2")
G = 4  # the recipe's num_generations; batch_size 4 = one group per micro-batch


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("online")


def test_grpo_two_ranks_sample_their_own_prompts_in_whole_groups(base):
    run = train(base, "grpo-ddp", *GRPO, *DDP, "training.max_steps=3").ok()
    p0, p1 = run.probe(0), run.probe(1)
    for rank, p in ((0, p0), (1, p1)):
        assert (p["rank"], p["world_size"], p["trainer_world_size"]) == (rank, 2, 2)
        assert p["wrapper"] == "DistributedDataParallel" and p["global_step"] == 3
    assert p0["params_sha256"] == p1["params_sha256"]  # synchronised
    assert not set(b["sha256"] for b in p0["batches"]) & set(b["sha256"] for b in p1["batches"])

    rows = [json.loads(line) for line in (run.run_dir / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2, 3):
        batch = [json.dumps(r["prompt"]) for r in rows if r["step"] == step]
        # a round: 2 ranks x batch 4 x accumulation 2 = 16 completions, rank 0's 8 then rank 1's 8
        assert len(batch) == 16, len(batch)
        halves = batch[:8], batch[8:]
        for half in halves:  # whole groups: each prompt 4 times in a row
            assert all(len(set(half[i:i + G])) == 1 for i in range(0, 8, G)), half
        assert not set(halves[0]) & set(halves[1]), "both ranks sampled the same prompts"


@pytest.fixture(scope="module")
def teacher(base) -> Path:
    """The distill runs' teacher: the tiny model with a random LoRA adapter (it shares the student's vocabulary)."""
    from launcher.embedded import build_tiny_llama
    from tests.integration.test_distill import random_adapter_teacher

    return random_adapter_teacher(build_tiny_llama(), base / "teacher")


def recipe(method: str, teacher: Path) -> tuple[str, ...]:
    if method == "distill":
        return ("recipe=distill/tiny_from_run", f"trainer.teacher={teacher}", "data.max_completion_length=8",
                "training.batch_size=2", "training.gradient_accumulation=2")
    return (f"recipe={method}/format_tiny",)


@pytest.mark.parametrize("method", ["grpo", "rloo", "distill"])
def test_online_method_resumes_exactly_after_kill_9(base, method, teacher):
    args = (*recipe(method, teacher), "logging.steps=1", "training.deterministic=true", "training.max_steps=8", "training.save_strategy=steps",
            "training.save_steps=2", "training.save_total_limit=10")
    whole = train(base, f"{method}-whole", *args, probe=False).ok().run_dir
    name = f"{method}-kill9"
    proc = subprocess.Popen(train_command(base / name, *args), cwd=base, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=probe_env(None, {"TUNELAUNCH_PROBE_STEP_SLEEP": "1.0"}))
    wait_until(proc, lambda: (base / name / "checkpoint-4" / "trainer_state.json").is_file(), "checkpoint-4")
    time.sleep(1.5)  # a step past the checkpoint, mid-run
    kill_everything(proc)
    assert state(base / name)["status"] == "running"
    again = train(base, name, *args, probe=False).ok()
    assert "resuming from checkpoint-" in again.output
    assert state(again.run_dir)["status"] == "finished"
    assert max_weight_diff(whole, again.run_dir) <= 1e-5
    # the resumed run sampled the same completions after the checkpoint as the uninterrupted one
    def after(run_dir, step):
        return [(r["step"], r["completion"]) for r in map(json.loads, (run_dir / "samples.jsonl").open())
                if r["step"] > step]
    assert after(whole, 4) and after(whole, 4)[-8:] == after(again.run_dir, 4)[-8:]
