"""Plan-time decisions of launcher/distributed: processes, backend (auto from the memory estimate), the files
written for accelerate and DeepSpeed, per-node launch commands, and the compatibility rules.

Machines we do not have are described by hand (`Hardware(gpus=8, ...)`); the per-node commands are read back
through accelerate's and torchrun's own argument parsers, so the test checks what they would do with them.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.config.errors import ConfigError
from launcher.distributed.deepspeed import deepspeed_config
from launcher.distributed.hardware import Hardware
from launcher.distributed.launch import accelerate_config, launch_command
from launcher.planning import make_plan
from launcher.report import render_plan

REPO = Path(__file__).resolve().parents[2]
CPU = Hardware()
H100x8 = Hardware(gpus=8, gpu_name="H100", gpu_memory_gib=80, bf16=True)
LLAMA3_8B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "rope_theta": 500000.0,
}


def plan(tmp_path, *overrides, hw=CPU):
    return make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", *overrides], hw)


def problems(tmp_path, *overrides, hw=CPU) -> list[str]:
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, *overrides, hw=hw)
    return [str(p) for p in err.value.problems]


@pytest.fixture(scope="module")
def llama3_8b(tmp_path_factory) -> Path:
    """A model folder with Llama-3-8B's config.json and no weights: the plan must not need them."""
    folder = tmp_path_factory.mktemp("models") / "llama3-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
    return folder


# ---- processes and backend

def test_one_process_is_none_and_several_on_cpu_are_ddp(tmp_path):
    one = plan(tmp_path)
    assert (one.launch.backend, one.launch.world_size) == ("none", 1)
    two = plan(tmp_path, "distributed.num_processes=2")
    assert (two.launch.backend, two.launch.world_size) == ("ddp", 2)
    assert "no GPU memory to compare" in two.launch.reason


def test_auto_tiny_model_on_8_gpus_is_ddp(tmp_path):
    p = plan(tmp_path, hw=H100x8)
    assert (p.launch.backend, p.launch.world_size) == ("ddp", 8)
    assert p.cfg.distributed.backend == "ddp"  # the workers read a concrete backend, never auto


def test_auto_8b_full_finetune_on_8x80gb_is_zero2_and_plan_says_why(tmp_path, llama3_8b):
    # By hand (tests/unit/test_memory.py): DDP ~122 GiB per GPU, ZeRO-2 ~34.4 GiB <= 90% of 80.
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", hw=H100x8)
    assert p.launch.backend == "deepspeed"
    assert (p.cfg.distributed.backend, p.cfg.distributed.zero_stage, p.cfg.distributed.offload) == (
        "deepspeed", 2, "none")
    text = render_plan(p, brief=True)
    assert "ZeRO-2, the first of DDP, ZeRO-2, ZeRO-3" in text and "DDP needs ~122 GiB" in text
    assert "~34.4 GiB per GPU" in text and "fits" in text


def test_auto_8b_on_smaller_gpus_shards_further(tmp_path, llama3_8b):
    def chosen(gib):
        hw = Hardware(gpus=8, gpu_name="GPU", gpu_memory_gib=gib, bf16=True)
        d = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", hw=hw).cfg.distributed
        return d.backend, d.zero_stage, d.offload

    assert chosen(32) == ("deepspeed", 3, "none")        # ZeRO-2 34.4 > 28.8 >= ZeRO-3 23.3
    assert chosen(24) == ("deepspeed", 3, "optimizer")   # ZeRO-3 23.3 > 21.6


def test_8b_under_ddp_by_choice_is_warned_about(tmp_path, llama3_8b):
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "distributed=ddp", hw=H100x8)
    assert any("memory: warning: DDP needs" in n for n in p.notes)


def test_no_estimate_without_a_local_config(tmp_path):
    p = plan(tmp_path, "model.name_or_path=meta-llama/Meta-Llama-3-8B", "distributed.num_processes=2")
    assert p.launch.backend == "ddp" and p.launch.estimate is None
    assert "not a local folder with a config.json" in render_plan(p, brief=True)


def test_global_batch_size_fixes_the_accumulation_over_the_world(tmp_path):
    p = plan(tmp_path, "distributed=ddp", "distributed.num_processes=2", "training.global_batch_size=8")
    assert (p.cfg.training.batch_size, p.cfg.training.gradient_accumulation) == (2, 2)
    assert any("global 8 = 2 per device x 2 process(es) x 2 accumulation" in n for n in p.notes)
    assert any("not a multiple of batch_size 2 x world size 2" in s for s in problems(
        tmp_path, "distributed=ddp", "distributed.num_processes=2", "training.global_batch_size=6"))


# ---- the files written into the run folder

def test_deepspeed_json_is_explicit_and_consistent_with_the_trainer(tmp_path):
    p = plan(tmp_path, "distributed=zero3", "distributed.num_processes=2", "training.gradient_accumulation=3")
    ds = deepspeed_config(p.cfg, p.launch.world_size, p.launch.hidden_size, has_gpu=False)
    assert "auto" not in json.dumps(ds)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        2, 3, 2 * 3 * 2)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["reduce_bucket_size"] == 128 * 128  # the tiny model's hidden size, so ZeRO-3 really partitions it
    assert z["stage3_param_persistence_threshold"] == 1280
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # fp32 on CPU
    acc = accelerate_config(p.cfg, p.launch, p.hardware, tmp_path / "run")
    assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 2
    assert acc["deepspeed_config"]["deepspeed_config_file"] == str((tmp_path / "run" / "deepspeed.json").resolve())
    assert acc["deepspeed_config"]["zero3_init_flag"] is True


def test_offload_is_written_for_deepspeed(tmp_path):
    p = plan(tmp_path, "distributed=zero3", "distributed.offload=optimizer_and_params", "distributed.num_processes=2")
    z = deepspeed_config(p.cfg, 2, p.launch.hidden_size, has_gpu=True)["zero_optimization"]
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "cpu", "pin_memory": True}


# ---- several nodes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_args_from_accelerate(cmd: list[str]):
    """What `accelerate launch` would hand to torchrun for this command (its own parser and checks)."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import _filter_args
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    assert cmd[1] == "launch"
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[2:]))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        prepare_deepspeed_cmd_env(args)
    else:
        prepare_multi_gpu_env(args)
    script = ["--training_script", args.training_script, "--training_script_args", args.training_script_args]
    return _filter_args(args, distrib_run.get_args_parser(), script)


@pytest.mark.parametrize("distributed", ["ddp", "zero3"])
def test_two_nodes_of_8_gpus_through_accelerate(tmp_path, distributed):
    port = _free_port()
    p = plan(tmp_path, f"distributed={distributed}", "distributed.num_nodes=2", "distributed.main_process_ip=10.1.2.3",
             f"distributed.main_process_port={port}", hw=H100x8)
    assert (p.launch.processes_per_node, p.launch.num_nodes, p.launch.world_size) == (8, 2, 16)
    run = tmp_path / "run"
    run.mkdir()
    acc = accelerate_config(p.cfg, p.launch, p.hardware, run)
    assert (acc["num_processes"], acc["num_machines"]) == (16, 2)  # accelerate wants the total
    (run / "accelerate_config.yaml").write_text(yaml.safe_dump(acc))

    text = render_plan(p)
    for rank in (0, 1):
        cmd = launch_command(p.cfg, p.launch, run, node_rank=rank)
        assert f"node {rank}: " in text and " ".join(cmd[1:4]) in text
        t = _torchrun_args_from_accelerate(cmd)
        assert (t.nnodes, t.node_rank, t.nproc_per_node) == ("2", rank, "8")
        assert (t.rdzv_backend, t.rdzv_endpoint) == ("c10d", f"10.1.2.3:{port}")
        assert t.module and t.training_script == "launcher.worker"
        assert t.training_script_args == [str(run / "config.yaml")]


def test_two_nodes_of_8_gpus_through_torchrun(tmp_path):
    import torch.distributed.run as distrib_run

    p = plan(tmp_path, "distributed.launcher=torchrun", "distributed.num_nodes=2",
             "distributed.main_process_ip=10.1.2.3", "distributed.main_process_port=29555", hw=H100x8)
    text = render_plan(p)
    for rank in (0, 1):
        cmd = launch_command(p.cfg, p.launch, p.run_dir, node_rank=rank)
        assert f"node {rank}: {' '.join(cmd)}" in text
        t = distrib_run.get_args_parser().parse_args(cmd[1:])
        assert (t.nnodes, t.node_rank, t.nproc_per_node) == ("2", rank, "8")
        assert (t.rdzv_backend, t.rdzv_endpoint, t.standalone) == ("c10d", "10.1.2.3:29555", False)
        assert t.module and t.training_script == "launcher.worker"


def test_node_rank_out_of_range(tmp_path):
    assert any("distributed.node_rank: 2 is not in [0, 2)" in s for s in problems(
        tmp_path, "distributed.num_nodes=2", "distributed.node_rank=2", hw=H100x8))


# ---- compatibility rules

def test_fsdp_without_a_gpu_is_refused(tmp_path):
    found = problems(tmp_path, "distributed=fsdp", "distributed.num_processes=2")
    assert any("fsdp needs GPUs and this machine has none" in s and "unsynchronised copies" in s for s in found)
    plan(tmp_path, "distributed=fsdp", hw=H100x8)  # the rule is about the GPU, not FSDP


def test_fsdp_without_a_gpu_is_refused_by_the_cli(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "recipe=sft/chat_tiny",
                          f"project_name={tmp_path / 'run'}", "distributed=fsdp", "distributed.num_processes=2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "fsdp needs GPUs and this machine has none" in out.stdout + out.stderr
    assert not (tmp_path / "run").exists()


def test_bf16_without_a_gpu_becomes_fp32_and_says_so(tmp_path):
    p = plan(tmp_path, "precision=bf16", "distributed=zero2", "distributed.num_processes=2")
    assert p.cfg.precision.mixed_precision == "fp32"
    assert any("bf16 needs a GPU and this machine has none, so the run uses fp32" in n for n in p.notes)
    assert deepspeed_config(p.cfg, 2, p.launch.hidden_size, False)["bf16"]["enabled"] is False


def test_int8_with_fsdp_is_an_error_and_int4_is_a_stated_adjustment(tmp_path):
    qlora = ("peft=qlora",)
    assert any("int8 weights cannot be sharded by FSDP" in s for s in problems(
        tmp_path, *qlora, "quantization.mode=int8", "distributed=fsdp", hw=H100x8))
    for backend in ("distributed=fsdp", "distributed=zero3"):
        p = plan(tmp_path, *qlora, "quantization.mode=int4", backend, hw=H100x8)
        assert any("bnb_4bit_quant_storage equal to the compute dtype" in n for n in p.notes), backend
    p = plan(tmp_path, *qlora, "quantization.mode=int8", "distributed=zero3", hw=H100x8)
    assert any("int8 under ZeRO-3 is outside what peft documents" in n for n in p.notes)
    p = plan(tmp_path, *qlora, "quantization.mode=int4", "distributed=zero2", hw=H100x8)
    assert not any("quant_storage" in n for n in p.notes)


def test_checkpointing_with_lora_under_zero3_states_reentrant(tmp_path):
    p = plan(tmp_path, "peft=lora", "distributed=zero3", hw=H100x8)
    assert p.cfg.training.gradient_checkpointing is True  # auto -> on with a GPU
    assert any("reentrant checkpointing (use_reentrant=True" in n for n in p.notes)
    for other in (("peft=lora", "distributed=zero2"), ("peft=none", "distributed=zero3"),
                  ("peft=lora", "distributed=zero3", "training.gradient_checkpointing=false")):
        assert not any("reentrant" in n for n in plan(tmp_path, *other, hw=H100x8).notes), other


@pytest.mark.parametrize("backend", ["distributed=zero2", "distributed=zero3", "distributed=fsdp"])
def test_auto_find_batch_size_with_a_sharded_engine_is_refused(tmp_path, backend):
    assert any(s.startswith("training.auto_find_batch_size: cannot be used with") for s in problems(
        tmp_path, backend, "training.auto_find_batch_size=true", hw=H100x8))


def test_auto_find_batch_size_with_ddp_is_fine(tmp_path):
    plan(tmp_path, "distributed=ddp", "training.auto_find_batch_size=true", hw=H100x8)


def test_offload_rules(tmp_path):
    assert any("CPU offload is DeepSpeed's" in s for s in problems(
        tmp_path, "distributed=ddp", "distributed.offload=optimizer", hw=H100x8))
    assert any("parameter offload needs ZeRO-3" in s for s in problems(
        tmp_path, "distributed=zero2", "distributed.offload=optimizer_and_params", hw=H100x8))


def test_backend_none_with_several_processes_is_refused(tmp_path):
    assert any("none runs one process but 2 are planned" in s for s in problems(
        tmp_path, "distributed=none", "distributed.num_processes=2"))
