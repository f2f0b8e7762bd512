"""The local Slurm cluster binds tasks to CPUs and enforces memory as a real cluster does (scripts/slurm-cluster.sh:
task/affinity, each virtual node's CPUs spread over the real cores, memory a consumable resource enforced by
jobacct_gather/linux with OverMemoryKill). Run with `python -m pytest tests/slurm -m slurm`."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.slurm.conftest import PYTHON, SlurmCluster, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

AFFINITY = r'''
import json, os, sys
print(json.dumps({"step": sys.argv[1], "rank": int(os.environ["SLURM_PROCID"]),
                  "node": os.environ["SLURMD_NODENAME"], "cpus": sorted(os.sched_getaffinity(0))}), flush=True)
'''


def test_tasks_see_the_cpus_they_asked_for(slurm_cluster: SlurmCluster, tmp_path: Path):
    # the test cluster is 2 nodes on a 2-core machine (CI's and every developer's): anything less is a broken setup
    assert (os.cpu_count() or 1) >= 2 and len(slurm_cluster.nodes) >= 2, (os.cpu_count(), slurm_cluster.nodes)
    (tmp_path / "affinity.py").write_text(AFFINITY)
    # --exclusive: the whole of both nodes, so that which CPUs the steps get does not depend on other jobs;
    # --exact: a step gets the CPUs it asks for, not every CPU of the job on the node
    script = f"""#!/bin/bash
#SBATCH --nodes=2
#SBATCH --exclusive
#SBATCH --time=00:03:00
set -euo pipefail
srun --exact -N2 -n2 -c1 {PYTHON} {tmp_path}/affinity.py c1
srun --exact -N2 -n2 -c2 {PYTHON} {tmp_path}/affinity.py c2
"""
    job = slurm_cluster.submit(tmp_path, script)
    fields = wait_for_job(job, timeout=150)
    out = slurm_cluster.job_output(fields)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{out}"
    seen = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    one = sorted((r for r in seen if r["step"] == "c1"), key=lambda r: r["rank"])
    two = [r for r in seen if r["step"] == "c2"]
    assert len(one) == 2 and len(two) == 2, out
    assert all(len(r["cpus"]) == 1 for r in one), one
    assert all(len(r["cpus"]) == 2 for r in two), two
    # the two nodes share this machine's cores: each node's first CPU is another real core, so a 2-node job of
    # 1-CPU tasks does not put both ranks on core 0
    assert {r["node"] for r in one} == set(slurm_cluster.nodes[:2])
    assert one[0]["cpus"] != one[1]["cpus"], one


def test_default_memory_lets_two_jobs_share_a_node(slurm_cluster: SlurmCluster):
    config = slurm_cluster.slurm(["scontrol", "show", "config"]).stdout
    per_cpu = int(re.search(r"^DefMemPerCPU\s*=\s*(\d+)", config, re.M).group(1))
    node = slurm_cluster.slurm(["scontrol", "show", "node", "-o", slurm_cluster.nodes[0]]).stdout
    real, cpus = int(re.search(r"RealMemory=(\d+)", node).group(1)), int(re.search(r"CPUTot=(\d+)", node).group(1))
    assert per_cpu * cpus <= real and per_cpu * cpus > real - cpus, (per_cpu, cpus, real)
    assert per_cpu >= 2048, "a 1-CPU job without --mem should get at least 2 GB"


def test_job_over_its_memory_is_killed(slurm_cluster: SlurmCluster, tmp_path: Path):
    grab = f"{PYTHON} -c 'import time; b = bytearray(b\"x\") * (500 << 20); time.sleep(60)'"
    batch = slurm_cluster.submit(tmp_path / "batch", f"#!/bin/bash\n#SBATCH --mem=100M\n{grab}\necho survived\n")
    step = slurm_cluster.submit(tmp_path / "step", f"#!/bin/bash\n#SBATCH --mem=100M\nsrun {grab}\n"
                                                   "echo \"srun exited $?\"\n")
    # the batch step itself over the limit: killed (SIGKILL) within a poll or two; Slurm reports FAILED, signal 9
    # (not OUT_OF_MEMORY, which needs cgroups), and the job's output says why
    fields = wait_for_job(batch, timeout=60)
    out = slurm_cluster.job_output(fields)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "0:9", f"{fields}\n{out}"
    assert "exceeded memory limit" in out and "survived" not in out, out
    # an srun step over the limit: the step is killed, srun exits 137 and the batch script goes on
    fields = wait_for_job(step, timeout=60)
    out = slurm_cluster.job_output(fields)
    assert "exceeded memory limit" in out and "srun exited 137" in out, f"{fields}\n{out}"
