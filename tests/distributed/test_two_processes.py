"""Two real worker processes on CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 through `tunelaunch train`.

A run that exits 0 can still be two unsynchronised copies training on the same batches (FACTS.md: that is what
accelerate's --cpu, FSDP on CPU and the Trainer's own world size on a CPU-only machine do), so every assertion
about the job is made from inside the workers: probe_site/tunelaunch_probe.py, which the tests put into the
worker processes (conftest.py), writes what each rank saw.

Each run is small (the ~1M-parameter tiny Llama, 3 or 10 steps) and is shared by several tests through
module-scoped fixtures. The first DeepSpeed run on a machine also JIT-compiles its CPU communication op (~35 s,
kept under the cache root's torch_extensions/).
"""
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time

import pytest

from tests.distributed.conftest import (
    TIMEOUT, check_same_as_one_process, free_port, hashes, probe_env, read_probes, train, train_command,
)

pytestmark = pytest.mark.slow

DDP_STEPS = 10
# 40 training rows; batch 2 per device, global batch 8: 5 optimizer steps per epoch, so 10 steps = 2 epochs.
DDP = ("distributed=ddp", "distributed.num_processes=2", "training.global_batch_size=8",
       f"training.max_steps={DDP_STEPS}")
DS_STEPS = 3  # batch 2, 4 accumulation steps, 2 ranks: 16 rows a step, so the 40 rows make 2.5 steps (one epoch)
EPOCH_BATCHES = 10  # micro-batches per rank in one epoch: 40 rows / 2 per batch / 2 ranks


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("two_processes")


@pytest.fixture(scope="module")
def ddp(base):
    return train(base, "ddp", *DDP).ok()


@pytest.fixture(scope="module")
def one_rank(base):
    # The same global batch of 8 on one process: 4 accumulation steps of 2 instead of 2 x 2 ranks x 2.
    return train(base, "one", "distributed=none", "training.global_batch_size=8",
                 f"training.max_steps={DDP_STEPS}").ok()


@pytest.fixture(scope="module")
def zero2(base):
    # Through torchrun (distributed.launcher=torchrun runs `torchrun ... -m launcher.worker RUN/config.yaml`,
    # the command users may run themselves); ZeRO-3 below goes through accelerate launch.
    return train(base, "zero2", "distributed=zero2", "distributed.num_processes=2", "distributed.launcher=torchrun",
                 f"training.max_steps={DS_STEPS}").ok()


@pytest.fixture(scope="module")
def zero3(base):
    return train(base, "zero3", "distributed=zero3", "distributed.num_processes=2",
                 f"training.max_steps={DS_STEPS}").ok()


@pytest.fixture(scope="module")
def zero3_offload(base):
    return train(base, "zero3-offload", "distributed=zero3", "distributed.offload=optimizer",
                 "distributed.num_processes=2", f"training.max_steps={DS_STEPS}").ok()


def check_two_synchronised_ranks(run, wrapper: str, accelerate_type: str, steps: int, per_rank_batches: int):
    """World size 2 seen by torch and by the Trainer, the expected wrapper, different batches on each rank,
    and the same parameters on both at the end."""
    p0, p1 = run.probe(0), run.probe(1)
    for rank, p in ((0, p0), (1, p1)):
        assert (p["rank"], p["world_size"], p["trainer_world_size"], p["trainer_process_index"]) == (rank, 2, 2, rank)
        assert p["torch_backend"] == "gloo"
        assert p["wrapper"] == wrapper and p["accelerate_type"] == f"DistributedType.{accelerate_type}"
        assert p["global_step"] == steps
    # different data: within the first epoch no micro-batch of rank 0 is one of rank 1's
    first0, first1 = hashes(p0, 0, per_rank_batches), hashes(p1, 0, per_rank_batches)
    assert len(first0) == len(first1) == per_rank_batches
    assert not set(first0) & set(first1), "both ranks trained on the same batches"
    # synchronised: identical parameters after training (gathered first under ZeRO-3)
    assert p0["params_sha256"] == p1["params_sha256"]
    # and the job's log is the same on both (the losses are all-reduced before logging)
    assert p0["losses"] == p1["losses"] and len(p0["losses"]) == steps


def test_ddp_two_ranks(ddp):
    check_two_synchronised_ranks(ddp, "DistributedDataParallel", "MULTI_CPU", DDP_STEPS, per_rank_batches=EPOCH_BATCHES)
    for rank in (0, 1):
        p = ddp.probe(rank)
        assert p["params_local"] == p["params_full"] > 1_000_000         # every rank holds the whole model
        assert p["optimizer_state_numel"] == p["params_full"]            # and the whole optimizer state
    assert "accelerate" in ddp.launch()["command"] and ddp.launch()["world_size"] == 2


def test_ddp_matches_one_rank_with_the_same_global_batch(ddp, one_rank):
    one = one_rank.probe(0)
    assert (one["world_size"], one["trainer_world_size"], one["wrapper"]) == (1, 1, "LlamaForCausalLM")
    # The same samples make up every optimizer step: accelerate's seeded sampler draws one permutation on
    # every rank and deals micro-batch i to rank i % 2 (each micro-batch padded alike, hence the same hashes).
    check_same_as_one_process(one_rank, ddp, DDP_STEPS, learned=0.2)


def test_zero2_two_ranks(zero2):
    check_two_synchronised_ranks(zero2, "DeepSpeedEngine", "DEEPSPEED", DS_STEPS, per_rank_batches=EPOCH_BATCHES)
    assert "torchrun" in zero2.launch()["command"]
    total = 0
    for rank in (0, 1):
        p = zero2.probe(rank)
        assert p["deepspeed"] is True
        assert p["params_local"] == p["params_full"]                     # ZeRO-2 keeps the weights whole
        assert abs(p["optimizer_state_numel"] - p["params_full"] / 2) <= 0.01 * p["params_full"]  # but not Adam's
        total += p["optimizer_state_numel"]
    assert total >= zero2.probe(0)["params_full"]


def test_zero3_two_ranks_each_hold_half_the_parameters(zero3):
    check_two_synchronised_ranks(zero3, "DeepSpeedEngine", "DEEPSPEED", DS_STEPS, per_rank_batches=EPOCH_BATCHES)
    assert "accelerate" in zero3.launch()["command"]
    full = zero3.probe(0)["params_full"]
    for rank in (0, 1):
        p = zero3.probe(rank)
        assert p["params_full"] == full > 1_000_000
        assert abs(p["params_local"] - full / 2) <= 0.01 * full, p["params_local"]
        assert abs(p["optimizer_state_numel"] - full / 2) <= 0.01 * full
    assert zero3.probe(0)["params_local"] + zero3.probe(1)["params_local"] >= full


def test_zero3_with_optimizer_offload(zero3_offload):
    """The optimizer runs on the CPU (DeepSpeed's CPU Adam, which accelerate puts in place of torch's AdamW for
    offload); the job is still one synchronised ZeRO-3 job."""
    check_two_synchronised_ranks(zero3_offload, "DeepSpeedEngine", "DEEPSPEED", DS_STEPS,
                                 per_rank_batches=EPOCH_BATCHES)
    import json

    ds = json.loads((zero3_offload.run_dir / "deepspeed.json").read_text())["zero_optimization"]
    assert ds["stage"] == 3 and ds["offload_optimizer"]["device"] == "cpu" and "offload_param" not in ds
    for rank in (0, 1):
        p = zero3_offload.probe(rank)
        assert p["optimizer"] == "DeepSpeedCPUAdam", p["optimizer"]
        assert abs(p["params_local"] - p["params_full"] / 2) <= 0.01 * p["params_full"]


def test_zero3_saves_one_whole_model(zero3):
    from safetensors import safe_open

    with safe_open(str(zero3.run_dir / "model.safetensors"), "pt") as f:
        numel = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert numel == zero3.probe(0)["params_full"]  # gathered from both ranks, not rank 0's half


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- rank hygiene

# What a rank other than 0 may write in the run folder: its own share of a checkpoint, which no other rank can
# write for it (the Trainer's per-process RNG state, DeepSpeed's per-rank partitions of the model and optimizer
# states) and the folders holding them, inside the staging folder a save is written to (tmp-checkpoint-N/
# checkpoint-N, renamed by rank 0 when every rank is done: launcher.checkpointing). Nothing else: no log, model,
# tokenizer, state or manifest, and nothing in a published checkpoint-N.
RANK1_CHECKPOINT_FILES = re.compile(
    r"tmp-checkpoint-(\d+)(/checkpoint-\1"
    r"(/rng_state_1\.pth|/global_step\d+(/zero_pp_rank_1_mp_rank_00_(model|optim)_states\.pt)?)?)?")


@pytest.mark.parametrize("name", ["ddp", "zero3"])
def test_rank_1_writes_nothing_but_its_checkpoint_share(name, request):
    run = request.getfixturevalue(name)
    writes = run.probe(1)["writes"]
    paths = sorted({path for _, path in writes})
    assert paths, "the probe saw no write at all: it would not see a stray one either"
    assert any(p.endswith("rng_state_1.pth") for p in paths)  # torch.save from native code is seen
    stray = [p for p in paths if not RANK1_CHECKPOINT_FILES.fullmatch(p)]
    assert not stray, f"rank 1 wrote {stray} in the run folder"
    # The console carries rank 0's log lines once, not once per process; train.log is rank 0's alone.
    assert len(re.findall(r"INFO launcher\.trainers\.sft: training on \d+ sequences", run.output)) == 1
    log = (run.run_dir / "train.log").read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" not in log


def test_a_failing_rank_ends_the_job_promptly_with_its_traceback(base):
    run = train(base, "fail", *DDP, env={"TUNELAUNCH_PROBE_FAIL_RANK": "1"}, probe=False)
    assert run.returncode != 0
    assert "RuntimeError: probe: rank 1 fails on purpose after step 1" in run.output
    assert "Traceback" in run.output
    # The healthy rank is blocked in the next all-reduce; without the abort it waits there for gloo's
    # 30-minute timeout. About 30 s of this is imports and model loading.
    assert run.seconds < 150, f"took {run.seconds:.0f} s"
    assert "finished" not in (run.run_dir / "run_state.json").read_text()


# ---- two nodes, simulated on one machine

def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_two_nodes_meet_at_the_rendezvous_with_the_commands_plan_prints(base):
    """Node 0 is `tunelaunch train` (it writes the run folder and starts its own command); node 1 runs the
    `node 1:` command that `plan` prints, word for word. One process each, c10d at 127.0.0.1: the two
    launchers must find each other there and form one DDP job of world size 2."""
    from launcher.hardware import Hardware
    from launcher.planning import make_plan
    from launcher.report import render_plan

    run_dir, probe_dir, port = base / "nodes", base / "nodes-probe", free_port()
    overrides = ("distributed=ddp", "distributed.num_nodes=2", "distributed.num_processes=1",
                 "distributed.main_process_ip=127.0.0.1", f"distributed.main_process_port={port}",
                 f"training.max_steps={DS_STEPS}")
    printed = render_plan(make_plan(None, ["recipe=sft/chat_tiny", f"project_name={run_dir}", *overrides], Hardware()))
    node1 = shlex.split(re.search(r"^  node 1: (.+)$", printed, re.M).group(1))
    assert "--machine_rank" in node1 and node1[node1.index("--machine_rank") + 1] == "1"

    start = time.monotonic()
    node0 = subprocess.Popen(train_command(run_dir, *overrides), cwd=base, env=probe_env(probe_dir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Start node 1 once node 0's launcher holds the rendezvous port (earlier, node 1 would take the port
        # and node 0's launcher would refuse to start on a port in use).
        while not _listening(port):
            assert node0.poll() is None, node0.communicate()[0][-4000:]
            assert time.monotonic() - start < 180, "node 0 never opened the rendezvous port"
            time.sleep(0.5)
        second = subprocess.run(node1, cwd=base, env=probe_env(probe_dir), capture_output=True, text=True,
                                timeout=TIMEOUT)
        out0 = node0.communicate(timeout=TIMEOUT)[0]
    finally:
        if node0.poll() is None:
            node0.kill()
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert node0.returncode == 0, out0[-4000:]
    probes = read_probes(probe_dir)
    assert sorted(probes) == [0, 1]
    assert {p["node_rank_env"] for p in probes.values()} == {0, 1}  # one rank per node
    for p in probes.values():
        assert (p["world_size"], p["local_rank_env"], p["wrapper"]) == (2, 0, "DistributedDataParallel")
    assert probes[0]["params_sha256"] == probes[1]["params_sha256"]
    assert '"finished"' in (run_dir / "run_state.json").read_text()
