"""What `tunelaunch submit` writes for Slurm, checked without a cluster: the batch script's rules (plain #SBATCH
values, one task per node bound to its cores, ranks read inside the tasks, the head node and port found on the
host, containers), `--dry-run` printing the job and writing nothing, where `submit` runs not changing what it
plans, and bad cluster keys refused before anything is submitted. tests/slurm runs these scripts for real."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from launcher.cluster import script, submit as door
from launcher.config.errors import ConfigError
from launcher.planning import make_plan
from tests.conftest import REPO, run_cli

GPU_NODES = ("cluster.nodes=2", "cluster.gpus_per_node=8", "cluster.cpus_per_task=64", "cluster.mem=900G")


def no_slurm_env(**extra) -> dict:
    """Variables for cli_env() / run_cli(env=...): this process's Slurm variables removed (the tests may run inside
    a job), then `extra`."""
    unset = {k: None for k in os.environ if k.startswith(("SLURM_", "TUNELAUNCH_SLURM"))}
    return {**unset, **extra}


def slurm_plan(tmp_path, *overrides):
    """Planned as `submit` plans: for the nodes the cluster keys describe, not for this machine."""
    return make_plan(None, ["recipe=sft/chat_tiny", "cluster=slurm", f"project_name={tmp_path / 'run'}", *overrides])


def submit(tmp_path, *args, env=None):
    return run_cli("submit", *args, cwd=tmp_path, env=env or no_slurm_env(), timeout=300)


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def srun_of(text: str) -> list[str]:
    """The srun command of a batch script, as bash would split it."""
    block = re.search(r"^srun \\\n(?:  .*\n)*?.*&$", text, re.M).group(0).removesuffix("&")
    return shlex.split(block.replace("\\\n", " "))


def test_job_script_directives_are_plain_values(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.time=1-12:00:00",
                      "cluster.partition=gpu", "cluster.account=proj1", "cluster.mem=200G", "cluster.cpus_per_task=16",
                      "cluster.constraint=a100", "cluster.qos=high", "cluster.signal_lead=300", "cluster.exclusive=true",
                      "cluster.exclude='gpu[07,12]'", "cluster.reservation=big", "cluster.mail_type='END,FAIL'",
                      "cluster.mail_user=me@lab.org", "cluster.extra_directives=['--begin=now+1hour']",
                      "cluster.setup=['module load cuda']")
    text = script.job_script(plan.cfg, plan.run_dir)
    directives = sbatch_lines(text)
    assert not [d for d in directives if "$" in d or "`" in d]  # Slurm would not expand them
    for expected in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=1-12:00:00", "--partition=gpu",
                     "--account=proj1", "--mem=200G", "--cpus-per-task=16", "--constraint=a100", "--qos=high",
                     "--signal=B:USR1@300", "--requeue", "--open-mode=append", "--exclusive", "--exclude=gpu[07,12]",
                     "--reservation=big", "--mail-type=END,FAIL", "--mail-user=me@lab.org", "--begin=now+1hour"):
        assert f"#SBATCH {expected}" in directives, expected
    out = next(d for d in directives if d.startswith("#SBATCH --output="))
    assert out.endswith(str((tmp_path / "run" / "slurm" / "%x-%j.out").resolve()))
    task = srun_of(text)[-1]
    assert task.splitlines()[0] == "module load cuda"  # the setup lines run in each task
    assert plan.cfg.distributed.num_nodes == 2 and plan.cfg.distributed.num_processes == 4
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash


def test_srun_starts_one_bound_task_per_node_that_reads_its_own_rank(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.nodes=3", "cluster.cpus_per_task=12",
                      "cluster.setup=['source /opt/env/bin/activate']", "cluster.wrapper='numactl --interleave=all'")
    text = script.job_script(plan.cfg, plan.run_dir)
    srun = srun_of(text)
    assert srun[:7] == ["srun", "--unbuffered", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                        "--cpus-per-task=12", "--kill-on-bad-exit=1"]
    assert "export SRUN_CPUS_PER_TASK=12" in text.splitlines()  # srun >= 22.05 does not inherit it from sbatch
    task = srun[-1]
    # the node program reads SLURM_NODEID itself: no rank is expanded in the batch step or on the command line
    assert "SLURM" not in task and "node_rank" not in task and "machine_rank" not in task
    assert task.splitlines()[0] == "source /opt/env/bin/activate"
    assert task.splitlines()[-1] == "exec numactl --interleave=all " + shlex.join(
        [sys.executable, "-m", "launcher.cluster.node", str(plan.run_dir.resolve())])


def test_a_gpu_dry_run_with_pyxis_shows_what_every_node_runs(tmp_path):
    """The dry run is the job: the srun line with its container flags, --cpus-per-task, the env map, and how the
    head node and port are found, on the host."""
    image = "nvcr.io#nvidia/pytorch:25.01-py3"
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text((REPO / "samples" / "chat" / f"{split}.jsonl").read_text())
    done = submit(tmp_path, "--dry-run", "recipe=sft/chat_tiny", *GPU_NODES, "project_name=gpu-run",
                  f"data.path={data}", "cluster.container.kind=pyxis", f"cluster.container.image='{image}'",
                  "cluster.container.mounts=[/scratch]", "cluster.container.mount_home=false",
                  "cluster.env.NCCL_DEBUG=INFO", "cluster.env.HF_HOME=/scratch/hf")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    run = (tmp_path / "gpu-run").resolve()
    lines = out.splitlines()
    for line in ("export NCCL_DEBUG=INFO", "export HF_HOME=/scratch/hf", "export SRUN_CPUS_PER_TASK=64",
                 'export TUNELAUNCH_MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                 "export TUNELAUNCH_MASTER_PORT=$(( 10000 + SLURM_JOB_ID % 20000 ))",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64", "#SBATCH --mem=900G"):
        assert line in lines, line
    srun = srun_of(out)
    assert srun[:7] == ["srun", "--unbuffered", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                        "--cpus-per-task=64", "--kill-on-bad-exit=1"]
    assert f"--container-image={image}" in srun and "--no-container-mount-home" in srun
    assert f"--container-workdir={tmp_path.resolve()}" in srun
    mounts = next(a for a in srun if a.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    for path in (str(run), str(tmp_path.resolve())):  # the run folder and the working folder (holding the data)
        assert f"{path}:{path}" in mounts or any(path.startswith(m.split(":")[0] + "/") for m in mounts), mounts
    assert "/scratch:/scratch" in mounts
    assert srun[-3:-1] == ["bash", "-c"] and srun[-1] == f"exec python3 -m launcher.cluster.node {run}"
    # each node's command, with its own rank, meeting at the head node's port
    for rank in (0, 1):
        node = next(line for line in lines if line.startswith(f"#   node {rank}: "))
        assert f"--machine_rank {rank}" in node and "--rdzv_backend c10d" in node
    assert "scontrol" not in srun[-1]  # nothing inside the container calls Slurm
    assert not (tmp_path / "gpu-run").exists()


def test_apptainer_runs_the_task_inside_the_image(tmp_path):
    plan = slurm_plan(tmp_path, *GPU_NODES, "cluster.container.kind=apptainer", "cluster.container.image=/img/t.sif",
                      "cluster.container.program=singularity", "cluster.setup=['source /opt/venv/bin/activate']")
    srun = srun_of(script.job_script(plan.cfg, plan.run_dir, cwd=tmp_path))
    at = srun.index("singularity")
    assert srun[at:at + 3] == ["singularity", "exec", "--nv"]
    binds = srun[srun.index("--bind") + 1].split(",")
    assert str(plan.run_dir.resolve()) in binds or any(str(plan.run_dir.resolve()).startswith(b + "/") for b in binds)
    assert srun[srun.index("--pwd") + 1] == str(tmp_path.resolve())
    assert srun[srun.index("/img/t.sif") + 1:srun.index("/img/t.sif") + 3] == ["bash", "-c"]
    assert srun[-1].splitlines()[0] == "source /opt/venv/bin/activate"  # runs inside the image


def test_the_preprocessing_job_has_its_own_resources(tmp_path):
    plan = slurm_plan(tmp_path, *GPU_NODES, "cluster.partition=gpu", "cluster.qos=high", "cluster.exclusive=true",
                      "cluster.constraint=h100", "cluster.extra_directives=['--begin=now']", "cluster.preprocess_job=true",
                      "cluster.preprocess_partition=cpu", "cluster.preprocess_cpus=16", "cluster.preprocess_mem=64G",
                      "cluster.preprocess_time=2:00:00", "cluster.account=proj")
    directives = sbatch_lines(script.prepare_script(plan.cfg, plan.run_dir))
    for expected in ("--partition=cpu", "--cpus-per-task=16", "--mem=64G", "--time=2:00:00", "--account=proj",
                     "--nodes=1", "--ntasks=1"):
        assert f"#SBATCH {expected}" in directives, expected
    for absent in ("gpus", "gres", "qos", "exclusive", "constraint", "begin", "requeue", "signal"):
        assert not [d for d in directives if absent in d], absent


def test_the_port_follows_the_job_id_below_the_ephemeral_range():
    ports = {script.port_for(str(job)) for job in range(100, 140)}
    assert len(ports) == 40  # neighbouring jobs (sharing a node) do not collide
    assert all(script.PORT_BASE <= p < script.PORT_BASE + script.PORT_RANGE <= 32768 for p in ports)


def test_the_batch_script_computes_the_port_it_says(tmp_path):
    plan = slurm_plan(tmp_path)
    text = script.job_script(plan.cfg, plan.run_dir)
    line = next(l for l in text.splitlines() if l.startswith("export TUNELAUNCH_MASTER_PORT="))
    got = subprocess.run(["bash", "-c", f"SLURM_JOB_ID=123456; {line}; echo $TUNELAUNCH_MASTER_PORT"],
                         capture_output=True, text=True).stdout.strip()
    assert got == str(script.port_for("123456"))


def test_array_script_runs_each_trials_own_job_script(tmp_path):
    plan = slurm_plan(tmp_path, "cluster.array_parallelism=2")
    trials = [tmp_path / f"t{i}" for i in range(4)]
    text = script.array_script(plan.cfg, tmp_path / "sweep", trials)
    assert "#SBATCH --array=0-3%2" in text
    assert re.search(r"#SBATCH --output=.*/sweep/slurm/%x-%A_%a\.out", text)
    got = subprocess.run(["bash", "-c", text.replace('exec bash', 'echo') + "\n", "x"], capture_output=True, text=True,
                         env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"}).stdout.strip()
    assert got == f"{trials[2].resolve()}/job.sbatch"


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path):
    done = submit(tmp_path, "--dry-run", "recipe=sft/chat_tiny", "cluster.nodes=2", "project_name=r")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "(not written)" in done.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("marker", [None, "1111"])
def test_submitting_from_inside_an_allocation_plans_the_cluster_asked_for(tmp_path, marker):
    """An salloc shell or another job has SLURM_JOB_ID but is not this job's batch step (no marker, or the marker
    of another job): the plan is for 4 nodes of 8 GPUs, not for the one CPU node it runs on."""
    env = no_slurm_env(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_JOB_NODELIST="login3",
                       SLURM_CPUS_ON_NODE="4", SLURM_JOB_PARTITION="interactive")
    if marker:
        env["TUNELAUNCH_SLURM_BATCH"] = marker  # inherited from the job that ran this submit
    done = submit(tmp_path, "--dry-run", "recipe=sft/chat_tiny", "cluster.nodes=4", "cluster.gpus_per_node=8",
                  "cluster.gpu_memory_gib=80", "project_name=r", env=env)
    assert done.returncode == 0, done.stderr
    assert "this Slurm allocation" not in done.stdout
    assert "#SBATCH --nodes=4" in done.stdout and "#SBATCH --gpus-per-node=8" in done.stdout
    assert "bf16" in done.stdout and "world size 32" in done.stdout.replace("world_size", "world size")


def test_the_batch_step_plans_from_its_allocation(tmp_path):
    allocation = dict(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_CPUS_PER_TASK="3",
                      SLURM_MEM_PER_NODE="2048", SLURM_JOB_PARTITION="debug", TUNELAUNCH_SLURM_BATCH="4242")
    os.environ.update(allocation)
    try:
        plan = slurm_plan(tmp_path, "cluster.nodes=1")
    finally:
        for k in allocation:
            os.environ.pop(k, None)
    c = plan.cfg.cluster
    assert (c.nodes, c.cpus_per_task, c.mem, c.partition) == (2, 3, "2048M", "debug")
    assert any("this Slurm allocation has 2 node(s): cluster.nodes 1 -> 2" in n for n in plan.notes)
    directives = sbatch_lines(script.job_script(plan.cfg, plan.run_dir))
    assert {"#SBATCH --nodes=2", "#SBATCH --cpus-per-task=3", "#SBATCH --mem=2048M",
            "#SBATCH --partition=debug"} <= set(directives)  # sbatch RUN/job.sbatch resumes the same shape


def test_bad_cluster_keys_exit_2_before_anything_is_written(tmp_path):
    done = submit(tmp_path, "recipe=sft/chat_tiny", "project_name=r", "cluster.time=90min",
                  "cluster.gpus_per_node=4", "distributed.num_processes=2", "cluster.extra_directives=['--mail-user=$USER']",
                  "cluster.cpus_per_task=8", "cluster.cpus_per_gpu=4", "cluster.container.kind=pyxis",
                  "cluster.env.MY-VAR=x", "cluster.log_dir='/tmp/my logs'")
    assert done.returncode == 2
    for key in ("cluster.time", "distributed.num_processes / cluster.gpus_per_node", "cluster.extra_directives[0]",
                "cluster.cpus_per_task / cluster.cpus_per_gpu", "cluster.container.image", "cluster.env.MY-VAR",
                "cluster.log_dir"):
        assert key in done.stderr, key
    assert "Nothing was submitted" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_run_folder_with_a_space_is_refused_for_slurm(tmp_path):
    with pytest.raises(ConfigError) as err:
        slurm_plan(tmp_path / "with space")
    assert "project_name" in err.value.report() and "#SBATCH --output" in err.value.report()


def test_resubmitting_with_another_node_count_names_both(tmp_path):
    from launcher.planning import write_run

    plan = slurm_plan(tmp_path, "cluster.nodes=2")
    write_run(plan)
    with pytest.raises(ConfigError) as err:
        slurm_plan(tmp_path, "cluster.nodes=4")
    report = err.value.report()
    assert "cluster.nodes" in report and "2 node(s)" in report and "asks for 4" in report


def test_snapshot_runs_the_code_as_submitted(tmp_path):
    from launcher.planning import write_run

    plan = slurm_plan(tmp_path, "cluster.snapshot=true")
    folder, _ = write_run(plan)
    code = folder / "code"
    assert (code / "launcher" / "cluster" / "node.py").read_text() == (REPO / "launcher/cluster/node.py").read_text()
    assert (code / "conf" / "config.yaml").is_file() and not list(code.rglob("__pycache__"))
    text = (folder / "job.sbatch").read_text()
    assert f'export PYTHONPATH={code.resolve()}"${{PYTHONPATH:+:$PYTHONPATH}}"' in text.replace("  # the code as submitted", "")


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


def test_train_refuses_a_slurm_run_outside_its_batch_step(tmp_path):
    for env in (no_slurm_env(), no_slurm_env(SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="1")):  # plain, or in salloc
        done = run_cli("train", "recipe=sft/chat_tiny", "cluster=slurm", "project_name=r", cwd=tmp_path, env=env,
                       timeout=300)
        assert done.returncode == 2 and "tunelaunch submit" in done.stderr
        assert not (tmp_path / "r").exists()


def test_plan_shows_what_each_node_of_the_job_runs(tmp_path):
    """Not the local rendezvous (127.0.0.1:29500), which a Slurm job never uses: the job's first host and port."""
    done = run_cli("plan", "recipe=sft/chat_tiny", "cluster=slurm", "cluster.nodes=2", "project_name=r", cwd=tmp_path,
                   env=no_slurm_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    nodes = [line for line in done.stdout.splitlines() if line.startswith("  node ")]
    assert len(nodes) == 2 and all("<first host of the allocation>" in n for n in nodes)
    assert "127.0.0.1" not in done.stdout.split("Launch (Slurm)")[1] and "--machine_rank 1" in nodes[1]
