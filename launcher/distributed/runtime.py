"""What a worker process needs to know about its place in the job, and a clean exit from it."""
from __future__ import annotations

import os
from pathlib import Path

from launcher.distributed.backends import BACKENDS


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _cpu_processes() -> bool:
    return world_size() > 1 and not has_gpu()


def trainer_process_kwargs(backend: str, run_dir: Path) -> dict:
    """TrainingArguments that place this process in the job: the backend's own (DeepSpeed's config file), and on
    a machine without CUDA the settings without which accelerate 1.15 counts ONE process.

    There, left to itself, accelerate initialises the gloo process group but records no backend, so the
    Trainer sees world size 1 (DistributedType.NO): no DDP wrapper, every rank trains its own copy on the same
    batches and writes the run folder as rank 0, and DeepSpeed stops on a train_batch_size that assumed one
    process. DDP gets use_cpu + gloo (accelerate's MULTI_CPU, DDP over gloo); DeepSpeed gets a process state
    prepared before the Trainer (prepare_process_state) that the Trainer is told to reuse. All measured from
    inside the ranks by tests/distributed."""
    return BACKENDS[backend].trainer_kwargs(run_dir, _cpu_processes())


def prepare_process_state(backend: str) -> None:
    """Before the Trainer: the backend's own process-state setup, where several processes run without CUDA."""
    prepare = BACKENDS[backend].prepare_state
    if prepare is not None and _cpu_processes():
        prepare()


def teardown() -> None:
    """Wait for every rank, then destroy the process group: without it 2-process gloo runs crashed at exit
    ('terminate called without an active exception') about half the time."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort() -> None:
    """Leave the process group after an error without waiting for anyone. A barrier here (as in teardown) hung
    the whole job for good: the failing rank waited in it while the others waited in the next all-reduce, so
    the launcher never saw a failed process and the traceback was never printed. Destroying the group lets
    this process exit with its traceback; the launcher then stops the other ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
