"""The README's Slurm commands, run as the README writes them, in order, on the real two-node cluster."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import REPO, SlurmCluster, job_output, wait_for_array, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]


def readme_slurm_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Slurm\n\n```bash\n(.*?)^```", text, re.S | re.M).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_slurm_block_runs(slurm_cluster: SlurmCluster, tmp_path):
    commands = readme_slurm_commands()
    assert [c.split()[:2] for c in commands] == [["tunelaunch", "submit"], ["tunelaunch", "submit"],
                                                 ["sbatch", "--nodes=2"], ["tunelaunch", "submit"],
                                                 ["tunelaunch", "runs"]]
    (tmp_path / "slurm").symlink_to(REPO / "slurm")  # `sbatch slurm/train.sbatch` from a working folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    outputs = []
    for command in commands:
        done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
        if command.startswith("sbatch"):
            job = done.stdout.strip().split()[-1]
            fields = wait_for_job(job, timeout=600)
            assert fields["JobState"] == "COMPLETED", job_output(fields)[-3000:]
        elif " -m " in command:
            array = re.search(r"Submitted job array (\d+)", done.stdout).group(1)
            tasks = wait_for_array(array, timeout=900)
            assert len(tasks) == 4 and {t["JobState"] for t in tasks.values()} == {"COMPLETED"}
        elif "--dry-run" in command:
            assert "#SBATCH --gpus-per-node=8" in done.stdout and "#SBATCH --time=12:00:00" in done.stdout
            assert "module load cuda/12.4" in done.stdout
            assert not (tmp_path / "runs" / "sft-chat-tiny").exists()
        elif command.startswith("tunelaunch submit"):
            job = re.search(r"Submitted job (\d+)", done.stdout).group(1)
            fields = wait_for_job(job, timeout=600)
            assert fields["JobState"] == "COMPLETED", job_output(fields)[-3000:]
    for run in ("two-nodes", "from-sbatch"):
        assert '"finished"' in (tmp_path / "runs" / run / "run_state.json").read_text()
    table = outputs[-1].splitlines()
    assert table[0].split()[:4] == ["run", "state", "steps", "train_loss"] and len(table) == 5
    assert all(row.split()[1] == "finished" for row in table[1:])
    losses = [float(row.split()[4]) for row in table[1:]]
    assert losses == sorted(losses)  # --sort eval_loss
