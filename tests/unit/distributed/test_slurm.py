"""What `tunelaunch submit` writes for Slurm, checked without a cluster: the batch script's rules (no shell
variable in an #SBATCH line, one task per node, ranks read inside the tasks, a per-job port), `--dry-run`
writing nothing, and bad cluster keys refused before anything is submitted."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.distributed import slurm
from launcher.planning import make_plan

REPO = Path(__file__).resolve().parents[3]
TUNELAUNCH = str(Path(sys.executable).parent / "tunelaunch")


def slurm_plan(tmp_path, *overrides):
    """Planned as `submit` plans: for the nodes the cluster keys describe, not for this machine."""
    return make_plan(None, ["recipe=sft/chat_tiny", "cluster=slurm", f"project_name={tmp_path / 'run'}", *overrides])


def submit(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([TUNELAUNCH, "submit", *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)


def test_job_script_directives_are_plain_values(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.time=1-12:00:00",
                      "cluster.partition=gpu", "cluster.account=proj1", "cluster.mem=200G", "cluster.cpus_per_task=16",
                      "cluster.constraint=a100", "cluster.qos=high", "cluster.signal_lead=300",
                      "cluster.extra_directives=[--exclusive]", "cluster.setup=['module load cuda']")
    text = slurm.job_script(plan.cfg, plan.run_dir)
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert not [d for d in directives if "$" in d or "`" in d]  # Slurm would not expand them
    for expected in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=1-12:00:00", "--partition=gpu",
                     "--account=proj1", "--mem=200G", "--cpus-per-task=16", "--constraint=a100", "--qos=high",
                     "--signal=B:USR1@300", "--requeue", "--open-mode=append", "--exclusive"):
        assert f"#SBATCH {expected}" in directives, expected
    out = next(d for d in directives if d.startswith("#SBATCH --output="))
    assert out.endswith(str((tmp_path / "run" / "slurm" / "%x-%j.out").resolve()))
    body = text.split("\n")
    assert "module load cuda" in body  # the setup lines run in the batch step too
    assert body[-2] == "exec " + shlex.join([sys.executable, "-m", "launcher.distributed.slurm", "job",
                                             str((tmp_path / "run").resolve())])
    assert plan.cfg.distributed.num_nodes == 2 and plan.cfg.distributed.num_processes == 4


def test_srun_starts_one_task_per_node_that_reads_its_own_rank(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.nodes=3", "cluster.setup=['source /opt/env/bin/activate']",
                      "cluster.wrapper='apptainer exec --nv img.sif'")
    cmd = slurm.srun_command(plan.cfg, plan.run_dir, 3)
    assert cmd[:5] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    task = cmd[-1]
    # the node program reads SLURM_NODEID itself: no rank is expanded in the batch step or on the command line
    assert "SLURM" not in task and "node_rank" not in task and "machine_rank" not in task
    assert task.splitlines()[0] == "source /opt/env/bin/activate"
    assert task.splitlines()[-1].startswith("exec apptainer exec --nv img.sif ")
    assert task.splitlines()[-1].endswith(f"-m launcher.distributed.slurm node {plan.run_dir}")


def test_each_node_command_gets_its_own_rank_and_the_jobs_endpoint(tmp_path):
    from launcher.distributed.launch import node_command

    plan = slurm_plan(tmp_path, "cluster.nodes=2")
    port = slurm.port_for("4711")
    commands = [node_command(plan.cfg, plan.run_dir, node_rank=r, endpoint=("node7", port)) for r in (0, 1)]
    for rank, cmd in enumerate(commands):
        assert cmd[cmd.index("--machine_rank") + 1] == str(rank)
        assert cmd[cmd.index("--main_process_ip") + 1] == "node7"
        assert cmd[cmd.index("--main_process_port") + 1] == str(port)
        assert cmd[cmd.index("--rdzv_backend") + 1] == "c10d"


def test_the_port_follows_the_job_id():
    ports = {slurm.port_for(str(job)) for job in range(100, 140)}
    assert len(ports) == 40  # neighbouring jobs (sharing a node) do not collide
    assert all(slurm.PORT_BASE <= p < slurm.PORT_BASE + slurm.PORT_RANGE for p in ports)
    assert slurm.port_for("123_4") == slurm.port_for("1234")  # array task ids are digits too


def test_array_script_has_one_task_per_trial_and_the_throttle(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.array_parallelism=2")
    text = slurm.array_script(plan.cfg, tmp_path / "sweep", [tmp_path / f"t{i}" for i in range(4)])
    assert "#SBATCH --array=0-3%2" in text
    assert re.search(r"#SBATCH --output=.*/sweep/slurm/%x-%A_%a\.out", text)
    assert text.rstrip().endswith(f"array {(tmp_path / 'sweep' / 'trials.json').resolve()}")


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path):
    done = submit(tmp_path, "--dry-run", "recipe=sft/chat_tiny", "cluster.nodes=2", "project_name=r")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "(not written)" in done.stdout
    assert not (tmp_path / "r").exists()


def test_bad_cluster_keys_exit_2_before_anything_is_written(tmp_path):
    done = submit(tmp_path, "recipe=sft/chat_tiny", "project_name=r", "cluster.time=90min",
                  "cluster.gpus_per_node=4", "distributed.num_processes=2", "cluster.extra_directives=['--mail-user=$USER']")
    assert done.returncode == 2
    for key in ("cluster.time", "distributed.num_processes / cluster.gpus_per_node", "cluster.extra_directives[0]"):
        assert key in done.stderr
    assert "Nothing was submitted" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_sweep_dry_run_names_its_files_in_the_sweep_folder(tmp_path):
    done = submit(tmp_path, "--dry-run", "-m", "recipe=sft/chat_tiny", "project_name=sweep", "training.lr=1e-4,3e-4")
    assert done.returncode == 0, done.stderr
    assert "# sweep/sweep.sbatch (not written)" in done.stdout
    assert "#SBATCH --array=0-1" in done.stdout and str((tmp_path / "sweep" / "trials.json").resolve()) in done.stdout
    assert not (tmp_path / "sweep").exists()


def test_one_bad_trial_submits_no_trial(tmp_path):
    done = submit(tmp_path, "-m", "recipe=sft/chat_tiny", "project_name=sweep", "training.lr=1e-4,-1")
    assert done.returncode == 2
    assert "training.lr" in done.stderr and "1 of 2 run(s) refused" in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_train_refuses_a_slurm_run_outside_an_allocation(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([TUNELAUNCH, "train", "recipe=sft/chat_tiny", "cluster=slurm", "project_name=r"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "tunelaunch submit" in done.stderr
    assert not (tmp_path / "r").exists()
