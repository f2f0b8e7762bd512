"""tunelaunch on a real Slurm cluster (scripts/slurm-cluster.sh: two nodes on this machine): `tunelaunch submit`
and `sbatch slurm/train.sbatch` form one world across the nodes, a preemption signal checkpoints, requeues and
resumes to the same weights as an uninterrupted run, and a sweep is one job array. Nothing is mocked: real
sbatch, srun, accelerate launch and workers; what distribution means is checked from inside the ranks by the
probe of tests/distributed (injected through PYTHONPATH, which sbatch passes on to the job)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tunelaunch
from tests.distributed.conftest import probe_env, read_probes
from tests.slurm.conftest import SlurmCluster, job_fields, job_output, sbatch, wait_for_array, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
TINY = ("recipe=sft/chat_tiny", "training.deterministic=true")


def job_env(probe_dir: Path | None = None) -> dict:
    """The probe's environment (this venv first on PATH), without this process's Slurm variables: a whole
    environment, for sbatch and submit, which pass it on to the job."""
    return probe_env(probe_dir, dict.fromkeys(k for k in os.environ if k.startswith("SLURM_")))


def submit(cwd: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(tunelaunch("submit", *args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def submitted_id(out: str) -> str:
    return re.search(r"Submitted job (?:array )?(\d+)", out).group(1)


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_one_world_over_two_nodes(probe_dir: Path, log: str) -> None:
    probes = read_probes(probe_dir)
    assert sorted(probes) == [0, 1], probes.keys()
    assert {p["node_rank_env"] for p in probes.values()} == {0, 1}  # each node its own rank
    for p in probes.values():
        assert (p["world_size"], p["local_rank_env"], p["wrapper"]) == (2, 0, "DistributedDataParallel")
    assert probes[0]["params_sha256"] == probes[1]["params_sha256"]  # one model, trained together
    assert "node rank 0 (node1)" in log and "node rank 1 (node2)" in log


def test_submit_runs_one_world_across_two_nodes(slurm_cluster: SlurmCluster, tmp_path):
    probe = tmp_path / "probe"
    done = submit(tmp_path, *TINY, "cluster.nodes=2", "training.max_steps=4", "project_name=two-nodes",
                  env=job_env(probe))
    job = submitted_id(done.stdout)
    assert "tail -f" in done.stdout and "tunelaunch runs" in done.stdout
    fields = wait_for_job(job, timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert fields["NumNodes"] == "2"
    run = tmp_path / "two-nodes"
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert (run / "job.sbatch").is_file() and (run / "config.yaml").is_file()
    assert_one_world_over_two_nodes(probe, log)


def test_sbatch_template_runs_the_same_path(slurm_cluster: SlurmCluster, tmp_path):
    probe = tmp_path / "probe"
    job = sbatch(["--nodes=2", str(REPO / "slurm" / "train.sbatch"), *TINY, "training.max_steps=4",
                  "project_name=template"], cwd=tmp_path, env=job_env(probe))
    fields = wait_for_job(job, timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert "cluster: this Slurm allocation has 2 node(s)" in log  # the node count came from the allocation
    assert json.loads((tmp_path / "template" / "run_state.json").read_text())["status"] == "finished"
    assert_one_world_over_two_nodes(probe, log)


def test_preemption_checkpoints_requeues_and_resumes_to_the_same_weights(slurm_cluster: SlurmCluster, tmp_path):
    steps = ("training.max_steps=12", "training.save_strategy=steps", "training.save_steps=1000", "logging.steps=1",
             "training.eval_strategy=no")
    env = job_env()
    whole = submitted_id(submit(tmp_path, *TINY, *steps, "cluster.nodes=2", "project_name=whole", env=env).stdout)
    slow = {**env, "TUNELAUNCH_PROBE_STEP_SLEEP": "1"}  # the probe sleeps after each step: time to signal mid-run
    cut = submitted_id(submit(tmp_path, *TINY, *steps, "cluster.nodes=2", "project_name=cut", env=slow).stdout)
    deadline = time.monotonic() + 300
    while job_output(job_fields(cut)).count("{'loss'") < 2:  # two steps done
        assert time.monotonic() < deadline, job_output(job_fields(cut))[-3000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", cut], check=True)
    fields = wait_for_job(cut, timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert fields["Restarts"] == "1"
    assert "SLURM_RESTART_COUNT=1" in log
    saved = re.search(r"requeueing job", log) and re.search(r"resuming from (checkpoint-\d+)", log)
    assert saved, log[-3000:]
    assert int(saved.group(1).split("-")[1]) < 12  # stopped mid-run, not at the end
    state = json.loads((tmp_path / "cut" / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 12
    assert wait_for_job(whole, timeout=600)["JobState"] == "COMPLETED"
    assert max_diff(weights(tmp_path / "whole"), weights(tmp_path / "cut")) <= 1e-5


def test_submit_sweep_is_one_job_array(slurm_cluster: SlurmCluster, tmp_path):
    done = submit(tmp_path, "-m", *TINY, "peft=lora", "training.max_steps=2", "training.lr=1e-4,3e-4",
                  "peft.r=8,16", "project_name=sweep", "cluster.array_parallelism=2", env=job_env())
    assert "Submitted job array" in done.stdout
    array = submitted_id(done.stdout)
    tasks = wait_for_array(array, timeout=900)
    assert sorted(tasks) == ["0", "1", "2", "3"]
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"}, {k: job_output(t)[-1500:] for k, t in tasks.items()}
    trials = sorted(p.parent for p in (tmp_path / "sweep").glob("*/run_state.json"))
    assert len(trials) == 4
    # the array's script, its list of trials and its logs live in the sweep's folder, not where submit ran
    assert (tmp_path / "sweep" / "sweep.sbatch").is_file() and len(list((tmp_path / "sweep" / "slurm").glob("*.out"))) == 4
    assert sorted(json.loads((tmp_path / "sweep" / "trials.json").read_text())) == sorted(str(t.resolve()) for t in trials)
    assert not list(tmp_path.glob("*.sbatch")) and not (tmp_path / "slurm").exists()
    table = run_cli("runs", tmp_path / "sweep", "--sort", "train_loss", cwd=None, check=0).stdout.splitlines()
    assert len(table) == 5
    for row in table[1:]:
        cells = row.split()
        assert cells[1] == "finished" and cells[2] == "2/2"
        float(cells[3])  # a final train loss
    assert {re.search(r"training\.lr=\S+ peft\.r=\d+", row).group(0) for row in table[1:]} == {
        f"training.lr={lr} peft.r={r}" for lr in ("0.0001", "0.0003") for r in (8, 16)}


def test_preprocessing_job_runs_first_and_training_reuses_its_cache(slurm_cluster: SlurmCluster, tmp_path):
    env = job_env()
    env["TUNELAUNCH_CACHE"] = str(tmp_path / "cache")  # a fresh cache: the preparation job must fill it
    done = submit(tmp_path, *TINY, "training.max_steps=2", "cluster.preprocess_job=true", "project_name=prep",
                  env=env)
    ids = re.search(r"Submitted job (\d+) \(after data preparation job (\d+)\)", done.stdout)
    assert ids, done.stdout
    train, prep = ids.groups()
    assert wait_for_job(prep, timeout=600)["JobState"] == "COMPLETED"
    fields = wait_for_job(train, timeout=600)
    assert fields["JobState"] == "COMPLETED", job_output(fields)[-3000:]
    assert "data: reused cache" in (tmp_path / "prep" / "train.log").read_text()


def test_grpo_with_a_user_reward_file_runs_one_world_across_two_nodes(slurm_cluster: SlurmCluster, tmp_path):
    """An online method through `submit`: each node samples its own prompts, the user's reward file (named relative
    to the submit folder, made absolute by plan) is imported on every node, the ranks end with one model."""
    (tmp_path / "my_rewards.py").write_text("def digits(completions, **kwargs):\n"
                                            "    return [float(sum(ch.isdigit() for ch in str(c)) > 0) for c in completions]\n")
    probe = tmp_path / "probe"
    done = submit(tmp_path, "recipe=grpo/format_tiny", "trainer.rewards=[format,my_rewards.py:digits]",
                  "cluster.nodes=2", "training.max_steps=2", "logging.steps=1", "project_name=grpo-two-nodes",
                  env=job_env(probe))
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    run = tmp_path / "grpo-two-nodes"
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "reward" in h]
    assert len(history) == 2 and all("rewards/digits/mean" in h for h in history)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    first = [json.dumps(r["prompt"]) for r in rows if r["step"] == 1]
    assert len(first) == 16 and not set(first[:8]) & set(first[8:])  # each node its own prompts
    assert_one_world_over_two_nodes(probe, log)


@pytest.mark.parametrize("method", ["rloo", "distill"])
def test_rloo_and_distill_train_through_submit(slurm_cluster: SlurmCluster, tmp_path, method):
    """The other online methods through `submit` on one node: the job completes and the run is finished, with its
    sampled completions; distill's teacher is a run folder of the same tiny model trained first, as its recipe says."""
    extra = ()
    if method == "distill":
        from launcher.embedded import build_tiny_llama
        from tests.integration.test_distill import random_adapter_teacher

        extra = (f"trainer.teacher={random_adapter_teacher(build_tiny_llama(), tmp_path / 'teacher')}",
                 "data.max_completion_length=8")
    recipe = "distill/tiny_from_run" if method == "distill" else "rloo/format_tiny"
    done = submit(tmp_path, f"recipe={recipe}", *extra, "training.max_steps=2", "logging.steps=1",
                  f"project_name={method}-job", env=job_env())
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    run = tmp_path / f"{method}-job"
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert {json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()} == {1, 2}


def test_eval_tasks_score_the_run_in_a_job_that_starts_after_training(slurm_cluster: SlurmCluster, tmp_path):
    """eval.tasks on Slurm: the training job ends (its allocation released), then a one-node job it submitted with
    --dependency=afterok scores the finished run; `runs` shows the score."""
    task = REPO / "samples" / "eval" / "pirate.yaml"
    done = submit(tmp_path, *TINY, "training.max_steps=2", f"eval.tasks=[{task}]", "eval.limit=4",
                  "project_name=scored", env=job_env())
    train = submitted_id(done.stdout)
    trained = wait_for_job(train, timeout=600)
    log = job_output(trained)
    assert trained["JobState"] == "COMPLETED", log[-3000:]
    run = tmp_path / "scored"
    assert not (run / "eval").exists() or not any((run / "eval").iterdir())  # training did not score it itself
    events = [line.split("\t") for line in (run / "jobs.tsv").read_text().splitlines()]
    scoring = [e for e in events if e[2] == "eval"]
    assert [e[3] for e in scoring] == ["submitted"], events
    scorer = scoring[0][1]
    assert scorer != train and f"in job {scorer} once this job has ended" in log
    scored = wait_for_job(scorer, timeout=600)
    assert scored["JobState"] == "COMPLETED", job_output(scored)[-3000:]
    assert scored["NumNodes"] == "1" and scored["JobName"] == "scored-eval"
    assert scored["StartTime"] >= trained["EndTime"]  # ISO times: it waited for the training job to end
    results = json.loads((run / "eval" / "pirate.json").read_text())
    assert results["results"]["pirate"]["acc,none"] is not None
    table = run_cli("runs", str(run), cwd=tmp_path)
    assert table.returncode == 0 and "pirate/acc" in table.stdout, table.stdout + table.stderr
