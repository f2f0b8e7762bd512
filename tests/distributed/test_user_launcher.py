"""`train` under the user's own launcher, for real: the README's "Multi-GPU box with your own `accelerate launch`"
commands as written (torchrun; accelerate launch with a MULTI_CPU config and with a DeepSpeed ZeRO-3 config; a
contradiction), a plan problem under torchrun, and a kill -9 of a whole torchrun job followed by the same command.

Every run is two gloo processes on CPU. What the job did is asked from inside the ranks (the probe of
probe_site/, which acts in `-m launcher.worker` processes: each rank of `train` becomes one by exec), and compared
with `tunelaunch train distributed=ddp distributed.num_processes=2` of the same configuration.
"""
from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.distributed.conftest import TIMEOUT, Run, free_port, max_weight_diff, probe_env, read_probes
from tests.distributed.test_exact_resume import kill_everything, wait_until
from tests.distributed.test_two_processes import check_two_synchronised_ranks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STEPS = 10  # recipe=sft/chat_tiny
EPOCH_BATCHES = 10  # micro-batches per rank in one epoch: 40 rows / 2 per batch / 2 ranks
SAVES = ("training.save_strategy=steps", "training.save_steps=3")


def readme_section() -> tuple[list[str], dict[str, str]]:
    """The section's commands (its bash block, comments dropped) and its config files (yaml blocks, named by
    their first comment line)."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^### Multi-GPU box with your own `accelerate launch`\n(.*?)^##", text, re.S | re.M).group(1)
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", section, re.S | re.M)
    commands = [line.split("  #")[0].strip() for kind, body in blocks if kind == "bash" for line in body.splitlines()
                if line.strip()]
    files = {re.match(r"# (\S+):", body).group(1): body for kind, body in blocks if kind == "yaml"}
    return commands, files


COMMANDS, FILES = readme_section()


def command(start: str, *contains: str) -> str:
    found = [c for c in COMMANDS if c.startswith(start) and all(w in c for w in contains)]
    assert len(found) == 1, (start, contains, COMMANDS)
    return found[0]


def env_for(probe_dir: Path | None, **probe) -> dict:
    """The probe's environment; torchrun and accelerate of this venv first on PATH (cli_env), as a user's
    activated venv has them."""
    return probe_env(probe_dir, {f"TUNELAUNCH_PROBE_{k.upper()}": str(v) for k, v in probe.items()})


def run(base: Path, line: str, name: str, probe: bool = True) -> Run:
    """A command line as written, in `base`, with the probe writing into base/<name>-probe."""
    probe_dir, words = base / f"{name}-probe", shlex.split(line)
    start = time.monotonic()
    out = subprocess.run(words, cwd=base, env=env_for(probe_dir if probe else None), capture_output=True,
                         text=True, timeout=TIMEOUT)
    project = next((w.split("=", 1)[1] for w in words if w.startswith("project_name=")), "runs/sft-chat-tiny")
    return Run(base / project, probe_dir, out.returncode, out.stdout + out.stderr, time.monotonic() - start,
               read_probes(probe_dir))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_launcher")
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def reference(base) -> Run:
    """`tunelaunch train distributed=ddp distributed.num_processes=2` of the same configuration (saving every 3
    steps, as the kill -9 run below does)."""
    return run(base, "tunelaunch train recipe=sft/chat_tiny training.deterministic=true distributed=ddp "
                     f"distributed.num_processes=2 {' '.join(SAVES)} project_name=runs/reference", "reference").ok()


@pytest.fixture(scope="module")
def torchrun(base) -> Run:
    return run(base, command("torchrun --nproc_per_node"), "torchrun").ok()


@pytest.fixture(scope="module")
def accelerate(base) -> Run:
    return run(base, command("accelerate launch --config_file multi_cpu.yaml"), "accelerate").ok()


@pytest.fixture(scope="module")
def zero3(base) -> Run:
    return run(base, command("accelerate launch --config_file zero3.yaml", "project_name="), "zero3").ok()


def check_one_run(run: Run, started_by: str) -> None:
    """One plan on the console (rank 0's), one run folder written by it, recording who started the ranks."""
    assert run.output.count("Plan (valid):") == 1, run.output[-4000:]
    assert "holds an unfinished run" not in run.output  # no second rank planning into the folder the first wrote
    launch = run.launch()
    assert launch["started_by"] == started_by and launch["world_size"] == 2
    assert '"finished"' in (run.run_dir / "run_state.json").read_text()


@pytest.mark.parametrize("name, started_by", [("torchrun", "torchrun --nproc_per_node 2"),
                                              ("accelerate", "accelerate launch --config_file multi_cpu.yaml")])
def test_the_users_launcher_trains_one_world_of_two_equal_to_ours(name, started_by, reference, request):
    run = request.getfixturevalue(name)
    check_two_synchronised_ranks(run, "DistributedDataParallel", "MULTI_CPU", STEPS, per_rank_batches=EPOCH_BATCHES)
    check_one_run(run, started_by)
    assert "distributed: auto -> ddp: DDP over 2 processes, as " + started_by in run.output
    # the same training as `tunelaunch train distributed=ddp distributed.num_processes=2`
    for rank in (0, 1):
        assert run.probe(rank)["batches"] == reference.probe(rank)["batches"]
    a, b = reference.losses(), run.losses()
    assert len(a) == len(b) == STEPS and a[0] - a[-1] > 0.1
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, f"ours {a}\ntheirs {b}"
    assert max_weight_diff(reference.run_dir, run.run_dir) <= 1e-5


def test_an_accelerate_deepspeed_zero3_config_trains_with_zero3(zero3):
    check_two_synchronised_ranks(zero3, "DeepSpeedEngine", "DEEPSPEED", 3, per_rank_batches=EPOCH_BATCHES)
    check_one_run(zero3, "accelerate launch --config_file zero3.yaml")
    full = zero3.probe(0)["params_full"]
    for rank in (0, 1):
        p = zero3.probe(rank)
        assert abs(p["params_local"] - full / 2) <= 0.01 * full, p["params_local"]  # each rank holds half
    assert json.loads((zero3.run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3


def failed_ranks(output: str) -> list[int]:
    """The exit code of every failed rank, from torchrun's summary (accelerate launch prints the same)."""
    return sorted(int(code) for code in re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", output, re.M))


def check_refused_by_every_rank(run: Run) -> None:
    assert run.returncode != 0
    assert failed_ranks(run.output) == [2, 2], run.output[-4000:]  # both ranks, both 2 (none killed by the launcher)
    assert run.output.count("in the configuration:") == 1  # one report: rank 0's
    assert "Plan (valid)" not in run.output and not run.probes  # refused before any worker started
    assert not run.run_dir.exists()  # nothing written


def test_a_contradiction_with_the_accelerate_config_is_refused_by_every_rank_naming_both(base):
    refused = run(base, command("accelerate launch --config_file zero3.yaml", "distributed=fsdp"), "fsdp")
    check_refused_by_every_rank(refused)
    assert ("distributed.backend: fsdp in the configuration, but accelerate launch --config_file zero3.yaml set up "
            "DeepSpeed ZeRO-3 over 2 processes") in refused.output


def test_a_plan_problem_under_torchrun_is_one_report_and_every_rank_exits_2(base):
    refused = run(base, "torchrun --nproc_per_node 2 -m launcher train recipe=sft/chat_tiny training.lrr=1 "
                        "distributed.num_processes=4 project_name=runs/refused", "refused")
    check_refused_by_every_rank(refused)
    assert "training.lrr: unknown key. Did you mean 'training.lr'?" in refused.output
    assert "distributed.num_processes: 4 per node in the configuration, but torchrun --nproc_per_node 2 started 2" \
           in refused.output


def test_a_stop_signal_reaches_every_rank_and_after_a_kill_9_the_same_command_resumes_exactly(base, reference):
    """SIGTERM to torchrun (a preemption, `kill`): every rank finishes its step and saves, the run is "preempted";
    the same command resumes; a kill -9 of the whole job mid-run, then the same command: it resumes again and
    ends on the weights of the uninterrupted run."""
    line = ("torchrun --nproc_per_node 2 -m launcher train recipe=sft/chat_tiny training.deterministic=true "
            f"{' '.join(SAVES)} project_name=runs/killed")
    run_dir = base / "runs" / "killed"

    def start() -> subprocess.Popen:
        return subprocess.Popen(shlex.split(line), cwd=base, env=env_for(None, step_sleep=0.4),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    proc = start()
    wait_until(proc, lambda: (run_dir / "checkpoint-3" / "trainer_state.json").is_file(), "checkpoint-3")
    proc.send_signal(signal.SIGTERM)  # to torchrun alone: its agent passes it on to the ranks
    output = proc.communicate(timeout=TIMEOUT)[0]
    stopped = json.loads((run_dir / "run_state.json").read_text())
    assert stopped["status"] == "preempted", output[-4000:]
    step = stopped["global_step"]
    assert 3 <= step < 6, stopped
    assert {f.name for f in (run_dir / f"checkpoint-{step}").glob("rng_state_*.pth")} == \
        {"rng_state_0.pth", "rng_state_1.pth"}  # every rank saved its part

    proc = start()
    wait_until(proc, lambda: (run_dir / "checkpoint-6" / "trainer_state.json").is_file(), "checkpoint-6")
    time.sleep(0.6)  # mid-run, past the checkpoint
    kill_everything(proc)  # torchrun's agent and both ranks at once
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "running"
    again = run(base, line, "killed-again", probe=False).ok()
    assert "holds an unfinished run; training resumes from checkpoint-6" in again.output
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == STEPS
    assert max_weight_diff(reference.run_dir, run_dir) <= 1e-5
    assert max(abs(x - y) for x, y in zip(reference.losses(), again.losses())) <= 1e-5


def test_two_nodes_of_torchrun_train_one_world_from_one_run_folder(base, reference):
    """The README's two torchrun commands, one per "node" (two agents on this machine meeting at node 0's
    address): rank 0 of node 0 plans and writes the run folder, node 1's rank reads it, one world of 2 trains
    exactly as `tunelaunch train distributed=ddp distributed.num_processes=2` does."""
    port, probe_dir = str(free_port()), base / "nodes-probe"
    lines = [command("torchrun --nnodes 2", f"--node_rank {rank} ") for rank in (0, 1)]
    started = time.monotonic()
    nodes = [subprocess.Popen(shlex.split(line.replace("node0", "127.0.0.1").replace("29400", port)), cwd=base,
                              env=env_for(probe_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for line in lines]
    try:
        outputs = [node.communicate(timeout=TIMEOUT)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    project = next(w.split("=", 1)[1] for w in shlex.split(lines[0]) if w.startswith("project_name="))
    run = Run(base / project, probe_dir, 0, "".join(outputs), time.monotonic() - started, read_probes(probe_dir))
    check_two_synchronised_ranks(run, "DistributedDataParallel", "MULTI_CPU", STEPS, per_rank_batches=EPOCH_BATCHES)
    assert {run.probe(rank)["node_rank_env"] for rank in (0, 1)} == {0, 1}  # one rank on each node
    assert "Plan (valid):" in outputs[0] and "Plan (valid):" not in outputs[1]  # node 0 planned; node 1 read it
    check_one_run(run, lines[0].split(" -m launcher")[0].replace("node0", "127.0.0.1").replace("29400", port))
    assert "DDP over 2 processes on 2 nodes" in outputs[0]
    assert max(abs(x - y) for x, y in zip(reference.losses(), run.losses())) <= 1e-5
    assert max_weight_diff(reference.run_dir, run.run_dir) <= 1e-5
