"""trainer.generation=vllm with vllm_mode=server on Slurm: the job gets cluster.vllm_nodes more nodes, the batch
script starts `trl vllm-serve` as its own srun step on the last of them, waits until it answers, gives its address
to the training step, which runs on the first cluster.nodes nodes only. Rendered without a cluster."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher.cluster import resources, script, submit as door
from launcher.config.schema import RunConfig
from tests.conftest import cli_env
from tests.unit.cluster.test_script import no_slurm_env, submit


def grpo_config(generation="vllm", mode="server") -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.name, cfg.trainer.generation, cfg.trainer.vllm_mode = "grpo", generation, mode
    cfg.model.name_or_path = "Qwen/Qwen3-1.7B"
    c = cfg.cluster
    c.kind, c.nodes, c.vllm_nodes, c.gpus_per_node = "slurm", 2, 1, 8
    return cfg


def sruns(text: str) -> list[list[str]]:
    """Every srun command of a batch script, in order, as bash would split it."""
    blocks = re.findall(r"^srun \\\n(?:  .*\n)*?.*&$", text, re.M)
    return [shlex.split(b.removesuffix("&").replace("\\\n", " ")) for b in blocks]


def test_the_server_runs_on_the_last_node_and_training_on_the_first_two(tmp_path):
    text = script.job_script(grpo_config(), tmp_path / "run", tmp_path)
    assert "#SBATCH --nodes=3" in text.splitlines()
    assert 'if [ "$SLURM_JOB_NUM_NODES" != "3" ]' in text  # a resubmission checks the whole job's shape
    server, training = sruns(text)
    assert server[:6] == ["srun", "--unbuffered", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--relative=2"]
    assert any(a.startswith("--output=") and a.endswith("-%j-vllm%n.out") for a in server)
    serve = shlex.split(server[-1].splitlines()[-1].removeprefix("exec "))
    assert serve[0].endswith("trl") and serve[1] == "vllm-serve"
    assert serve[2:] == ["--model", "Qwen/Qwen3-1.7B", "--tensor-parallel-size", "8", "--port", "8000",
                         "--host", "0.0.0.0"]
    assert training[2:4] == ["--nodes=2", "--ntasks=2"] and "--relative=0" in training
    # the server is up, and its address exported, before training starts; it ends with the batch step
    host = text.index("VLLM_HOST=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | sed -n '3p')")
    url = text.index('export TUNELAUNCH_VLLM_URL="http://$VLLM_HOST:8000"')
    wait = text.index('until curl -sf "$TUNELAUNCH_VLLM_URL/health"')
    assert host < url < wait < text.index("srun_pid=$!")
    assert "trap 'kill \"$vllm_pid\" 2>/dev/null' EXIT" in text
    assert "did not answer" in text and f"within {script.VLLM_WAIT_SECONDS} s" in text
    assert script.VLLM_URL_VARIABLE == "TUNELAUNCH_VLLM_URL"  # launcher.trainers.online reads this name
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize("generation, mode", [("transformers", "server"), ("vllm", "colocate")])
def test_without_a_vllm_server_nothing_of_it_appears(tmp_path, generation, mode):
    text = script.job_script(grpo_config(generation, mode), tmp_path / "run", tmp_path)
    assert "#SBATCH --nodes=2" in text.splitlines()
    for part in ("vllm-serve", "VLLM_HOST", "TUNELAUNCH_VLLM_URL", "--relative", "curl"):
        assert part not in text, part
    assert len(sruns(text)) == 1


def test_the_server_waits_fail_the_job_with_a_clear_line(tmp_path):
    """The wait loop, run with a server that exits at once: the job fails, records why and names the log."""
    text = script.job_script(grpo_config(), tmp_path / "run", tmp_path)
    block = script.vllm_block(grpo_config(), tmp_path / "run", tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in (("srun", "exit 1"), ("curl", "exit 7"), ("scontrol", "echo n1; echo n2; echo n3")):
        (fake / name).write_text(f"#!/bin/bash\n{body}\n")
        (fake / name).chmod(0o755)
    program = f'record() {{ echo "RECORD $*"; }}\nsignal=""\n{block}\necho TRAINING'
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60,
                          env=cli_env(**no_slurm_env(PATH=f"{fake}:/usr/bin:/bin", SLURM_JOB_ID="42",
                                                     SLURM_JOB_NODELIST="n[1-3]")))
    assert done.returncode == 1 and "TRAINING" not in done.stdout
    assert "RECORD failed the vLLM server on n3 exited before it answered" in done.stdout
    assert "-42-vllm0.out" in done.stderr
    assert block in text


def test_the_allocation_leaves_the_server_nodes_out_of_training():
    c = grpo_config().cluster
    c.nodes = 1
    notes = resources.from_allocation(c, {"SLURM_JOB_NUM_NODES": "3"}, server_nodes=1)
    assert c.nodes == 2 and "besides 1 for vLLM" in notes[0]


def test_the_dry_run_shows_both_steps(tmp_path):
    out = door.dry_run(grpo_config(), tmp_path / "run")
    assert "#   vLLM:      node(s) 3-3 of the job" in out and "--relative=2" in out
    assert "TUNELAUNCH_VLLM_URL=http://HOST:8000" in out
    assert "#   srun:      srun --unbuffered --nodes=2" in out
    assert [line for line in out.splitlines() if line.startswith("#   node ")] == [
        line for line in out.splitlines() if re.match(r"#   node [01]: ", line)]  # two training nodes


def test_submit_dry_run_through_the_cli_shows_both_steps(tmp_path):
    """From a login node without vllm: the server nodes need it, this machine does not (plan says so, no refusal)."""
    done = submit(tmp_path, "--dry-run", "recipe=grpo/format_tiny", "trainer.generation=vllm",
                  "trainer.vllm_mode=server", "cluster.nodes=2", "cluster.vllm_nodes=1", "cluster.gpus_per_node=8",
                  "project_name=r")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=3" in done.stdout and "vllm-serve" in done.stdout and "--relative=2" in done.stdout
    assert "#   vLLM:" in done.stdout and not (tmp_path / "r").exists()
    assert "generation: vllm is not installed here; the job's nodes need it" in done.stdout + done.stderr
