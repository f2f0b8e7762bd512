"""What a Slurm job gets: the allocation as its own batch step sees it, the partition's nodes as `sinfo`
describes them, and the defaults for cores and memory derived from them.

Where `submit` runs does not change what it plans: only the job's own batch step (job.sbatch or
slurm/train.sbatch export TUNELAUNCH_SLURM_BATCH=$SLURM_JOB_ID) plans from the allocation. An `salloc` shell, an
interactive job or a pipeline job also has SLURM_JOB_ID, but not that marker for its own id: it plans the cluster
it was asked for.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

BATCH_MARKER = "TUNELAUNCH_SLURM_BATCH"
CPUS_PER_GPU_UNKNOWN = 8
"""Cores per GPU asked for when the nodes cannot be described (a common ratio of GPU nodes)."""


def in_batch_step() -> bool:
    """Whether this process runs in the batch step of the job it plans for."""
    job = os.environ.get("SLURM_JOB_ID")
    return bool(job) and os.environ.get(BATCH_MARKER) == job


@dataclass(frozen=True)
class Nodes:
    """The smallest node of a partition (a job may land on any of them)."""
    partition: str
    cpus: int
    mem_mb: int | None
    gpus: int


_GPUS = re.compile(r"gpu(?::[^:,(]+)?:(\d+)")


def gpus_in_gres(gres: str) -> int:
    """GPUs in a GRES description: `gpu:8`, `gpu:h100:8(S:0-1)`, `(null)` -> 8, 8, 0."""
    return sum(int(n) for n in _GPUS.findall(gres or ""))


def describe_nodes(partition: str | None) -> Nodes | None:
    """The partition's nodes according to `sinfo` (its default partition when None); None when there is no
    Slurm here, the partition is unknown, or sinfo does not answer within 5 s."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"] + (["-p", partition] if partition else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    if done.returncode != 0 or not rows:
        return None
    if partition is None:  # the default partition is the one sinfo marks with '*'
        rows = [r for r in rows if r[0].endswith("*")] or rows
    try:
        cpus = min(int(r[1]) for r in rows)
        mems = [int(r[2]) for r in rows if r[2].isdigit()]
    except ValueError:
        return None
    return Nodes(partition=rows[0][0].rstrip("*"), cpus=cpus, mem_mb=min(mems) if mems else None,
                 gpus=min(gpus_in_gres(r[3]) for r in rows))


def gpu_request_notes(cluster, nodes: Nodes | None) -> list[str]:
    """A warning when the job is planned for CPU nodes without having said so: Slurm gives a job no GPU unless it
    asks, so a GPU job that forgot `gpus_per_node` would queue, train in fp32 on CPUs and look merely slow.
    cluster.gpus_per_node=0 says CPU nodes are meant (no warning); null, the default, is "not asked"."""
    asked_in_gres = gpus_in_gres(cluster.gres)
    if cluster.gpus_per_node:
        return []
    planned = "planned for CPU nodes (fp32, no GPU)"
    if asked_in_gres:  # the job gets GPUs, but the plan (precision, processes, backend) does not know it
        said = "unset" if cluster.gpus_per_node is None else "0"
        return [f"cluster: warning: cluster.gres={cluster.gres} asks for {asked_in_gres} GPU(s) per node but "
                f"cluster.gpus_per_node is {said}: the run is {planned}; set cluster.gpus_per_node={asked_in_gres} "
                "so it is planned for the GPUs"]
    if cluster.gpus_per_node == 0:
        return []
    has = (f" (partition {nodes.partition} has {nodes.gpus} per node, sinfo)" if nodes and nodes.gpus else "")
    return [f"cluster: warning: no GPUs requested: the job gets none{has} and is {planned}; ask for them with "
            "cluster.gpus_per_node=N (or cluster.gres=gpu:N where the site asks that way, with gpus_per_node=N "
            "for planning), or set cluster.gpus_per_node=0 to say CPU nodes are meant"]


def default_resources(cluster, processes: int, nodes: Nodes | None) -> list[str]:
    """Fill cluster.cpus_per_task and cluster.mem when they (and their per-GPU forms) are unset; the notes say
    where each value came from."""
    notes = []
    gpus = cluster.gpus_per_node
    where = (f"{nodes.cpus} cores, {nodes.mem_mb} MB, {nodes.gpus} GPU(s) per node in partition {nodes.partition} "
             "(sinfo)") if nodes else "sinfo does not describe the partition"
    if cluster.cpus_per_task is None and cluster.cpus_per_gpu is None:
        if nodes and (cluster.exclusive or (gpus and nodes.gpus and gpus >= nodes.gpus)):
            cluster.cpus_per_task, why = nodes.cpus, "the whole node"
        elif nodes and gpus and nodes.gpus:
            cluster.cpus_per_task = max(1, nodes.cpus * gpus // nodes.gpus)
            why = f"the node's cores in proportion to {gpus} of its {nodes.gpus} GPUs"
        elif gpus:
            cluster.cpus_per_task = CPUS_PER_GPU_UNKNOWN * gpus
            if nodes:
                cluster.cpus_per_task = min(cluster.cpus_per_task, nodes.cpus)
            why = f"{CPUS_PER_GPU_UNKNOWN} per GPU"
        else:
            cluster.cpus_per_task, why = max(1, processes), "one core per worker process on CPU nodes"
        notes.append(f"cluster: cpus_per_task null -> {cluster.cpus_per_task} ({why}; {where}); srun binds each "
                     "node's launcher, workers and data loaders to them")
    if cluster.mem is None and cluster.mem_per_gpu is None:
        if nodes and nodes.mem_mb and gpus and nodes.gpus:
            share = 1.0 if cluster.exclusive else min(1.0, gpus / nodes.gpus)
            cluster.mem = f"{int(nodes.mem_mb * share)}M"
            notes.append(f"cluster: mem null -> {cluster.mem} (the node's memory in proportion to its GPUs; {where})")
        else:
            notes.append("cluster: mem null: the partition's default memory per node (set cluster.mem to ask for "
                         "more)")
    return notes


def allocation_time_limit(job_id: str) -> str | None:
    """The running job's time limit as Slurm prints it (`squeue -o %l`), None when unknown or unlimited."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%l"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    limit = done.stdout.strip()
    return limit if done.returncode == 0 and re.match(r"^[\d:-]+$", limit or "-x") else None


def from_allocation(cluster, env: dict | None = None, server_nodes: int = 0) -> list[str]:
    """Inside the batch step: the allocation decides nodes, GPUs, cores, memory, partition and time limit, so
    that job.sbatch (written from it) resubmits the same shape. Returns the notes. `server_nodes` of the
    allocation run the vLLM server (launcher.cluster.script.vllm_server_nodes), not training."""
    env = os.environ if env is None else env
    notes = []

    def take(key: str, value, shown=None):
        if value is not None and value != getattr(cluster, key):
            notes.append(f"cluster: this Slurm allocation has {shown or value}: cluster.{key} "
                         f"{getattr(cluster, key)} -> {value}")
            setattr(cluster, key, value)

    if env.get("SLURM_JOB_NUM_NODES"):
        nodes = int(env["SLURM_JOB_NUM_NODES"]) - server_nodes
        take("nodes", nodes, f"{nodes} node(s)" + (f" for training, besides {server_nodes} for vLLM" if server_nodes else ""))
    gpus = env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE")
    if gpus:
        take("gpus_per_node", int(gpus.rsplit(":", 1)[-1]), f"{gpus} GPU(s) per node")
    if env.get("SLURM_CPUS_PER_TASK"):
        take("cpus_per_task", int(env["SLURM_CPUS_PER_TASK"]), f"{env['SLURM_CPUS_PER_TASK']} cores per task")
    if env.get("SLURM_MEM_PER_NODE"):
        take("mem", f"{env['SLURM_MEM_PER_NODE']}M", f"{env['SLURM_MEM_PER_NODE']} MB per node")
    if env.get("SLURM_JOB_PARTITION"):
        take("partition", env["SLURM_JOB_PARTITION"], f"partition {env['SLURM_JOB_PARTITION']}")
    limit = allocation_time_limit(env["SLURM_JOB_ID"]) if env.get("SLURM_JOB_ID") else None
    if limit:
        take("time", limit, f"time limit {limit}")
    return notes
