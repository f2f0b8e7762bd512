"""FSDP2 (`fully_shard`) with two real worker processes on CPU (gloo), through `tunelaunch train`.

FACTS.md: on CPU, Trainer `fsdp=` with FSDP2 silently trained plain DDP and `accelerate launch --use_fsdp` trained
two unsynchronised copies, both exiting 0. So every claim is checked from inside the ranks (the probe of
probe_site/tunelaunch_probe.py): accelerate's distributed type is FSDP, every parameter is a DTensor whose local
shard holds half of the whole tensor, the ranks see different batches and end with the same (gathered)
parameters, and the losses equal those of one process with the same global batch. Then the checkpoints: sharded
(DCP) folders written through the atomic staging folder, one whole model gathered into the run folder, and
kill -9 mid-run followed by the same command resumes to the weights of an uninterrupted run.

Full fine-tune runs under accelerate launch, LoRA under torchrun (the two ways FSDP's settings reach the
Trainer: accelerate's environment, or the run folder's accelerate_config.yaml through TrainingArguments).
Every run is the ~1M-parameter tiny Llama for a few steps, shared through module-scoped fixtures.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import tunelaunch
from tests.distributed.conftest import (
    check_same_as_one_process, hashes, kill_everything, max_weight_diff, probe_env, train, train_command, train_recipe,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STEPS = 9
# 40 training rows, batch 2 per process, global batch 8: 5 optimizer steps per epoch; checkpoints at 3, 6, 9.
COMMON = ("training.deterministic=true", "training.global_batch_size=8", f"training.max_steps={STEPS}",
          "training.save_strategy=steps", "training.save_steps=3", "training.save_total_limit=10", "logging.steps=1")
FSDP = ("distributed=fsdp", "distributed.num_processes=2")
# LoRA without dropout here: one process and two ranks draw their dropout masks from different RNG streams, which
# alone moved the final adapter by 6e-3 (the exact-resume test below keeps dropout, whose RNG a resume restores).
LAYOUTS = {"full": (), "lora": ("peft=lora", "distributed.launcher=torchrun", "peft.dropout=0")}
RESUMED = {"full": LAYOUTS["full"], "lora": ("peft=lora", "distributed.launcher=torchrun", "peft.dropout=0.1")}
FINAL_FILE = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}
EPOCH_BATCHES = 10  # micro-batches per rank in one epoch: 40 rows / 2 per batch / 2 ranks


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fsdp")


@pytest.fixture(scope="module")
def runs(base) -> dict:
    """Two-rank FSDP runs and one-process runs of the same global batch, full and LoRA."""
    out = {}
    for layout, extra in LAYOUTS.items():
        out[layout] = train(base, layout, *COMMON, *FSDP, *extra).ok()
        out[f"one-{layout}"] = train(base, f"one-{layout}", *COMMON, "distributed=none",
                                     *(a for a in extra if not a.startswith("distributed."))).ok()
    return out


@pytest.fixture(scope="module")
def uninterrupted(base, runs) -> dict:
    """The runs a resumed one must end equal to: LoRA with dropout gets its own."""
    return {"full": runs["full"].run_dir,
            "lora": train(base, "whole-lora", *COMMON, *FSDP, *RESUMED["lora"], probe=False).ok().run_dir}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_ranks_train_one_sharded_model(runs, layout):
    run = runs[layout]
    p0, p1 = run.probe(0), run.probe(1)
    for rank, p in ((0, p0), (1, p1)):
        assert (p["rank"], p["world_size"], p["trainer_world_size"], p["torch_backend"]) == (rank, 2, 2, "gloo")
        assert p["accelerate_type"] == "DistributedType.FSDP"
        assert p["wrapper"].startswith("FSDP"), p["wrapper"]  # fully_shard's class, not DDP's wrapper
        assert p["global_step"] == STEPS
        # every parameter is a DTensor whose shard on this rank is half of the whole tensor
        assert p["dtensor_params"] == p["params_count"] > 0
        for name, (local, whole, _) in p["shards"].items():
            assert abs(local - whole / 2) <= 0.05 * whole, f"rank {rank} holds {local} of {whole} of {name}"
        assert abs(p["params_local"] - p["params_full"] / 2) <= 0.01 * p["params_full"]
    for name, (local0, whole, _) in p0["shards"].items():
        assert local0 + p1["shards"][name][0] == whole, name  # the two shards make the whole
    # the optimizer states are sharded like the trainable parameters
    trainable = sum(whole for _, whole, grad in p0["shards"].values() if grad)
    assert p0["optimizer_state_numel"] + p1["optimizer_state_numel"] == trainable
    assert abs(p0["optimizer_state_numel"] - trainable / 2) <= 0.01 * trainable
    # different batches on each rank, the same parameters at the end (gathered from both shards)
    first0, first1 = hashes(p0, 0, EPOCH_BATCHES), hashes(p1, 0, EPOCH_BATCHES)
    assert len(first0) == len(first1) == EPOCH_BATCHES
    assert not set(first0) & set(first1), "both ranks trained on the same batches"
    assert p0["params_sha256"] == p1["params_sha256"]
    assert p0["losses"] == p1["losses"] and len(p0["losses"]) == STEPS
    expected = "accelerate" if layout == "full" else "torchrun"
    assert expected in run.launch()["command"] and run.launch()["world_size"] == 2


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_fsdp_ranks_match_one_process_with_the_same_global_batch(runs, layout):
    one, two = runs[f"one-{layout}"], runs[layout]
    alone = one.probe(0)
    assert (alone["world_size"], alone["trainer_world_size"]) == (1, 1)
    check_same_as_one_process(one, two, STEPS, learned=0.1)
    # and the same model at the end (gathered by the final save from the two ranks' shards)
    assert max_weight_diff(one.run_dir, two.run_dir, FINAL_FILE[layout]) <= 1e-5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoints_are_sharded_and_the_run_folder_holds_one_whole_model(runs, layout):
    from safetensors import safe_open

    from launcher.distributed.fsdp import checkpoint_world_size

    run = runs[layout]
    assert not list(run.run_dir.glob("tmp-*"))
    for step in (3, 6, 9):
        checkpoint = run.run_dir / f"checkpoint-{step}"
        shards = sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
        assert [s.split("_")[2] for s in shards] == ["0", "1"], shards  # one DCP file per rank
        assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file()
        assert list((checkpoint / "optimizer_0").glob("*.distcp"))
        assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
        assert checkpoint_world_size(checkpoint) == 2
    # rank 1 wrote its shares inside the staging folders only (launcher.checkpointing publishes them)
    stray = sorted({path for _, path in run.probe(1)["writes"] if not path.startswith("tmp-checkpoint-")})
    assert not stray, f"rank 1 wrote {stray}"
    p0 = run.probe(0)
    with safe_open(str(run.run_dir / FINAL_FILE[layout]), "pt") as f:
        numel = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    if layout == "full":
        assert numel == p0["params_full"]  # gathered from both ranks, not rank 0's half
    else:
        assert numel == sum(whole for _, whole, grad in p0["shards"].values() if grad)
    assert not (run.run_dir / "pytorch_model_fsdp_0").exists()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_generate_reads_the_fsdp_run_as_the_one_process_run(runs, layout):
    """The gathered model (or adapter) is read by `tunelaunch generate` like any run: greedy replies of the FSDP run
    and of the one-process run of the same global batch (weights equal within 1e-5) are the same text."""
    def reply(run) -> str:
        out = subprocess.run(tunelaunch("generate", run.run_dir, "--prompt", "Name a planet.", "--max-new-tokens",
                                        "12"), capture_output=True, text=True, env=probe_env(None), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    sharded, alone = reply(runs[layout]), reply(runs[f"one-{layout}"])
    assert sharded == alone
    if layout == "full":  # (the 9-step LoRA of the random tiny model ends its reply at once, in both runs)
        assert sharded.strip()


def test_dpo_with_lora_trains_under_fsdp(base):
    """DPO's reference is the base with the adapter switched off: no second model to shard."""
    run = train_recipe(base, "dpo-lora", "dpo/preference_tiny", "peft=lora", *FSDP, "training.max_steps=4").ok()
    p0, p1 = run.probe(0), run.probe(1)
    for p in (p0, p1):
        assert p["accelerate_type"] == "DistributedType.FSDP" and p["dtensor_params"] == p["params_count"]
        assert "ref_model_dtensor_params" not in p  # the adapter-disabled base is the reference
    assert p0["params_sha256"] == p1["params_sha256"] and p0["losses"] == p1["losses"]
    assert p0["losses"][-1] < p0["losses"][0]  # 0.693 (log 2) at the start, lower once it learns
    assert (run.run_dir / "adapter_model.safetensors").is_file()


def test_a_merged_lora_under_fsdp_is_one_standalone_model(base, runs):
    """peft.merge_adapter: the adapter gathered from both ranks, folded into its base on rank 0."""
    from safetensors import safe_open

    run = train(base, "merged", *FSDP, "peft=lora", "peft.merge_adapter=true", "training.max_steps=2",
                probe=False).ok()
    assert not (run.run_dir / "adapter_model.safetensors").exists() and not list(run.run_dir.glob(".fsdp-merge*"))
    with safe_open(str(run.run_dir / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
        numel = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert numel == runs["full"].probe(0)["params_full"]


# ---- kill -9 mid-run, then the same command

def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kill_9_mid_run_then_the_same_command_resumes_exactly(base, uninterrupted, layout):
    name, args = f"kill9-{layout}", (*COMMON, *FSDP, *RESUMED[layout])
    env = probe_env(None, {"TUNELAUNCH_PROBE_STEP_SLEEP": "0.4"})
    proc = subprocess.Popen(train_command(base / name, *args), cwd=base, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ready = base / name / "checkpoint-6" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not ready.is_file():
        assert proc.poll() is None, f"the run ended before checkpoint-6:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint-6 after 300 s"
        time.sleep(0.2)
    time.sleep(0.6)  # a step or two past the checkpoint, mid-run
    kill_everything(proc)
    assert not (base / name / FINAL_FILE[layout]).exists()
    again = train(base, name, *args, probe=False).ok()
    assert "resuming from checkpoint-" in again.output
    diff = max_weight_diff(uninterrupted[layout], again.run_dir, FINAL_FILE[layout])
    assert diff <= 1e-5, diff
