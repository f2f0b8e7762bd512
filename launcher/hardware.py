"""What the launching machine offers: GPUs, bf16, flash-attn. Tests build a Hardware by hand to plan for
machines they do not have."""
from __future__ import annotations

import importlib.util
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

    @property
    def kind(self) -> str:
        return f"{self.gpus}x {self.gpu_name}" if self.gpus else "CPU only (no GPU)"

    @classmethod
    def of_slurm_nodes(cls, gpus_per_node: int, gpu_memory_gib: Optional[float], bf16: bool) -> "Hardware":
        """The nodes a Slurm job will get, as the cluster settings describe them (the submitting machine, often
        a login node without GPUs, says nothing about them). flash-attn: whether this environment has it, as
        the nodes share it."""
        flash = importlib.util.find_spec("flash_attn") is not None
        if not gpus_per_node:
            return cls(flash_attn=flash)
        return cls(gpus=gpus_per_node, gpu_name="Slurm node GPU", gpu_memory_gib=gpu_memory_gib, bf16=bf16,
                   flash_attn=flash)

    @classmethod
    def detect(cls) -> "Hardware":
        import torch

        flash = importlib.util.find_spec("flash_attn") is not None
        if not torch.cuda.is_available():
            return cls(flash_attn=flash)
        props = torch.cuda.get_device_properties(0)
        return cls(gpus=torch.cuda.device_count(), gpu_name=props.name,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported(), flash_attn=flash)
