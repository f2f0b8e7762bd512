"""The README's Slurm commands, run as the README writes them, in order, on the real two-node cluster."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from tests.conftest import REPO, cli_env
from tests.slurm.conftest import SlurmCluster, job_fields, job_output, wait_for_array, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]


def readme_slurm_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Slurm\n\n```bash\n(.*?)^```", text, re.S | re.M).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def submitted(out: str) -> str:
    return re.search(r"Submitted job (\d+)", out).group(1)


def test_the_readme_slurm_block_runs(slurm_cluster: SlurmCluster, tmp_path):
    commands = readme_slurm_commands()
    assert [" ".join(c.split()[:2]) for c in commands] == [
        "tunelaunch submit", "tunelaunch submit", "tunelaunch logs", "salloc -N1", "sbatch --nodes=2",
        "tunelaunch submit", "tunelaunch runs", "tunelaunch submit", "tunelaunch cancel", "tunelaunch runs"]
    (tmp_path / "slurm").symlink_to(REPO / "slurm")  # `sbatch slurm/train.sbatch` from a working folder
    env = cli_env(**dict.fromkeys(k for k in os.environ if k.startswith("SLURM_")))  # the venv's tunelaunch on PATH
    pending = {}  # command index -> job id, waited for when the block is done

    def run(command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    dry, two_nodes, follow, salloc, template, sweep, table, long_run, cancel, everything = commands
    out = run(dry).stdout
    for line in ("#SBATCH --gpus-per-node=8", "#SBATCH --time=12:00:00", "export NCCL_DEBUG=INFO",
                 "'--container-image=nvcr.io#nvidia/pytorch:25.01-py3'"):
        assert line in out, line
    assert "source /opt/venv/bin/activate" in out and "#   node 1: " in out
    assert not (tmp_path / "runs").exists()

    job = submitted(run(two_nodes).stdout)
    followed = run(follow).stdout  # returns once the job has left the queue
    assert f"job {job}, start 1" in followed and "tunelaunch: finished" in followed
    assert wait_for_job(job, timeout=600)["JobState"] == "COMPLETED"

    out = run(salloc)
    assert "this Slurm allocation" not in out.stdout
    pending["from-salloc"] = submitted(out.stdout)
    pending["from-sbatch"] = run(template).stdout.strip().split()[-1]
    for name, job in pending.items():
        fields = wait_for_job(job, timeout=600)
        assert fields["JobState"] == "COMPLETED" and fields["NumNodes"] == "2", job_output(fields)[-3000:]

    array = re.search(r"Submitted job array (\d+)", run(sweep).stdout).group(1)
    tasks = wait_for_array(array, timeout=900)
    assert len(tasks) == 4 and {t["JobState"] for t in tasks.values()} == {"COMPLETED"}
    rows = run(table).stdout.splitlines()
    assert rows[0].split()[:4] == ["run", "state", "steps", "train_loss"] and len(rows) == 5
    assert all(row.split()[1] == "finished" for row in rows[1:])
    losses = [float(row.split()[4]) for row in rows[1:]]
    assert losses == sorted(losses)  # --sort eval_loss

    long_job = submitted(run(long_run).stdout)
    assert f"cancelled job {long_job}" in run(cancel).stdout
    assert wait_for_job(long_job, timeout=120)["JobState"] == "CANCELLED"
    states = {row.split()[0]: row.split()[1] for row in run(everything).stdout.splitlines()[1:]}
    assert states["long"] == "CANCELLED", states
    assert {states[r] for r in ("two-nodes", "from-salloc", "from-sbatch")} == {"finished"}, states
    assert json.loads((tmp_path / "runs" / "long" / "run_state.json").read_text())["status"] != "finished"
