"""What the launching machine offers: GPUs, bf16, flash-attn. Tests build a Hardware by hand to plan for
machines they do not have."""
from __future__ import annotations

import importlib.util
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
