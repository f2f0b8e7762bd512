"""The local Slurm cluster of scripts/slurm-cluster.sh works as the project's Slurm tests need it: a 2-node srun job
with a real gloo all_reduce, a requeue that reruns the script with SLURM_RESTART_COUNT=1, a signal that reaches the
batch script's trap, and a job array. Run with `python -m pytest tests/slurm -m slurm`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.slurm.conftest import PYTHON, SlurmCluster, free_port, job_fields, job_output, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

# one srun task: its rank from SLURM_PROCID (read inside the task), a gloo all_reduce with the other node's task
DDP_TASK = r'''
import datetime, json, os, sys
import torch
import torch.distributed as dist

rank = int(os.environ["SLURM_PROCID"])
world = int(os.environ["SLURM_NTASKS"])
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t, op=dist.ReduceOp.SUM)
out = {
    "rank": rank, "world": dist.get_world_size(), "reduced": t.item(), "node": os.environ.get("SLURMD_NODENAME"),
    "master": os.environ["MASTER_ADDR"], "executable": sys.executable, "cwd": os.getcwd(),
    "slurm_env": {k: v for k, v in os.environ.items() if k.startswith("SLURM")},
    "path": os.environ.get("PATH"), "virtual_env": os.environ.get("VIRTUAL_ENV"),
}
dist.barrier()
dist.destroy_process_group()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
print(f"rank {rank}/{world} on {out['node']}: all_reduce={t.item()}", flush=True)
'''


def wait_for_file(path: Path, job_id: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        fields = job_fields(job_id)
        assert fields["JobState"] in {"PENDING", "CONFIGURING", "RUNNING"}, \
            f"job {job_id} ended before writing {path.name}: {fields}\n{job_output(fields)}"
        assert time.monotonic() < deadline, f"{path} not written in {timeout} s: {fields}\n{job_output(fields)}"
        time.sleep(0.2)
    return path.read_text()


def test_two_node_srun_gloo_all_reduce(slurm_cluster: SlurmCluster, tmp_path: Path):
    assert len(slurm_cluster.nodes) >= 2, f"the cluster has {slurm_cluster.nodes}; start it with 2+ nodes"
    (tmp_path / "ddp_task.py").write_text(DDP_TASK)
    script = f"""#!/bin/bash
#SBATCH --job-name=ddp-2node
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:03:00
set -euo pipefail
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_PORT={free_port()}
echo "nodelist=$SLURM_JOB_NODELIST master=$MASTER_ADDR ntasks=$SLURM_NTASKS"
srun --kill-on-bad-exit=1 {PYTHON} {tmp_path}/ddp_task.py {tmp_path}
echo "batch done"
"""
    job = slurm_cluster.submit(tmp_path, script)
    fields = wait_for_job(job, timeout=120)
    out = job_output(fields)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{out}"
    assert fields["NumNodes"] == "2", fields

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 for r in ranks)
    assert all(r["reduced"] == 3.0 for r in ranks), ranks  # 1 + 2
    nodes = {r["node"] for r in ranks}
    assert len(nodes) == 2 and nodes <= set(slurm_cluster.nodes), nodes
    hostnames = slurm_cluster.slurm(["scontrol", "show", "hostnames", fields["NodeList"]]).stdout.split()
    assert set(hostnames) == nodes, (hostnames, nodes)
    assert all(r["master"] == hostnames[0] for r in ranks)  # the first host of the job's node list
    # the environment a task sees: the submitter's (sbatch --export=ALL) plus Slurm's per-task variables
    for r in ranks:
        env = r["slurm_env"]
        assert env["SLURM_PROCID"] == str(r["rank"]) and env["SLURM_NTASKS"] == "2"
        assert env["SLURM_JOB_ID"] == str(job) and env["SLURM_NNODES"] == "2"
        assert r["cwd"] == str(tmp_path)  # the submit directory
    assert "batch done" in out, out


def test_requeue_reruns_with_restart_count(slurm_cluster: SlurmCluster, tmp_path: Path):
    log = tmp_path / "runs.txt"
    script = f"""#!/bin/bash
#SBATCH --job-name=requeue
#SBATCH --requeue
#SBATCH --open-mode=append
echo "run restart_count=${{SLURM_RESTART_COUNT:-0}} node=$SLURMD_NODENAME" >> {log}
echo "SLURM_RESTART_COUNT=${{SLURM_RESTART_COUNT:-0}}"
if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then exit 0; fi
sleep 300
"""
    job = slurm_cluster.submit(tmp_path, script)
    slurm_cluster.wait_for_state(job, "RUNNING", timeout=30)
    assert wait_for_file(log, job).startswith("run restart_count=0")
    slurm_cluster.slurm(["scontrol", "requeue", str(job)])
    fields = wait_for_job(job, timeout=60)  # rerun after cred_expire (10 s) + a scheduling pass
    out = job_output(fields)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{out}"
    assert fields["Restarts"] == "1", fields
    runs = log.read_text().splitlines()
    assert [r.split()[1] for r in runs] == ["restart_count=0", "restart_count=1"], runs
    assert "SLURM_RESTART_COUNT=1" in out, out


def test_scancel_signal_reaches_batch_trap(slurm_cluster: SlurmCluster, tmp_path: Path):
    ready, got = tmp_path / "ready", tmp_path / "signal.txt"
    # bash runs a trap only between commands: wait on a background sleep so the signal interrupts it at once
    script = f"""#!/bin/bash
#SBATCH --job-name=usr1
trap 'echo "USR1 at $(date +%s)" > {got}; echo "trapped USR1"; exit 0' USR1
echo ready > {ready}
sleep 300 &
wait $!
echo "no signal came" > {got}
exit 3
"""
    job = slurm_cluster.submit(tmp_path, script)
    wait_for_file(ready, job)
    sent = time.time()
    slurm_cluster.slurm(["scancel", "--signal=USR1", "--batch", str(job)])
    fields = wait_for_job(job, timeout=30)
    out = job_output(fields)
    assert got.read_text().startswith("USR1 at "), got.read_text()
    assert int(got.read_text().split()[-1]) - sent < 15
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{out}"
    assert "trapped USR1" in out, out


def test_job_array_runs_every_task(slurm_cluster: SlurmCluster, tmp_path: Path):
    script = f"""#!/bin/bash
#SBATCH --job-name=array
#SBATCH --array=0-3
#SBATCH --nodes=1
#SBATCH --output={tmp_path}/task-%a.out
echo "task=$SLURM_ARRAY_TASK_ID array=$SLURM_ARRAY_JOB_ID node=$SLURMD_NODENAME"
sleep 2
"""
    array = slurm_cluster.submit(tmp_path, script)
    tasks = slurm_cluster.wait_for_array(array, timeout=90)
    assert sorted(tasks) == ["0", "1", "2", "3"], tasks
    for task_id, fields in tasks.items():
        assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", fields
        assert fields["ArrayJobId"] == str(array)
        text = (tmp_path / f"task-{task_id}.out").read_text()
        assert f"task={task_id} array={array} node={fields['NodeList']}" in text, text
    assert slurm_cluster.job_fields(f"{array}_2")["ArrayTaskId"] == "2"


def test_python_of_the_venv_and_repo_visible(slurm_cluster: SlurmCluster, tmp_path: Path):
    """A batch job inherits sbatch's environment (PATH, VIRTUAL_ENV) and sees this checkout and interpreter."""
    script = f"""#!/bin/bash
{PYTHON} -c "import sys, torch; print('python', sys.executable)"
test -f {REPO}/pyproject.toml && echo "repo visible"
"""
    job = slurm_cluster.submit(tmp_path, script)
    fields = wait_for_job(job, timeout=60)
    out = job_output(fields)
    assert fields["JobState"] == "COMPLETED", f"{fields}\n{out}"
    assert f"python {PYTHON}" in out and "repo visible" in out, out
