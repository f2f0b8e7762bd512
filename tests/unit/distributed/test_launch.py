"""The launch (launcher/distributed/launch.py) of a resolved configuration: how many processes with which backend,
what each backend refuses or states (`check`), the files written for accelerate and DeepSpeed (`prepare`), and the
per-node commands.

The backend and the process count are made concrete by launcher.resolve (tested here as the launch plan they make,
through `resolve` on a configuration and through `make_plan` on the tiny chat recipe). Machines we do not have are
described by hand (`Hardware(gpus=8, ...)`); the per-node commands are read back through accelerate's and torchrun's
own argument parsers, so the test checks what they would do with them.
"""
import json
import os
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from launcher.distributed.deepspeed import deepspeed_config
from launcher.distributed.launch import accelerate_config, check, node_command, prepare, worker_env, world_size
from launcher.hardware import Hardware
from launcher.report import render_plan
from launcher.resolve import resolve
from launcher.run_dir import read_config, write_config
from tests.conftest import run_cli
from tests.unit.helpers import CPU, H100x8, plan, problems, valid_cfg


def resolved(hw: Hardware = CPU, **distributed):
    """valid_cfg() (a hub model: no memory estimate) with these distributed settings, resolved for hw."""
    cfg = valid_cfg()
    for key, value in distributed.items():
        setattr(cfg.distributed, key, value)
    resolution = resolve(cfg, hw)
    assert resolution.problems == []
    return cfg, resolution


# ---- processes and backend

def test_one_process_is_none_and_several_on_cpu_are_ddp(tmp_path):
    cfg, res = resolved()
    assert (cfg.distributed.backend, cfg.distributed.num_processes, world_size(cfg)) == ("none", 1, 1)
    assert check(cfg, CPU)[0] == []
    assert res.backend_reason == "one process: no distributed wrapper"
    cfg, res = resolved(num_processes=2)
    assert (cfg.distributed.backend, world_size(cfg)) == ("ddp", 2)
    assert check(cfg, CPU)[0] == []
    assert "no memory estimate" in res.backend_reason  # org/model has no local config.json

    # the same through make_plan, where the tiny model's config.json gives an estimate
    one = plan(tmp_path)
    assert (one.cfg.distributed.backend, one.world_size) == ("none", 1)
    two = plan(tmp_path, "distributed.num_processes=2")
    assert (two.cfg.distributed.backend, two.world_size) == ("ddp", 2)
    assert "no GPU memory to compare" in two.resolution.backend_reason


def test_eight_gpus_default_to_eight_ddp_processes(tmp_path):
    cfg, _ = resolved(H100x8)
    assert (cfg.distributed.backend, cfg.distributed.num_processes, world_size(cfg)) == ("ddp", 8, 8)
    assert check(cfg, H100x8)[0] == []
    p = plan(tmp_path, hw=H100x8)  # the tiny model fits anywhere
    assert (p.cfg.distributed.backend, p.cfg.distributed.num_processes, p.world_size) == ("ddp", 8, 8)
    # the workers read a concrete backend, never auto
    write_config(tmp_path, p.cfg)
    assert read_config(tmp_path).distributed.backend == "ddp"


def test_auto_8b_full_finetune_on_8x80gb_is_zero2_and_plan_says_why(tmp_path, llama3_8b):
    # By hand (tests/unit/distributed/test_memory.py): DDP ~122 GiB per GPU, ZeRO-2 ~34.4 GiB <= 90% of 80.
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", hw=H100x8)
    assert (p.cfg.distributed.backend, p.cfg.distributed.zero_stage, p.cfg.distributed.offload) == (
        "deepspeed", 2, "none")
    assert p.resolution.hidden_size == 4096
    text = render_plan(p, brief=True)
    assert "ZeRO-2, the first of DDP, ZeRO-2, FSDP (no reshard after forward), ZeRO-3, FSDP" in text
    assert "DDP needs ~122 GiB" in text
    assert "~34.4 GiB per GPU" in text and "fits" in text


def test_auto_8b_on_smaller_gpus_shards_further(tmp_path, llama3_8b):
    def chosen(gib):
        hw = Hardware(gpus=8, gpu_name="GPU", gpu_memory_gib=gib, bf16=True)
        d = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", hw=hw).cfg.distributed
        return d.backend, d.zero_stage, d.offload

    assert chosen(32) == ("deepspeed", 3, "none")        # ZeRO-2 34.4 > 28.8 >= ZeRO-3 23.3
    # ZeRO-3 23.3 > 21.6 >= FSDP 19.0: FSDP fits without offload (before FSDP was a candidate: ZeRO-3 + optimizer
    # offload); the stage is left at its default, which FSDP does not read
    assert chosen(24) == ("fsdp", 2, "none")
    assert chosen(16) == ("deepspeed", 3, "optimizer")   # FSDP 19.0 > 14.4 >= ZeRO-3 + optimizer offload 6.5


def test_8b_under_ddp_by_choice_is_warned_about(tmp_path, llama3_8b):
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "distributed=ddp", hw=H100x8)
    assert p.resolution.backend_reason == "chosen in the configuration"
    assert any("memory: warning: DDP needs" in n for n in p.notes)


def test_no_estimate_without_a_local_config(tmp_path):
    p = plan(tmp_path, "model.name_or_path=meta-llama/Meta-Llama-3-8B", "distributed.num_processes=2")
    assert p.cfg.distributed.backend == "ddp" and p.resolution.estimate is None
    assert "not a local folder with a config.json" in p.resolution.estimate_missing
    assert "not a local folder with a config.json" in render_plan(p, brief=True)


# ---- the files written into the run folder (launch.prepare) and the accelerate config

@pytest.mark.parametrize("distributed", ["zero3", "ddp"])
def test_prepare_writes_what_the_launchers_read(tmp_path, distributed):
    p = plan(tmp_path, f"distributed={distributed}", "distributed.num_processes=2")
    run = tmp_path / "run"
    run.mkdir()
    out = prepare(p.cfg, p.hardware, run, p.resolution.hidden_size)
    deepspeed = distributed == "zero3"
    expected = ["accelerate_config.yaml", "launch.json"] + (["deepspeed.json"] if deepspeed else [])
    assert sorted(f.name for f in run.iterdir()) == sorted(expected)  # and no temporary left beside them

    acc = yaml.safe_load((run / "accelerate_config.yaml").read_text())
    assert acc == accelerate_config(p.cfg, p.hardware, run) and acc["num_processes"] == 2
    info = json.loads((run / "launch.json").read_text())
    assert {k: info[k] for k in ("command", "backend", "world_size", "hardware")} == {
        "command": shlex.join(out.command), "backend": "deepspeed" if deepspeed else "ddp", "world_size": 2,
        "hardware": "CPU only (no GPU)"}
    assert out.command == node_command(p.cfg, run)
    assert out.command[1:4] == ["launch", "--config_file", str(run / "accelerate_config.yaml")]
    assert worker_env(p.cfg, p.hardware).items() <= out.env.items()  # the backend's variables reach the workers
    if deepspeed:
        assert acc["distributed_type"] == "DEEPSPEED"
        assert acc["deepspeed_config"]["deepspeed_config_file"] == str((run / "deepspeed.json").resolve())
        assert json.loads((run / "deepspeed.json").read_text()) == deepspeed_config(
            p.cfg, 2, p.resolution.hidden_size, has_gpu=False)
        assert out.env["DS_ACCELERATOR"] == "cpu" and out.env["TORCH_EXTENSIONS_DIR"]
    else:
        assert acc["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in acc
        assert not (run / "deepspeed.json").exists() and worker_env(p.cfg, p.hardware) == {}


def test_prepare_writes_no_token_given_on_the_command_line(tmp_path):
    secret = "hf_overrideSECRET0123456789"
    overrides = ("recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", f"hub.token={secret}")
    from launcher.planning import make_plan

    p = make_plan(None, list(overrides), CPU)
    run = tmp_path / "run"
    run.mkdir()
    prepare(p.cfg, p.hardware, run, p.resolution.hidden_size, overrides)
    for f in run.iterdir():
        assert secret not in f.read_text(), f


def test_worker_env_of_deepspeed_on_gpus_leaves_the_accelerator_alone():
    cfg, _ = resolved(H100x8, backend="deepspeed")
    env = worker_env(cfg, H100x8)
    assert "DS_ACCELERATOR" not in env and env["TORCH_EXTENSIONS_DIR"].endswith("torch_extensions")


def test_accelerate_config_ddp_on_cpu(tmp_path):
    cfg, _ = resolved(num_processes=2)
    out = accelerate_config(cfg, CPU, tmp_path)
    assert out["distributed_type"] == "MULTI_GPU"
    assert out["num_processes"] == 2
    assert out["num_machines"] == 1 and out["machine_rank"] == 0
    assert out["mixed_precision"] == "no"
    assert out["rdzv_backend"] == "static" and out["same_network"] is True
    assert "auto" not in yaml.safe_dump(out)


def test_accelerate_config_single_process_on_cpu(tmp_path):
    cfg, _ = resolved()
    out = accelerate_config(cfg, CPU, tmp_path)
    assert out["distributed_type"] == "NO" and out["num_processes"] == 1 and out["use_cpu"] is True


def test_accelerate_command_uses_the_run_folder_config(tmp_path):
    cfg, _ = resolved()
    cmd = node_command(cfg, tmp_path)
    assert cmd[1:4] == ["launch", "--config_file", str(tmp_path / "accelerate_config.yaml")]
    assert cmd[-3:] == ["-m", "launcher.worker", str(tmp_path / "config.yaml")]
    assert "--machine_rank" not in cmd


def test_torchrun_single_node_is_standalone(tmp_path):
    cfg, _ = resolved(launcher="torchrun")
    cmd = node_command(cfg, tmp_path)
    assert Path(cmd[0]).name == "torchrun"
    assert "--standalone" in cmd and "--node_rank" not in cmd
    assert cmd[cmd.index("--nproc_per_node") + 1] == "1"


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
    d = p.cfg.distributed
    assert (d.num_processes, d.num_nodes, p.world_size) == (8, 2, 16)
    run = tmp_path / "run"
    run.mkdir()
    acc = accelerate_config(p.cfg, p.hardware, run)
    assert (acc["num_processes"], acc["num_machines"]) == (16, 2)  # accelerate wants the total
    assert acc["rdzv_backend"] == "c10d" and acc["same_network"] is False
    if distributed == "ddp":
        assert acc["mixed_precision"] == "bf16"
    else:  # DeepSpeed's precision lives in deepspeed.json only
        assert "mixed_precision" not in acc
    (run / "accelerate_config.yaml").write_text(yaml.safe_dump(acc))

    text = render_plan(p)
    for rank in (0, 1):
        cmd = node_command(p.cfg, run, node_rank=rank)
        assert f"node {rank}: " in text and " ".join(cmd[1:4]) in text
        t = _torchrun_args_from_accelerate(cmd)
        assert (t.nnodes, t.node_rank, t.nproc_per_node) == ("2", rank, "8")
        assert (t.rdzv_backend, t.rdzv_endpoint) == ("c10d", f"10.1.2.3:{port}")
        assert t.module and t.training_script == "launcher.worker"
        assert t.training_script_args == [str(run / "config.yaml")]


def test_two_nodes_of_8_gpus_through_torchrun(tmp_path):
    import torch.distributed.run as distrib_run

    p = plan(tmp_path, "distributed.launcher=torchrun", "distributed.num_nodes=2", "distributed.node_rank=1",
             "distributed.main_process_ip=10.1.2.3", "distributed.main_process_port=29555", hw=H100x8)
    assert p.world_size == 16
    own = node_command(p.cfg, p.run_dir)  # this node's: node_rank from the configuration
    assert Path(own[0]).name == "torchrun" and "--standalone" not in own
    assert own[own.index("--node_rank") + 1] == "1"
    assert own[-3:] == ["-m", "launcher.worker", str(p.run_dir / "config.yaml")]
    text = render_plan(p)
    for rank in (0, 1):
        cmd = node_command(p.cfg, p.run_dir, node_rank=rank)
        assert f"node {rank}: {' '.join(cmd)}" in text
        t = distrib_run.get_args_parser().parse_args(cmd[1:])
        assert (t.nnodes, t.node_rank, t.nproc_per_node) == ("2", rank, "8")
        assert (t.rdzv_backend, t.rdzv_endpoint, t.standalone) == ("c10d", "10.1.2.3:29555", False)
        assert t.module and t.training_script == "launcher.worker"


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_an_endpoint_replaces_the_configured_rendezvous(tmp_path, launcher):
    cfg, _ = resolved(H100x8, launcher=launcher, num_nodes=2)
    cmd = " ".join(node_command(cfg, tmp_path, node_rank=1, endpoint=("node-a", 31234)))
    assert ("--rdzv_endpoint node-a:31234" if launcher == "torchrun" else
            "--main_process_ip node-a --main_process_port 31234") in cmd
    assert "127.0.0.1" not in cmd


def test_node_rank_out_of_range(tmp_path):
    cfg, _ = resolved(H100x8, num_nodes=2, node_rank=2)
    assert [p.key for p in check(cfg, H100x8)[0]] == ["distributed.node_rank"]
    assert any("distributed.node_rank: 2 is not in [0, 2)" in s for s in problems(
        tmp_path, "distributed.num_nodes=2", "distributed.node_rank=2", hw=H100x8))


# ---- what the backends refuse or state (launch.check)

def test_zero_processes_are_refused():
    cfg, _ = resolved(H100x8, num_processes=0)
    assert cfg.distributed.num_processes == 0  # a stated count is not resolved away
    assert [p.key for p in check(cfg, H100x8)[0]] == ["distributed.num_processes / distributed.num_nodes"]


def test_a_negative_process_count_is_refused():
    cfg, _ = resolved(H100x8, num_processes=-1)
    assert [p.key for p in check(cfg, H100x8)[0]] == ["distributed.num_processes / distributed.num_nodes"]


def test_fsdp_without_a_gpu_is_planned_over_gloo(tmp_path):
    """FSDP2 runs on CPU (tests/distributed/test_fsdp.py trains it with two gloo processes): no refusal, on a
    machine with GPUs or without."""
    for hw in (CPU, H100x8):
        cfg, _ = resolved(hw, backend="fsdp", num_processes=2)
        assert check(cfg, hw)[0] == []
    cpu = plan(tmp_path, "distributed=fsdp", "distributed.num_processes=2")
    assert (cpu.cfg.distributed.backend, cpu.world_size) == ("fsdp", 2)
    plan(tmp_path, "distributed=fsdp", hw=H100x8)


def test_fsdp_without_a_gpu_is_planned_by_the_cli(tmp_path):
    out = run_cli("plan", "recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", "distributed=fsdp",
                  "distributed.num_processes=2", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "needs GPUs" not in out.stdout + out.stderr
    assert not (tmp_path / "run").exists()  # plan writes nothing


def test_backend_none_with_several_processes_is_refused(tmp_path):
    cfg, _ = resolved(backend="none", num_processes=2)
    found = check(cfg, CPU)[0]
    assert [p.key for p in found] == ["distributed.backend"]
    assert "none runs one process but 2 are planned" in found[0].message
    assert any("none runs one process but 2 are planned" in s for s in problems(
        tmp_path, "distributed=none", "distributed.num_processes=2"))


def test_a_missing_backend_package_says_why_auto_chose_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    cfg, _ = resolved(H100x8, backend="deepspeed")
    found = check(cfg, H100x8, why_chosen="8 processes: ZeRO-2 fits")[0]
    assert [p.key for p in found] == ["distributed.backend"]
    assert "pip install 'tunelaunch[deepspeed]'" in found[0].message
    assert "(distributed=auto chose it: 8 processes: ZeRO-2 fits)" in found[0].message
    assert "auto chose it" not in str(check(cfg, H100x8)[0][0])  # chosen in the configuration: no reason given


def test_bf16_without_a_gpu_becomes_fp32_and_says_so(tmp_path):
    p = plan(tmp_path, "precision=bf16", "distributed=zero2", "distributed.num_processes=2")
    assert p.cfg.precision.mixed_precision == "fp32"
    assert any("bf16 needs a GPU and this machine has none, so the run uses fp32" in n for n in p.notes)
    assert deepspeed_config(p.cfg, 2, p.resolution.hidden_size, False)["bf16"]["enabled"] is False


def test_int8_with_fsdp_is_an_error_and_int4_is_a_stated_adjustment(tmp_path):
    qlora = ("peft=qlora",)
    assert any("int8 weights cannot be sharded by fsdp" in s for s in problems(
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
    from launcher.trainers.common import training_kwargs

    p = plan(tmp_path, "distributed=ddp", "training.auto_find_batch_size=true", hw=H100x8)
    assert p.cfg.distributed.backend == "ddp" and p.cfg.training.auto_find_batch_size is True
    found, _ = check(p.cfg, p.hardware)
    assert not any("auto_find_batch_size" in pr.key for pr in found), found
    # it reaches the file the workers read, and the Trainer's arguments built from it
    write_config(tmp_path, p.cfg)
    worker_cfg = read_config(tmp_path)
    assert worker_cfg.training.auto_find_batch_size is True
    assert training_kwargs(worker_cfg, tmp_path, 40, False, 8)["auto_find_batch_size"] is True


def test_offload_is_deepspeeds_and_is_noted_elsewhere(tmp_path):
    """distributed.offload is read by DeepSpeed only: with DDP it is a note and the plan goes on."""
    p = plan(tmp_path, "distributed=ddp", "distributed.offload=optimizer", hw=H100x8)
    assert p.cfg.distributed.backend == "ddp"
    assert any(n.startswith("distributed.offload: optimizer is ignored with ddp") and "CPU offload is DeepSpeed's" in n
               for n in p.notes), p.notes
    cfg, _ = resolved(H100x8, backend="ddp", offload="optimizer")
    found, notes = check(cfg, H100x8)
    assert found == [] and any(n.startswith("distributed.offload:") for n in notes)
    cfg, _ = resolved(H100x8, backend="deepspeed", offload="optimizer")
    assert not any(n.startswith("distributed.offload:") for n in check(cfg, H100x8)[1])
    # what DeepSpeed itself cannot do is still refused
    assert any("parameter offload needs ZeRO-3" in s for s in problems(
        tmp_path, "distributed=zero2", "distributed.offload=optimizer_and_params", hw=H100x8))


# ---- CPU threads: accelerate launch would give each CPU process one thread

@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_workers_share_the_cores_instead_of_one_thread_each(processes, tmp_path, monkeypatch):
    from launcher.distributed.launch import environment

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    cfg = valid_cfg()
    cfg.distributed.backend, cfg.distributed.num_processes = ("none" if processes == 1 else "ddp"), processes
    env = environment(cfg, CPU, tmp_path, base={"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == str(8 // processes)
    assert environment(cfg, CPU, tmp_path, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's
    assert "OMP_NUM_THREADS" not in environment(cfg, H100x8, tmp_path, base={"PATH": "/bin"})


def test_the_process_group_timeout_reaches_the_trainer(tmp_path):
    """distributed.timeout_minutes becomes the Trainer's ddp_timeout (seconds), which accelerate gives the process
    group (NCCL's and gloo's collectives wait that long for a slow rank)."""
    from transformers import TrainingArguments

    from launcher.trainers.common import training_kwargs

    p = plan(tmp_path, "distributed=ddp", "distributed.timeout_minutes=90", hw=H100x8)
    write_config(tmp_path, p.cfg)
    kwargs = training_kwargs(read_config(tmp_path), tmp_path, 40, False, 8)
    assert kwargs["ddp_timeout"] == 5400
    assert TrainingArguments(output_dir=str(tmp_path), ddp_timeout=kwargs["ddp_timeout"]).ddp_timeout == 5400
