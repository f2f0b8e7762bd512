"""The distributed backends, one row each: everything that differs between them is a field here, so the
rest of the launcher reads rows instead of branching on names, and adding a backend is adding a row."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from launcher.config.schema import DistributedConfig, RunConfig
from launcher.distributed import deepspeed, fsdp


def world_size(cfg: RunConfig) -> int:
    """Processes over all nodes (the configuration is resolved: num_processes is concrete)."""
    d = cfg.distributed
    return (1 if d.num_processes is None else d.num_processes) * d.num_nodes


def _nothing(*_args) -> dict:
    return {}


@dataclass(frozen=True)
class Backend:
    name: str
    accelerate_type: str
    """accelerate's distributed_type for it."""
    package: str | None = None
    """The package it needs (`pip install 'tunelaunch[<package>]'`)."""
    zero: bool = False
    """ZeRO stages apply (the memory estimate shards by stage; which offloads it reads: `offloads`)."""
    fixed_batch: bool = False
    """The batch size is fixed inside the engine: auto_find_batch_size cannot shrink it."""
    flattens_params: bool = False
    """It shards flattened floating-point tensors only (int8 weights cannot be sharded)."""
    fully_shard: bool = False
    """FSDP2's fully_shard: parameters, gradients and optimizer states sharded over the world, each layer gathered
    for its forward and backward (the memory estimate's FSDP layout; distributed.reshard_after_forward applies)."""
    offloads: tuple[str, ...] = ()
    """The distributed.offload values it reads; another one but none is refused where this is not empty, and
    noted as ignored where it is."""
    shards_weights: Callable[[DistributedConfig], bool] = lambda d: False
    label: Callable[[DistributedConfig], str] = lambda d: ""
    """How `plan` names the layout (ZeRO-3 + optimizer offload, DDP)."""
    accelerate_extras: Callable[[RunConfig, Path], dict] = _nothing
    """Keys added to accelerate_config.yaml."""
    files: Callable[[RunConfig, int, "int | None", bool], dict] = _nothing
    """(cfg, world size, model hidden size, has GPU) -> {file name in the run folder: JSON content}."""
    worker_env: Callable[[bool], dict] = _nothing
    """(has GPU) -> environment variables the workers need."""
    trainer_kwargs: Callable[[Path, bool], dict] = _nothing
    """(run folder, several processes without CUDA) -> TrainingArguments placing a process in the job."""
    prepare_state: Callable[[], None] | None = None
    """Run in each worker before the Trainer when several processes share a machine without CUDA."""
    notes: Callable[[RunConfig], list] = field(default=lambda cfg: [])
    """Statements `plan` makes about combinations this backend handles in its own way."""


# ---- DeepSpeed

def _ds_label(d: DistributedConfig) -> str:
    off = {"none": "", "optimizer": " + optimizer offload", "optimizer_and_params": " + full offload"}
    return f"ZeRO-{d.zero_stage}{off[d.offload]}"


def _ds_accelerate(cfg: RunConfig, run_dir: Path) -> dict:
    # Every DeepSpeed value lives in the one file the Trainer also reads (accelerate refuses its own
    # zero_stage/accumulation/mixed_precision keys beside a config file).
    return {"mixed_precision": None, "deepspeed_config": {
        "deepspeed_config_file": str((run_dir / deepspeed.FILE_NAME).resolve()),
        "zero3_init_flag": cfg.distributed.zero_stage == 3,
        # one launcher per node (what `plan` prints and Slurm runs), not pdsh over ssh from node 0
        "deepspeed_multinode_launcher": "standard",
    }}


def _ds_files(cfg: RunConfig, world: int, hidden: int | None, has_gpu: bool) -> dict:
    return {deepspeed.FILE_NAME: deepspeed.deepspeed_config(cfg, world, hidden, has_gpu)}


def _ds_env(has_gpu: bool) -> dict:
    from launcher.embedded import cache_root

    # DeepSpeed JIT-compiles its ops on first use (~35 s for the CPU comm op): keep them across runs.
    env = {"TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions")}
    if not has_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # said, not guessed (DeepSpeed would warn and fall back to it)
    return env


def _ds_trainer(run_dir: Path, cpu_processes: bool) -> dict:
    kwargs = {"deepspeed": str(run_dir / deepspeed.FILE_NAME)}
    if cpu_processes:  # the process state prepare_state made, reused (see runtime.trainer_process_kwargs)
        kwargs["accelerator_config"] = {"use_configured_state": True}
    return kwargs


def _ds_prepare_state() -> None:
    """For DeepSpeed on several CPU processes, set up accelerate's process state with the gloo backend before
    the Trainer (it runs deepspeed.init_distributed(dist_backend="gloo")), so it counts every process."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate launch sets it; torchrun does not
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    PartialState(backend="gloo")


def _ds_notes(cfg: RunConfig) -> list:
    notes = []
    if cfg.distributed.zero_stage == 3 and cfg.peft.enabled and cfg.training.gradient_checkpointing is True:
        notes.append(
            "gradient checkpointing: with LoRA under ZeRO-3, trl's sft/dpo/reward trainers switch to reentrant "
            "checkpointing (use_reentrant=True, with a warning): non-reentrant recomputation met ZeRO-3's "
            "released frozen weights ('CheckpointError: Recomputed values ... have different metadata', "
            "deepspeedai/DeepSpeed#4332). deepspeed 0.19.8 ran both forms here; with an older one use "
            "distributed=zero2 for the default and orpo trainers")
    if cfg.distributed.zero_stage == 3 and cfg.quantization.mode == "int8":
        notes.append("quantization: int8 under ZeRO-3 is outside what peft documents as working (4-bit QLoRA with "
                     "quant storage); int4, or ZeRO-2, are the tested combinations")
    return notes


# ---- FSDP

def _fsdp_label(d: DistributedConfig) -> str:
    reshard = "" if d.reshard_after_forward else " (no reshard after forward)"
    return f"FSDP{reshard}" + (" + full offload" if d.offload == "optimizer_and_params" else "")


def _fsdp_notes(cfg: RunConfig) -> list:
    notes = []
    if not cfg.distributed.reshard_after_forward:
        notes.append("fsdp: reshard_after_forward=false keeps every layer's gathered parameters from its forward "
                     "to its backward: one all-gather per step fewer, the whole model in the compute dtype on "
                     "each GPU at the peak (ZeRO-2's parameter memory; the estimate counts it)")
    return notes


# ---- DDP on a machine without CUDA

def _ddp_trainer(run_dir: Path, cpu_processes: bool) -> dict:
    # accelerate's MULTI_CPU (DDP over gloo); left to itself accelerate 1.15 counts one process there.
    return {"use_cpu": True, "ddp_backend": "gloo"} if cpu_processes else {}


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("none", "NO", label=lambda d: "one process"),
    # On a machine without GPUs accelerate's MULTI_GPU type still starts N gloo processes
    # (its MULTI_CPU type needs MPI and silently runs one process without it).
    Backend("ddp", "MULTI_GPU", label=lambda d: "DDP", trainer_kwargs=_ddp_trainer),
    Backend("deepspeed", "DEEPSPEED", package="deepspeed", zero=True, offloads=("optimizer", "optimizer_and_params"),
            fixed_batch=True,
            shards_weights=lambda d: d.zero_stage == 3, label=_ds_label, accelerate_extras=_ds_accelerate,
            files=_ds_files, worker_env=_ds_env, trainer_kwargs=_ds_trainer, prepare_state=_ds_prepare_state,
            notes=_ds_notes),
    # FSDP2 (fully_shard); on CPU too, over gloo, through the process state fsdp.prepare_state files for it.
    Backend("fsdp", "FSDP", fixed_batch=True, flattens_params=True,
            fully_shard=True, offloads=("optimizer_and_params",),
            shards_weights=lambda d: True, label=_fsdp_label, notes=_fsdp_notes,
            accelerate_extras=fsdp.accelerate_extras, trainer_kwargs=fsdp.trainer_kwargs,
            prepare_state=fsdp.prepare_state),
)}
