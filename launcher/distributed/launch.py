"""Decide how many processes run with which backend, write the accelerate config, build the launch command.

Backends are rows of a table, not branches: each says what accelerate needs to know about it.
"""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.distributed.hardware import Hardware


@dataclass(frozen=True)
class Backend:
    name: str
    accelerate_type: str
    """accelerate's distributed_type for it."""
    needs_gpu: bool = False
    package: str | None = None


BACKENDS = {
    "none": Backend("none", "NO"),
    # On a machine without GPUs accelerate's MULTI_GPU type still starts N gloo processes
    # (its MULTI_CPU type needs MPI and silently runs one process without it).
    "ddp": Backend("ddp", "MULTI_GPU"),
    "deepspeed": Backend("deepspeed", "DEEPSPEED", package="deepspeed"),
    "fsdp": Backend("fsdp", "FSDP", needs_gpu=True),
}


@dataclass
class LaunchPlan:
    backend: str
    reason: str
    processes_per_node: int
    num_nodes: int
    launcher: str
    problems: list = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.num_nodes


def plan_launch(cfg: RunConfig, hw: Hardware) -> LaunchPlan:
    d = cfg.distributed
    per_node = d.num_processes or max(hw.gpus, 1)
    world = per_node * d.num_nodes
    problems = []
    if per_node < 1 or d.num_nodes < 1:
        problems.append(Problem("distributed.num_processes / distributed.num_nodes", "must be at least 1"))
    if not 0 <= d.node_rank < max(d.num_nodes, 1):
        problems.append(Problem("distributed.node_rank", f"{d.node_rank} is not in [0, {d.num_nodes})"))
    if d.backend == "auto":
        backend = "none" if world == 1 else "ddp"
        reason = ("one process: no distributed wrapper" if world == 1 else
                  f"{world} processes: DDP (each holds a full copy; use distributed=zero2/zero3 to shard)")
    else:
        backend, reason = d.backend, "chosen in the configuration"
    spec = BACKENDS[backend]
    if backend == "none" and world > 1:
        problems.append(Problem("distributed.backend", f"none runs one process but {world} are planned: "
                                "set distributed.num_processes=1 or choose ddp / deepspeed"))
    if spec.needs_gpu and hw.gpus == 0:
        problems.append(Problem("distributed.backend", (
            f"{backend} needs GPUs and this machine has none: on CPU it silently trains unsharded, "
            "unsynchronised copies. Use distributed=ddp or distributed=zero3 (DeepSpeed runs on CPU).")))
    if spec.package and importlib.util.find_spec(spec.package) is None:
        problems.append(Problem("distributed.backend",
                                f"{backend} needs the {spec.package} package: pip install 'tunelaunch[{spec.package}]'"))
    if cfg.training.auto_find_batch_size and backend in ("deepspeed", "fsdp"):
        problems.append(Problem("training.auto_find_batch_size",
                                f"cannot be used with {backend} (the batch size is fixed in the sharded engine); "
                                "set a batch size instead"))
    return LaunchPlan(backend, reason, per_node, d.num_nodes, d.launcher, problems)


def accelerate_config(cfg: RunConfig, plan: LaunchPlan, hw: Hardware) -> dict:
    """The accelerate config file written into the run folder (explicit values only, no 'auto')."""
    spec = BACKENDS[plan.backend]
    d = cfg.distributed
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": spec.accelerate_type,
        "num_processes": plan.world_size,
        "num_machines": plan.num_nodes,
        "machine_rank": d.node_rank,
        "main_process_ip": d.main_process_ip,
        "main_process_port": d.main_process_port,
        "rdzv_backend": "c10d" if plan.num_nodes > 1 else "static",
        "same_network": True,
        "mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision.mixed_precision, "no"),
        "use_cpu": hw.gpus == 0 and plan.backend == "none",
        "dynamo_config": {},
        "debug": False,
    }
    if plan.backend == "deepspeed":
        out["deepspeed_config"] = {
            "zero_stage": d.zero_stage,
            "offload_optimizer_device": "cpu" if d.offload != "none" else "none",
            "offload_param_device": "cpu" if d.offload == "optimizer_and_params" else "none",
            "zero3_init_flag": d.zero_stage == 3,
            "zero3_save_16bit_model": d.zero_stage == 3,
            "gradient_accumulation_steps": cfg.training.gradient_accumulation,
            "gradient_clipping": cfg.training.max_grad_norm,
        }
    if plan.backend == "fsdp":
        out["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_reshard_after_forward": True,
        }
    return out


def launch_command(cfg: RunConfig, plan: LaunchPlan, run_dir: Path, node_rank: int | None = None) -> list[str]:
    """The command that starts every worker process of one node."""
    config = str(run_dir / "config.yaml")
    rank = cfg.distributed.node_rank if node_rank is None else node_rank
    if plan.launcher == "torchrun":
        cmd = [_tool("torchrun"), "--nproc_per_node", str(plan.processes_per_node),
               "--nnodes", str(plan.num_nodes)]
        if plan.num_nodes > 1:
            d = cfg.distributed
            cmd += ["--node_rank", str(rank), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", f"{d.main_process_ip}:{d.main_process_port}"]
        else:
            cmd += ["--standalone"]
        return cmd + ["-m", "launcher.worker", config]
    cmd = [_tool("accelerate"), "launch", "--config_file", str(run_dir / "accelerate_config.yaml")]
    if node_rank is not None:
        cmd += ["--machine_rank", str(rank)]
    return cmd + ["-m", "launcher.worker", config]


def render(cmd: list[str]) -> str:
    return shlex.join(cmd)


def _tool(name: str) -> str:
    """The launcher from this Python's environment, so a venv works without being activated."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)
