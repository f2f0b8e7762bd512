"""From a resolved configuration to processes: the checks a backend imposes, the files accelerate and DeepSpeed
read, and the command that starts every worker of a node. `prepare` is the one entry point the CLI calls.

Everything that differs per backend is a field of its row in `backends.BACKENDS`.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from launcher import run_dir as runs
from launcher.config.errors import EXIT_CONFIG, Problem
from launcher.config.schema import REDACTED, RunConfig
from launcher.distributed import deepspeed, external
from launcher.distributed.backends import BACKENDS, world_size  # noqa: F401 (world_size: callers')
from launcher.distributed.supervise import PREEMPTED  # noqa: F401  (the CLI reads it here)
from launcher.hardware import Hardware

ACCELERATE_FILE = "accelerate_config.yaml"
LAUNCH_FILE = "launch.json"


def check(cfg: RunConfig, hw: Hardware, why_chosen: str = "",
          user_launcher: external.World | None = None) -> tuple[list[Problem], list[str]]:
    """What the resolved backend refuses or states: combinations that fail late (or silently) once the workers
    run become errors, or a stated note, at plan time. `user_launcher`: the world of the user's own launcher the
    run is planned for (its DeepSpeed settings are checked against the training ones)."""
    d, quant = cfg.distributed, cfg.quantization.mode
    spec = BACKENDS[d.backend]
    problems, notes = external.check(cfg, user_launcher) if user_launcher is not None else ([], [])
    world = world_size(cfg)
    if (d.num_processes is not None and d.num_processes < 1) or d.num_nodes < 1:
        problems.append(Problem("distributed.num_processes / distributed.num_nodes", "must be at least 1"))
    if not 0 <= d.node_rank < max(d.num_nodes, 1):
        problems.append(Problem("distributed.node_rank", f"{d.node_rank} is not in [0, {d.num_nodes})"))
    if d.backend == "none" and world > 1:
        problems.append(Problem("distributed.backend", f"none runs one process but {world} are planned: "
                                "set distributed.num_processes=1 or choose ddp / deepspeed"))
    if spec.package and importlib.util.find_spec(spec.package) is None:
        why = f" (distributed=auto chose it: {why_chosen})" if why_chosen else ""
        problems.append(Problem("distributed.backend", f"{d.backend} needs the {spec.package} package: "
                                f"pip install 'tunelaunch[{spec.package}]'{why}"))
    if cfg.training.auto_find_batch_size and spec.fixed_batch:
        problems.append(Problem("training.auto_find_batch_size",
                                f"cannot be used with {d.backend} (the batch size is fixed in the sharded engine); "
                                "set a batch size instead"))
    if quant == "int8" and spec.flattens_params:
        problems.append(Problem("quantization.mode / distributed.backend", (
            f"int8 weights cannot be sharded by {d.backend} (it flattens only floating-point tensors: 'Must flatten "
            "tensors with uniform dtype'): use quantization.mode=int4 (QLoRA), or distributed=zero2")))
    if quant == "int4" and spec.shards_weights(d):
        notes.append(f"quantization: int4 under {spec.label(d)} shards the packed 4-bit weights, which needs "
                     f"bnb_4bit_quant_storage equal to the compute dtype: set to {cfg.precision.mixed_precision} "
                     "(launcher.models does it)")
    if not spec.offloads and d.offload != "none":  # a key this backend does not read: noted, never refused
        notes.append(f"distributed.offload: {d.offload} is ignored with {d.backend} (CPU offload is DeepSpeed's "
                     "and FSDP's: choose distributed=zero3, zero2 or fsdp to use it)")
    if spec.offloads and d.offload not in ("none", *spec.offloads):
        # FSDP2's CPUOffloadPolicy moves the parameter shards, their gradients and the optimizer state together:
        # there is no optimizer-only form to map `optimizer` to, and silently offloading more would be slower
        problems.append(Problem("distributed.offload", (
            f"{d.offload} is not an offload {d.backend} has: it offloads parameters, gradients and optimizer states "
            f"together (set distributed.offload={' or '.join(spec.offloads)}), or use distributed=zero3 with "
            f"offload={d.offload} (DeepSpeed steps an offloaded optimizer and keeps the parameters on the GPU)")))
    if spec.fully_shard and hw.gpus == 0:
        if d.offload == "optimizer_and_params":
            problems.append(Problem("distributed.offload", (
                f"{d.offload} moves the parameters, gradients and optimizer states to CPU memory, and without a GPU "
                "they are there already (nothing is offloaded; FSDP2's CPUOffloadPolicy pins memory for copies to a "
                "GPU): set distributed.offload=none")))
        gpu_only = ["bf16/fp16 mixed precision (FSDP2's MixedPrecisionPolicy: gathers and reductions in 16 bits) "
                    "is for GPUs: the run gathers and trains in fp32"]
        if quant == "int4":
            gpu_only.append("QLoRA's 4-bit weights sharded in their quant storage are the combination peft "
                            "documents with bitsandbytes' CUDA kernels; on CPU it is untested")
        notes.append(f"{d.backend} on CPU (gloo): " + "; ".join(gpu_only))
    if not spec.fully_shard and not d.reshard_after_forward:
        notes.append(f"distributed.reshard_after_forward: false is ignored with {d.backend} (FSDP's: ZeRO's stage "
                     "decides what DeepSpeed keeps gathered)")
    if spec.zero and d.offload == "optimizer_and_params" and d.zero_stage != 3:
        problems.append(Problem("distributed.offload / distributed.zero_stage", (
            f"parameter offload needs ZeRO-3 (stage {d.zero_stage} keeps every parameter on each GPU): "
            "set distributed.zero_stage=3 or offload=optimizer")))
    return problems, notes + spec.notes(cfg)


def accelerate_config(cfg: RunConfig, hw: Hardware, run_dir: Path) -> dict:
    """The accelerate config file written into the run folder (explicit values only, no 'auto').

    num_processes is the TOTAL over all machines (accelerate starts num_processes // num_machines per node).
    On several nodes the rendezvous is c10d at main_process_ip:main_process_port: accelerate passes that
    endpoint to torchrun only when same_network is false (with true it sets master_addr/port, which a c10d
    rendezvous ignores, and every node would meet at its own localhost:29400)."""
    d = cfg.distributed
    spec = BACKENDS[d.backend]
    multi_node = d.num_nodes > 1
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": spec.accelerate_type,
        "num_processes": world_size(cfg),
        "num_machines": d.num_nodes,
        "machine_rank": d.node_rank,
        "main_process_ip": d.main_process_ip,
        "main_process_port": d.main_process_port,
        "rdzv_backend": "c10d" if multi_node else "static",
        "same_network": not multi_node,
        "mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision.mixed_precision, "no"),
        "use_cpu": hw.gpus == 0 and d.backend == "none",
        "dynamo_config": {},
        "debug": False,
    }
    out.update(spec.accelerate_extras(cfg, run_dir))
    return {k: v for k, v in out.items() if v is not None}


def node_command(cfg: RunConfig, run_dir: Path, node_rank: int | None = None,
                 endpoint: tuple[str, int] | None = None) -> list[str]:
    """The command that starts every worker process of one node. `endpoint` replaces the configured rendezvous
    (Slurm: the job's first host and a port derived from the job id)."""
    d = cfg.distributed
    config = str(run_dir / "config.yaml")
    rank = d.node_rank if node_rank is None else node_rank
    host, port = endpoint or (d.main_process_ip, d.main_process_port)
    if d.launcher == "torchrun":
        cmd = [_tool("torchrun"), "--nproc_per_node", str(d.num_processes or 1), "--nnodes", str(d.num_nodes)]
        if d.num_nodes > 1:
            cmd += ["--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{host}:{port}"]
        else:
            cmd += ["--standalone"]
        return cmd + ["-m", "launcher.worker", config]
    cmd = [_tool("accelerate"), "launch", "--config_file", str(run_dir / ACCELERATE_FILE)]
    if node_rank is not None:
        cmd += ["--machine_rank", str(rank)]
    if d.num_nodes > 1:
        # accelerate 1.15 takes a config-file value only where its own option defaults to None: rdzv_backend
        # defaults to "static", so the file's c10d was silently dropped (the unit tests read the command back
        # through accelerate's parser). Said here; the endpoint too, so the per-node commands show where the
        # nodes meet.
        cmd += ["--rdzv_backend", "c10d", "--main_process_ip", host, "--main_process_port", str(port)]
    elif endpoint is not None:  # one node of a shared machine: its own port, not everyone's 29500
        cmd += ["--main_process_port", str(port)]
    return cmd + ["-m", "launcher.worker", config]


def worker_env(cfg: RunConfig, hw: Hardware) -> dict:
    """Environment variables the worker processes need beyond the parent's."""
    return BACKENDS[cfg.distributed.backend].worker_env(hw.gpus > 0)


def environment(cfg: RunConfig, hw: Hardware, run_dir: Path, base: dict | None = None) -> dict:
    """The workers' whole environment: the parent's, this source tree on PYTHONPATH, the trackers' variables and
    the backend's. A hub token is never added here: it is in the parent's HF_TOKEN or nowhere."""
    from launcher.logs import tracker_environment

    env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    env.update(tracker_environment(cfg.logging.report_to, run_dir, cfg.project_name, env))
    env.update(worker_env(cfg, hw))
    if hw.gpus == 0 and "OMP_NUM_THREADS" not in env:
        # accelerate launch and torchrun give every process of a multi-process or non-`--cpu` launch
        # OMP_NUM_THREADS=1 unless it is set: on CPU that leaves all cores but one per process idle.
        env["OMP_NUM_THREADS"] = str(cpu_threads_per_process(cfg.distributed.num_processes or 1))
    if cfg.training.deterministic:  # read at process start (cuBLAS, Python's hash seed): set before the workers
        from launcher.checkpointing import deterministic_env

        env.update(deterministic_env(cfg.training.seed))
    return env


def cpu_threads_per_process(processes: int) -> int:
    """This machine's cores (those this process may run on: Slurm and cgroups restrict them) shared by the
    processes of one node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


@dataclass
class Launch:
    command: list[str]
    """This node's command (node_rank from the configuration)."""
    env: dict
    """The workers' whole environment."""


def prepare(cfg: RunConfig, hw: Hardware, run_dir: Path, hidden_size: int | None,
            overrides: tuple[str, ...] = (), command: list[str] | None = None,
            user_launcher: external.World | None = None) -> Launch:
    """Write what the launchers and the Trainer read into the run folder (accelerate_config.yaml, the backend's
    own files such as deepspeed.json, launch.json) and return the command and environment of this node.
    `command`: what starts the run instead, recorded in launch.json (Slurm: the sbatch line). `user_launcher`: the
    user's own launcher started the ranks (launch.json records it; their DeepSpeed JSON goes into deepspeed.json)."""
    spec = BACKENDS[cfg.distributed.backend]
    runs.write_yaml(run_dir / ACCELERATE_FILE, accelerate_config(cfg, hw, run_dir))
    files = spec.files(cfg, world_size(cfg), hidden_size, hw.gpus > 0)
    if user_launcher is not None and deepspeed.FILE_NAME in files:
        files[deepspeed.FILE_NAME] = external.merge_deepspeed(files[deepspeed.FILE_NAME],
                                                              external.their_deepspeed(user_launcher)[0])
    for name, content in files.items():
        runs.write_json(run_dir / name, content)
    if user_launcher is not None:
        command = shlex.split(user_launcher.command) or [user_launcher.started_by]
    command = command or node_command(cfg, run_dir)
    record = {"command": render([redacted(word) for word in command]), "backend": cfg.distributed.backend,
              "world_size": world_size(cfg), "hardware": hw.kind, "overrides": [redacted(o) for o in overrides]}
    if user_launcher is not None:
        record["started_by"] = user_launcher.started_by
    runs.write_json(run_dir / LAUNCH_FILE, record)
    return Launch(command, environment(cfg, hw, run_dir))


def run(launch: Launch, extra_env: dict | None = None) -> int:
    """Start this node's workers under the supervisor (stop signals become a graceful save) and wait. The
    launcher's own notices and its traceback on a worker's exit are left off the console (launcher.console)."""
    from launcher import console
    from launcher.distributed import supervise

    with console.launcher_stderr():
        return supervise.run(launch.command, {**launch.env, **(extra_env or {})})


def user_launcher() -> external.World | None:
    """The world of the user's own launcher (torchrun, accelerate launch) when `train` runs as one of its ranks;
    None when `train` is to launch the workers itself."""
    return external.from_environment()


def train_as_rank(world: external.World, plan_and_write: Callable[[], Path | None]) -> int:
    """`train` as one rank of the user's launcher (launcher.distributed.external): rank 0 plans and writes the run
    folder (`plan_and_write` prints the plan or the report and returns the folder, or None), then every rank execs
    the worker of that world. Returns only when this rank cannot train: 2 for the configuration, else 1."""
    if world.refusal:
        if world.rank == 0:
            print(f"Cannot train under this launcher: {world.refusal}", file=sys.stderr)
        return EXIT_CONFIG
    if world.handoff:  # accelerate's one process of a MULTI_CPU world becomes torchrun with all of them
        external.hand_off(world, sys.argv, os.environ)
    try:
        folder = external.agree_on_run_folder(world, plan_and_write)
    except external.RankError as err:
        print(err, file=sys.stderr)
        return 1
    if folder is None:
        return EXIT_CONFIG
    cfg = runs.read_run_config(folder)  # a resume: the configuration it starts with
    base = external.worker_environment(os.environ, cfg, folder)
    external.become_worker(folder, environment(cfg, Hardware.detect(), folder, base))
    return 1  # not reached: the worker replaced this process


def redacted(override: str) -> str:
    """A command-line override as it may be written into a file: never with a hub token's value."""
    key, sep, _ = override.partition("=")
    return f"{key}={REDACTED}" if sep and key.lstrip("+~") == "hub.token" else override


def render(cmd: list[str]) -> str:
    return shlex.join(cmd)


def _tool(name: str) -> str:
    """The launcher from this Python's environment, so a venv works without being activated."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)
