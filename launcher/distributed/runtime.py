"""What a worker process needs to know about its place in the job, and a clean exit from it."""
from __future__ import annotations

import os
from pathlib import Path

from launcher.distributed.deepspeed import FILE_NAME as DEEPSPEED_FILE


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _cpu_processes() -> bool:
    import torch

    return world_size() > 1 and not torch.cuda.is_available()


def trainer_process_kwargs(backend: str, run_dir: Path) -> dict:
    """TrainingArguments that place this process in the job: DeepSpeed's config file, and on a machine without
    CUDA the settings without which accelerate 1.15 counts ONE process.

    There, left to itself, accelerate initialises the gloo process group but records no backend, so the
    Trainer sees world size 1 (DistributedType.NO): no DDP wrapper, every rank trains its own copy on the same
    batches and writes the run folder as rank 0, and DeepSpeed stops on a train_batch_size that assumed one
    process. use_cpu + gloo gives accelerate's MULTI_CPU (DDP over gloo); DeepSpeed gets a process state
    prepared before the Trainer (prepare_process_state) that the Trainer is told to reuse. All measured with
    the probe of tests/distributed."""
    kwargs = {"deepspeed": str(run_dir / DEEPSPEED_FILE)} if backend == "deepspeed" else {}
    if not _cpu_processes():
        return kwargs
    if backend == "deepspeed":
        return {**kwargs, "accelerator_config": {"use_configured_state": True}}
    return {**kwargs, "use_cpu": True, "ddp_backend": "gloo"}


def prepare_process_state(backend: str) -> None:
    """Before the Trainer: for DeepSpeed on several CPU processes, set up accelerate's process state with the
    gloo backend (it runs deepspeed.init_distributed(dist_backend="gloo")), so it counts every process."""
    if backend != "deepspeed" or not _cpu_processes():
        return
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate launch sets it; torchrun does not
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    PartialState(backend="gloo")


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
