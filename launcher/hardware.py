"""What the launching machine offers: GPUs, bf16, flash-attn. Tests build a Hardware by hand to plan for
machines they do not have."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Hardware:
    gpus: int = 0
    """GPUs visible to this process (CUDA_VISIBLE_DEVICES applies)."""
    gpu_name: Optional[str] = None
    gpu_memory_gib: Optional[float] = None
    bf16: bool = False
    """Whether the GPUs compute in bf16."""
    flash_attn: bool = False
    """Whether the flash-attn package is importable."""
    liger: bool = False
    """Whether the liger-kernel package is installed."""
    vllm: bool = False
    """Whether the vllm package is installed (online methods' trainer.generation=vllm)."""

    @property
    def kind(self) -> str:
        return f"{self.gpus}x {self.gpu_name}" if self.gpus else "CPU only (no GPU)"

    @classmethod
    def of_slurm_nodes(cls, gpus_per_node: Optional[int], gpu_memory_gib: Optional[float], bf16: bool) -> "Hardware":
        """The nodes a Slurm job will get, as the cluster settings describe them (the submitting machine, often
        a login node without GPUs, says nothing about them). flash-attn: whether this environment has it, as
        the nodes share it."""
        flash, liger, vllm = installed("flash_attn"), installed("liger_kernel"), installed("vllm")
        if not gpus_per_node:
            return cls(flash_attn=flash, liger=liger, vllm=vllm)
        return cls(gpus=gpus_per_node, gpu_name="Slurm node GPU", gpu_memory_gib=gpu_memory_gib, bf16=bf16,
                   flash_attn=flash, liger=liger, vllm=vllm)

    @classmethod
    def detect(cls) -> "Hardware":
        flash, liger, vllm = installed("flash_attn"), installed("liger_kernel"), installed("vllm")
        if not gpu_driver_present():  # asking torch costs seconds of imports; without a driver it says no GPU
            return cls(flash_attn=flash, liger=liger, vllm=vllm)
        import torch

        if not torch.cuda.is_available():
            return cls(flash_attn=flash, liger=liger, vllm=vllm)
        props = torch.cuda.get_device_properties(0)
        return cls(gpus=torch.cuda.device_count(), gpu_name=props.name,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported(), flash_attn=flash, liger=liger, vllm=vllm)


def gpu_driver_present() -> bool:
    """Whether an NVIDIA or AMD GPU driver is loaded on this machine: its device files or proc entries exist."""
    return any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd",
                                          "/dev/dxg"))


def installed(package: str) -> bool:
    """Whether a package can be imported, found without importing it."""
    return importlib.util.find_spec(package) is not None


ROWS_PER_TOKENISER = 2000
"""data.num_proc null: fewer rows per process cost more to hand out (a process pool started, batches sent back)
than they save."""
CORES_FOR_TOKENISERS = 4
"""data.num_proc null: below this many cores, one process. Its tokenizer already encodes each batch on every core,
so on 2 cores a second process only competes with it (measured: one process keeps 1.75 of 2 cores busy, and 2
processes prepare 20,000 rows at 0.74x one's rows/s; benchmarks/RESULTS.md); more processes pay where cores are
left for the rendering and masks, which one process runs on one core."""


def cores_given() -> int:
    """The CPU cores this job may use: Slurm's SLURM_CPUS_PER_TASK inside a job (the allocation, not the node),
    else the cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK") if os.environ.get("SLURM_JOB_ID") else None
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS has no affinity masks)
        return os.cpu_count() or 1


def tokenising_processes(num_proc: Optional[int], rows: Optional[int] = None) -> int:
    """Processes that tokenise `rows` rows: data.num_proc when set, else (null) the cores given, at least
    ROWS_PER_TOKENISER rows each, and one below CORES_FOR_TOKENISERS cores. Called where the data is tokenised,
    so a Slurm job counts its own cores."""
    if num_proc is not None:
        return num_proc
    cores = cores_given()
    if cores < CORES_FOR_TOKENISERS:
        return 1
    return cores if rows is None else max(1, min(cores, rows // ROWS_PER_TOKENISER))
