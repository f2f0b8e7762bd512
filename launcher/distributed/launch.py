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
from launcher.distributed import memory
from launcher.distributed.deepspeed import FILE_NAME as DEEPSPEED_FILE
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
    notes: list = field(default_factory=list)
    estimate: memory.Estimate | None = None
    """Per-GPU memory estimate of the chosen layout (None when the model's config.json is not at hand)."""
    estimate_missing: str = ""
    """Why there is no estimate."""
    hidden_size: int | None = None
    """The model's hidden size (sizes DeepSpeed's communication buckets)."""

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.num_nodes


def plan_launch(cfg: RunConfig, hw: Hardware) -> LaunchPlan:
    """Decide the processes and the backend. `auto` becomes concrete in cfg.distributed (backend, zero_stage,
    offload), so the configuration the workers read says what runs."""
    d = cfg.distributed
    per_node = d.num_processes or max(hw.gpus, 1)
    world = per_node * d.num_nodes
    problems, notes = [], []
    if per_node < 1 or d.num_nodes < 1:
        problems.append(Problem("distributed.num_processes / distributed.num_nodes", "must be at least 1"))
    if not 0 <= d.node_rank < max(d.num_nodes, 1):
        problems.append(Problem("distributed.node_rank", f"{d.node_rank} is not in [0, {d.num_nodes})"))
    shape, why_none = memory.model_shape(cfg)
    auto = d.backend == "auto"
    if auto:
        layout, reason, est = memory.choose(cfg, shape, why_none, world, hw.gpu_memory_gib if hw.gpus else None)
        d.backend = layout.backend
        if layout.backend == "deepspeed":
            d.zero_stage, d.offload = layout.zero_stage, layout.offload
    else:
        reason = "chosen in the configuration"
        layout = memory.Layout(d.backend, d.zero_stage, d.offload) if d.backend == "deepspeed" else memory.Layout(d.backend)
        est = memory.estimate(cfg, shape, layout, world) if shape else None
        if est is not None and est.fits(hw.gpu_memory_gib if hw.gpus else None) is False:
            notes.append(f"memory: warning: {layout.label} needs {est.describe()}, more than 90% of the "
                         f"{hw.gpu_memory_gib:g} GiB per GPU; distributed=auto picks the first layout that fits")
    backend = d.backend
    spec = BACKENDS[backend]
    if backend == "none" and world > 1:
        problems.append(Problem("distributed.backend", f"none runs one process but {world} are planned: "
                                "set distributed.num_processes=1 or choose ddp / deepspeed"))
    if spec.needs_gpu and hw.gpus == 0:
        problems.append(Problem("distributed.backend", (
            f"{backend} needs GPUs and this machine has none: on CPU it silently trains unsharded, "
            "unsynchronised copies. Use distributed=ddp or distributed=zero3 (DeepSpeed runs on CPU).")))
    if spec.package and importlib.util.find_spec(spec.package) is None:
        why = f" (distributed=auto chose it: {reason})" if auto else ""
        problems.append(Problem("distributed.backend", f"{backend} needs the {spec.package} package: "
                                f"pip install 'tunelaunch[{spec.package}]'{why}"))
    problems += compatibility(cfg, backend, notes)
    if est is None and world > 1:
        notes.append(f"memory: no estimate ({why_none})")
    return LaunchPlan(backend, reason, per_node, d.num_nodes, d.launcher, problems, notes, est, why_none,
                      shape.hidden if shape else None)


def compatibility(cfg: RunConfig, backend: str, notes: list) -> list[Problem]:
    """Combinations that fail late (or silently) once the workers run: errors, or a stated note."""
    d, quant = cfg.distributed, cfg.quantization.mode
    problems = []
    if cfg.training.auto_find_batch_size and backend in ("deepspeed", "fsdp"):
        problems.append(Problem("training.auto_find_batch_size",
                                f"cannot be used with {backend} (the batch size is fixed in the sharded engine); "
                                "set a batch size instead"))
    if quant == "int8" and backend == "fsdp":
        problems.append(Problem("quantization.mode / distributed.backend", (
            "int8 weights cannot be sharded by FSDP (it flattens only floating-point tensors: 'Must flatten "
            "tensors with uniform dtype'): use quantization.mode=int4 (QLoRA) with FSDP, or distributed=zero2")))
    sharded = backend == "fsdp" or (backend == "deepspeed" and d.zero_stage == 3)
    if quant == "int4" and sharded:
        notes.append(f"quantization: int4 under {'FSDP' if backend == 'fsdp' else 'ZeRO-3'} shards the packed 4-bit "
                     f"weights, which needs bnb_4bit_quant_storage equal to the compute dtype: set to "
                     f"{cfg.precision.mixed_precision} (launcher.models does it)")
    zero3 = backend == "deepspeed" and d.zero_stage == 3
    if cfg.peft.enabled and cfg.training.gradient_checkpointing is True and zero3:
        notes.append(
            "gradient checkpointing: with LoRA under ZeRO-3, trl's sft/dpo/reward trainers switch to reentrant "
            "checkpointing (use_reentrant=True, with a warning): non-reentrant recomputation met ZeRO-3's "
            "released frozen weights ('CheckpointError: Recomputed values ... have different metadata', "
            "deepspeedai/DeepSpeed#4332). deepspeed 0.19.8 ran both forms here; with an older one use "
            "distributed=zero2 for the default and orpo trainers")
    if quant == "int8" and backend == "deepspeed" and d.zero_stage == 3:
        notes.append("quantization: int8 under ZeRO-3 is outside what peft documents as working (4-bit QLoRA with "
                     "quant storage); int4, or ZeRO-2, are the tested combinations")
    if backend != "deepspeed" and d.offload != "none":
        problems.append(Problem("distributed.offload", f"CPU offload is DeepSpeed's; with {backend} it would be "
                                "ignored: choose distributed=zero3 (or zero2), or offload=none"))
    if backend == "deepspeed" and d.offload == "optimizer_and_params" and d.zero_stage != 3:
        problems.append(Problem("distributed.offload / distributed.zero_stage", (
            f"parameter offload needs ZeRO-3 (stage {d.zero_stage} keeps every parameter on each GPU): "
            "set distributed.zero_stage=3 or offload=optimizer")))
    return problems


def accelerate_config(cfg: RunConfig, plan: LaunchPlan, hw: Hardware, run_dir: Path | None = None) -> dict:
    """The accelerate config file written into the run folder (explicit values only, no 'auto').

    num_processes is the TOTAL over all machines (accelerate starts num_processes // num_machines per node).
    On several nodes the rendezvous is c10d at main_process_ip:main_process_port: accelerate passes that
    endpoint to torchrun only when same_network is false (with true it sets master_addr/port, which a c10d
    rendezvous ignores, and every node would meet at its own localhost:29400)."""
    spec = BACKENDS[plan.backend]
    d = cfg.distributed
    multi_node = plan.num_nodes > 1
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": spec.accelerate_type,
        "num_processes": plan.world_size,
        "num_machines": plan.num_nodes,
        "machine_rank": d.node_rank,
        "main_process_ip": d.main_process_ip,
        "main_process_port": d.main_process_port,
        "rdzv_backend": "c10d" if multi_node else "static",
        "same_network": not multi_node,
        "mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision.mixed_precision, "no"),
        "use_cpu": hw.gpus == 0 and plan.backend == "none",
        "dynamo_config": {},
        "debug": False,
    }
    if plan.backend == "deepspeed":
        # Every DeepSpeed value lives in the one file the Trainer also reads (accelerate refuses its own
        # zero_stage/accumulation/mixed_precision keys beside a config file).
        del out["mixed_precision"]
        folder = run_dir if run_dir is not None else Path(cfg.project_name).expanduser()
        out["deepspeed_config"] = {
            "deepspeed_config_file": str((folder / DEEPSPEED_FILE).resolve()),
            "zero3_init_flag": d.zero_stage == 3,
            # one launcher per node (what `plan` prints and Slurm runs), not pdsh over ssh from node 0
            "deepspeed_multinode_launcher": "standard",
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
    if plan.num_nodes > 1:
        # accelerate 1.15 takes a config-file value only where its own option defaults to None: rdzv_backend
        # defaults to "static", so the file's c10d was silently dropped (tests/unit/test_distributed_plan.py
        # reads the command back through accelerate's parser). Said here; the endpoint too, so the printed
        # per-node commands show where the nodes meet.
        d = cfg.distributed
        cmd += ["--rdzv_backend", "c10d", "--main_process_ip", d.main_process_ip,
                "--main_process_port", str(d.main_process_port)]
    return cmd + ["-m", "launcher.worker", config]


def worker_env(cfg: RunConfig, plan: LaunchPlan, hw: Hardware) -> dict:
    """Environment variables the worker processes need beyond the parent's."""
    env = {}
    if plan.backend == "deepspeed":
        from launcher.embedded import cache_root

        # DeepSpeed JIT-compiles its ops on first use (~35 s for the CPU comm op): keep them across runs.
        env["TORCH_EXTENSIONS_DIR"] = str(cache_root() / "torch_extensions")
        if hw.gpus == 0:
            env["DS_ACCELERATOR"] = "cpu"  # said, not guessed (DeepSpeed would warn and fall back to it)
    return env


def render(cmd: list[str]) -> str:
    return shlex.join(cmd)


def _tool(name: str) -> str:
    """The launcher from this Python's environment, so a venv works without being activated."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def memory_line(plan) -> str:
    """The estimate against the GPU memory, for `plan`'s report."""
    launch, hw = plan.launch, plan.hardware
    est = launch.estimate
    if est is None:
        return f"no estimate ({launch.estimate_missing or 'unknown model'})"
    if not hw.gpus or not hw.gpu_memory_gib:
        return f"{est.describe('process')}; no GPU here to compare with"
    verdict = "fits" if est.fits(hw.gpu_memory_gib) else "does NOT fit"
    return f"{est.describe()} vs {hw.gpu_memory_gib:g} GiB per GPU: {verdict} (limit 90%)"
