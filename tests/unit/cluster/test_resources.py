"""Cores and memory a Slurm job asks for when the configuration leaves them out, the allocation as a batch step
reads it, the marker that tells a batch step from an salloc shell, and the batch script's own shell helpers."""
import subprocess

from launcher.cluster import resources, script
from launcher.cluster.resources import Nodes, default_resources
from launcher.config.schema import ClusterConfig


def cluster(**kw) -> ClusterConfig:
    return ClusterConfig(kind="slurm", **kw)


def test_gpus_are_read_from_gres():
    assert [resources.gpus_in_gres(g) for g in ("gpu:8", "gpu:h100:8(S:0-1)", "(null)", "gpu:a100:4,gpu:t4:2", "")] \
        == [8, 8, 0, 6, 0]


def test_gpu_jobs_get_the_nodes_cores_and_memory_in_proportion():
    nodes = Nodes("gpu", cpus=96, mem_mb=1_000_000, gpus=8)
    c = cluster(gpus_per_node=4)
    notes = default_resources(c, 4, nodes)
    assert (c.cpus_per_task, c.mem) == (48, "500000M")
    assert any("cpus_per_task null -> 48" in n and "sinfo" in n for n in notes)
    whole = cluster(gpus_per_node=8)
    default_resources(whole, 8, nodes)
    assert (whole.cpus_per_task, whole.mem) == (96, "1000000M")
    exclusive = cluster(gpus_per_node=2, exclusive=True)
    default_resources(exclusive, 2, nodes)
    assert exclusive.cpus_per_task == 96


def test_what_is_set_is_kept_and_unknown_nodes_are_said():
    c = cluster(gpus_per_node=8, cpus_per_task=10, mem="64G")
    assert default_resources(c, 8, Nodes("gpu", 96, 1000, 8)) == []
    assert (c.cpus_per_task, c.mem) == (10, "64G")
    per_gpu = cluster(gpus_per_node=8, cpus_per_gpu=6, mem_per_gpu="80G")
    default_resources(per_gpu, 8, None)
    assert (per_gpu.cpus_per_task, per_gpu.mem) == (None, None)  # Slurm takes one form, not both
    unknown = cluster(gpus_per_node=2)
    notes = default_resources(unknown, 2, None)
    assert unknown.cpus_per_task == 2 * resources.CPUS_PER_GPU_UNKNOWN and unknown.mem is None
    assert any("sinfo does not describe" in n for n in notes) and any("partition's default memory" in n for n in notes)


def test_cpu_nodes_get_a_core_per_worker():
    c = cluster()
    default_resources(c, 2, Nodes("debug", cpus=2, mem_mb=10847, gpus=0))
    assert (c.cpus_per_task, c.mem) == (2, None)


def test_only_the_jobs_own_batch_step_is_one(monkeypatch):
    monkeypatch.delenv("TUNELAUNCH_SLURM_BATCH", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert not resources.in_batch_step()  # an salloc shell, an interactive job
    monkeypatch.setenv("TUNELAUNCH_SLURM_BATCH", "41")
    assert not resources.in_batch_step()  # submitted from inside job 41's batch step: the marker came along
    monkeypatch.setenv("TUNELAUNCH_SLURM_BATCH", "42")
    assert resources.in_batch_step()


def test_the_allocation_decides_in_the_batch_step():
    c = cluster(nodes=1)
    notes = resources.from_allocation(c, {"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_PER_NODE": "h100:8",
                                          "SLURM_CPUS_PER_TASK": "32", "SLURM_MEM_PER_NODE": "512000",
                                          "SLURM_JOB_PARTITION": "gpu"})
    assert (c.nodes, c.gpus_per_node, c.cpus_per_task, c.mem, c.partition) == (4, 8, 32, "512000M", "gpu")
    assert "cluster: this Slurm allocation has 4 node(s): cluster.nodes 1 -> 4" in notes


def run_helper(function: str, *args: str) -> str:
    """One of job.sbatch's shell functions, run on its own."""
    return subprocess.run(["bash", "-c", f"{script._HELPERS}\n{function} \"$@\"", "x", *args], capture_output=True,
                          text=True).stdout.strip()


def test_the_time_left_is_read_in_seconds():
    assert [run_helper("seconds", t) for t in ("1:30", "01:02:03", "2-00:00:10", "UNLIMITED", "INVALID", "")] == \
        ["90", "3723", "172810", "", "", ""]


def test_the_newest_complete_checkpoint(tmp_path):
    for n, complete in ((2, True), (10, True), (12, False)):
        (tmp_path / f"checkpoint-{n}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    got = subprocess.run(["bash", "-c", f"{script._HELPERS}\nRUN={tmp_path}; newest_checkpoint"],
                         capture_output=True, text=True).stdout.strip()
    assert got == "checkpoint-10"  # numeric order, and never one without its trainer_state.json


def test_events_are_counted_by_kind(tmp_path):
    got = subprocess.run(["bash", "-c", f"{script._HELPERS}\nRUN={tmp_path}; JOBS=$RUN/jobs.tsv; SLURM_JOB_ID=7\n"
                                        "record started; record failed 'srun exit 1'; record preempted x; "
                                        "record timelimit y; echo $(count failed) $(count preempted timelimit)"],
                         capture_output=True, text=True).stdout.strip()
    assert got == "1 2"
    from launcher.cluster import jobs

    assert [e.event for e in jobs.read(tmp_path)] == ["started", "failed", "preempted", "timelimit"]
    assert jobs.read(tmp_path)[1].detail == "srun exit 1" and jobs.read(tmp_path)[0].job_id == "7"


def test_a_worker_killed_by_a_signal_is_recognised_in_the_launchers_report():
    from launcher.cluster.node import _DIED

    report = "  exitcode  : -9 (pid: 4242)\n  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 4242"
    assert [int(m.group(1)) for m in _DIED.finditer(report)] == [9]
    assert _DIED.search("  exitcode  : 1 (pid: 4242)") is None
