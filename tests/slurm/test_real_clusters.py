"""Slurm as real clusters are, on the real two-node test cluster (scripts/slurm-cluster.sh, CPU binding by
task/affinity): submitting from inside an allocation, a container that hides Slurm's commands, the cores a worker
is bound to, a preprocessing job that fails, a crashed worker survived by a requeue, and a site that refuses
`scontrol requeue`. Nothing is mocked: the stand-ins below are programs the job really runs, standing for a site's
container runtime and a site's requeue policy."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli, tunelaunch
from tests.distributed.conftest import read_probes
from tests.slurm.conftest import SlurmCluster, job_fields, job_output, sbatch, slurm, wait_for_job, wait_for_state
from tests.slurm.test_submit import (TINY, assert_one_world_over_two_nodes, job_env, max_diff, submit,
                                     submitted_id, weights)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
STEPS = ("training.max_steps=8", "training.save_strategy=steps", "training.save_steps=2", "logging.steps=1",
         "training.eval_strategy=no")


def events(run: Path) -> list[list[str]]:
    path = run / "jobs.tsv"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for_steps(job: str, steps: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while job_output(job_fields(job)).count("{'loss'") < steps:
        assert time.monotonic() < deadline, job_output(job_fields(job))[-3000:]
        time.sleep(0.5)


def stand_in(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_submit_from_an_salloc_shell_runs_the_cluster_it_asked_for(slurm_cluster: SlurmCluster, tmp_path):
    """`salloc -N1` sets SLURM_JOB_ID (and one node) in the shell; submit must still plan and run 2 nodes."""
    env = job_env(tmp_path / "probe")
    command = tunelaunch("submit", *TINY, "cluster.nodes=2", "training.max_steps=2", "project_name=from-salloc",
                         "cluster.snapshot=true")
    done = subprocess.run(["salloc", "-N1", "-n1", "--cpus-per-task=1", *command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "this Slurm allocation" not in done.stdout
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED" and fields["NumNodes"] == "2", log[-3000:]
    assert_one_world_over_two_nodes(tmp_path / "probe", log)
    # cluster.snapshot: both nodes ran the code copied at submission, not the checkout
    assert log.count(f"code {(tmp_path / 'from-salloc' / 'code' / 'launcher').resolve()}") == 2, log[-3000:]


CONTAINER = r'''#!/bin/bash
# A stand-in for `apptainer exec [--nv] --bind A,B --pwd DIR [--no-home] IMAGE CMD...`: runs CMD on the host, but
# with Slurm's commands shadowed by ones that record the call and fail, as in an image without Slurm.
[ "$1" = exec ] || { echo "stand-in apptainer: only exec" >&2; exit 2; }
shift
while [[ $1 == --* ]]; do
  case $1 in --bind|--pwd) [ "$1" = --pwd ] && cd "$2"; shift 2 ;; *) shift ;; esac
done
echo "$1" >> "$TUNELAUNCH_TEST_CONTAINER_LOG"   # the image
shift
export PATH="$TUNELAUNCH_TEST_NO_SLURM:$PATH"
exec "$@"
'''
REFUSE = r'''#!/bin/bash
echo "$(basename "$0") $*" >> "$TUNELAUNCH_TEST_CONTAINER_LOG.slurm-called"
echo "$(basename "$0"): not in this image" >&2
exit 127
'''


def test_a_container_runs_the_training_and_needs_no_slurm_inside(slurm_cluster: SlurmCluster, tmp_path):
    bin_dir, no_slurm = tmp_path / "bin", tmp_path / "no-slurm"
    stand_in(bin_dir, "apptainer", CONTAINER)
    for command in ("scontrol", "sinfo", "squeue", "srun", "sbatch", "sacct", "scancel"):
        stand_in(no_slurm, command, REFUSE)
    log = tmp_path / "container.log"
    env = job_env(tmp_path / "probe")
    env.update(PATH=f"{bin_dir}:{env['PATH']}", TUNELAUNCH_TEST_NO_SLURM=str(no_slurm),
               TUNELAUNCH_TEST_CONTAINER_LOG=str(log))
    done = submit(tmp_path, *TINY, "cluster.nodes=2", "training.max_steps=2", "project_name=boxed",
                  "cluster.container.kind=apptainer", "cluster.container.image=/images/train.sif",
                  f"cluster.python={sys.executable}", env=env)
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    out = job_output(fields)
    assert fields["JobState"] == "COMPLETED", out[-3000:]
    assert log.read_text().split() == ["/images/train.sif", "/images/train.sif"]  # one task per node, in the image
    assert not Path(f"{log}.slurm-called").exists(), Path(f"{log}.slurm-called").read_text()
    assert_one_world_over_two_nodes(tmp_path / "probe", out)


@pytest.mark.parametrize("cpus", [1, 2])
def test_workers_are_bound_to_the_cores_they_were_given(slurm_cluster: SlurmCluster, tmp_path, cpus):
    probe = tmp_path / "probe"
    done = submit(tmp_path, *TINY, "training.max_steps=1", f"cluster.cpus_per_task={cpus}", "project_name=bound",
                  env=job_env(probe))
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    assert fields["JobState"] == "COMPLETED", job_output(fields)[-3000:]
    probes = read_probes(probe)
    assert len(probes[0]["affinity"]) == cpus, probes[0]
    assert probes[0]["slurm_cpus_per_task"] == str(cpus)


def test_a_failed_preprocessing_job_leaves_no_training_job_pending(slurm_cluster: SlurmCluster, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text((slurm_cluster.repo / "samples" / "chat" / f"{split}.jsonl").read_text())
    # every core of both nodes taken, so the preprocessing job waits while the data goes bad under it
    blocker = sbatch(["-N2", "--ntasks-per-node=1", "--cpus-per-task=2", f"--output={tmp_path}/blocker.out",
                      "--wrap", "sleep 600"], cwd=tmp_path)
    wait_for_state(blocker, "RUNNING")
    env = job_env()
    env["TUNELAUNCH_CACHE"] = str(tmp_path / "cache")
    done = submit(tmp_path, *TINY, f"data.path={data}", "training.max_steps=2", "cluster.preprocess_job=true",
                  "project_name=prep-fails", env=env)
    train = submitted_id(done.stdout)
    recorded = {e[2]: e[1] for e in events(tmp_path / "prep-fails") if e[3] == "submitted"}
    assert recorded["train"] == train and "prepare" in recorded
    (data / "train.jsonl").write_text('{"messages": "not a list"}\n')  # planted after planning
    slurm(["scancel", str(blocker)])
    assert wait_for_job(recorded["prepare"], timeout=600)["JobState"] == "FAILED"
    fields = wait_for_job(train, timeout=120)  # cancelled by Slurm: never pending forever
    assert fields["JobState"] == "CANCELLED" and "Dependency" in fields.get("Reason", ""), fields


def worker_pids(run: Path, node_id: str) -> list[int]:
    import psutil

    config = str((run / "config.yaml").resolve())
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = proc.info["cmdline"] or []
            is_worker = cmd[-3:] == ["-m", "launcher.worker", config] and "launch" not in cmd  # not accelerate's
            if is_worker and (proc.info["environ"] or {}).get("SLURM_NODEID") == node_id:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_crashed_worker_is_survived_by_a_requeue_to_the_same_weights(slurm_cluster: SlurmCluster, tmp_path):
    env = job_env()
    whole = submitted_id(submit(tmp_path, *TINY, *STEPS, "cluster.nodes=2", "project_name=whole", env=env).stdout)
    slow = {**env, "TUNELAUNCH_PROBE_STEP_SLEEP": "1"}
    crash = submitted_id(submit(tmp_path, *TINY, *STEPS, "cluster.nodes=2", "project_name=crash", env=slow).stdout)
    run = tmp_path / "crash"
    wait_for_steps(crash, 3)  # a checkpoint (save_steps=2) exists
    pids = worker_pids(run, "1")
    assert pids, "no worker of node 1 found"
    os.kill(pids[0], signal.SIGKILL)
    fields = wait_for_job(crash, timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log[-4000:]
    assert "killed by SIGKILL" in log and "resuming from checkpoint-" in log
    kinds = [e[3] for e in events(run)]
    assert kinds.count("failed") == 1 and "requeued" in kinds and kinds[-1] == "finished", kinds
    state = json.loads((run / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 8
    assert wait_for_job(whole, timeout=600)["JobState"] == "COMPLETED"
    assert max_diff(weights(tmp_path / "whole"), weights(run)) <= 1e-5


SITE_SCONTROL = r'''#!/bin/bash
# A site that forbids users to requeue: `scontrol requeue` is refused, everything else is the real scontrol.
if [ "$1" = requeue ]; then
  echo "scontrol: error: Requested operation is presently disabled for job $2" >&2
  exit 1
fi
exec /usr/bin/scontrol "$@"
'''


def test_a_refused_requeue_resubmits_the_run(slurm_cluster: SlurmCluster, tmp_path):
    bin_dir = tmp_path / "site-bin"
    stand_in(bin_dir, "scontrol", SITE_SCONTROL)
    env = job_env()
    env.update(PATH=f"{bin_dir}:{env['PATH']}", TUNELAUNCH_PROBE_STEP_SLEEP="1")
    first = submitted_id(submit(tmp_path, *TINY, *STEPS, "project_name=policy", env=env).stdout)
    run = tmp_path / "policy"
    wait_for_steps(first, 2)
    slurm(["scancel", "--signal=USR1", "--batch", first])
    fields = wait_for_job(first, timeout=600)
    log = job_output(fields)
    assert "scontrol requeue was refused" in log and fields["Restarts"] == "0", log[-3000:]
    again = next(e[1] for e in events(run) if e[3] == "submitted" and e[4].startswith("resubmission of"))
    assert f"submitted again as job {again}" in log
    second = wait_for_job(again, timeout=600)
    assert second["JobState"] == "COMPLETED", job_output(second)[-3000:]
    assert "resuming from checkpoint-" in job_output(second)
    state = json.loads((run / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 8


def test_a_job_over_its_memory_is_reported_out_of_memory(slurm_cluster: SlurmCluster, tmp_path):
    """The test cluster enforces --mem (JobAcctGatherParams=OverMemoryKill): a node's step over 400 MB is killed;
    the job says so, does not requeue with max_failures=0, and `runs` shows OUT_OF_MEMORY."""
    done = submit(tmp_path, *TINY, "training.max_steps=2", "cluster.mem=400M", "cluster.max_failures=0",
                  "project_name=small", env=job_env())
    fields = wait_for_job(submitted_id(done.stdout), timeout=600)
    log = job_output(fields)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", log[-3000:]
    assert "out of memory" in log and "cluster.max_failures" in log
    table = run_cli("runs", tmp_path, cwd=None, check=0).stdout
    assert table.splitlines()[1].split()[:2] == ["small", "OUT_OF_MEMORY"], table
    assert [e[3] for e in events(tmp_path / "small")][-2:] == ["failed", "gave_up"]


def test_the_time_limits_warning_is_told_apart_from_a_preemption(slurm_cluster: SlurmCluster, tmp_path):
    """--time=2 with a 100 s lead: the warning comes with under ~3 minutes left, so the stop is a time limit; with
    cluster.max_requeues=0 the run then stops for good and says how to resume."""
    env = {**job_env(), "TUNELAUNCH_PROBE_STEP_SLEEP": "1"}
    done = submit(tmp_path, *TINY, "training.max_steps=400", "logging.steps=1", "training.eval_strategy=no",
                  "cluster.time=2", "cluster.signal_lead=100", "cluster.max_requeues=0", "project_name=limited",
                  env=env)
    fields = wait_for_job(submitted_id(done.stdout), timeout=400)
    log = job_output(fields)
    assert "SIGUSR1 received" in log and "sbatch" in log and "job.sbatch" in log, log[-3000:]
    kinds = [e[3] for e in events(tmp_path / "limited")]
    assert kinds[-2:] == ["timelimit", "gave_up"], kinds
    state = json.loads((tmp_path / "limited" / "run_state.json").read_text())
    assert state["status"] == "preempted" and state["global_step"] < 400
