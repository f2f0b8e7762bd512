"""`train` as a rank of the user's own launcher: `torchrun ... -m launcher train ...`, `accelerate launch ... -m
launcher train ...` (or `tunelaunch train` started by either).

Every process `train` runs in is then already one rank of a world that launcher set up, so nothing may be
launched again: before this module each rank planned a world of one and started its own nested launch into the
same run folder. Instead:

1. `from_environment` reads that world from what the launcher exported: RANK / WORLD_SIZE / LOCAL_RANK /
   LOCAL_WORLD_SIZE / GROUP_RANK (torchrun's agent; `accelerate launch` runs the same agent in-process), and the
   backend accelerate launch chose: ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_* or
   ACCELERATE_DEEPSPEED_CONFIG_FILE, ACCELERATE_USE_FSDP with FSDP_*, ACCELERATE_MIXED_PRECISION (the variables of
   accelerate 1.15's utils/launch.py). Plain torchrun starts processes and nothing else: DDP.
2. `adopt` (before resolution) makes the configuration describe that world and names every contradiction between
   the two; `check` (after resolution) compares the user's DeepSpeed settings with the resolved training ones.
3. `agree_on_run_folder`: only global rank 0 plans, reports and writes the run folder. It publishes the outcome
   through the launcher's own rendezvous store (torchrun's agent hosts a TCPStore at MASTER_ADDR:MASTER_PORT for
   its workers), under a key of this launch attempt; the other ranks compose nothing and wait for it. On a
   configuration error every rank exits 2 and the console holds rank 0's one report.
4. `become_worker`: every rank execs `python -m launcher.worker RUN/config.yaml`. Same pid and environment, so the
   launcher supervises the worker as its own rank, and the stop signals, exact resume and the tests' probe work
   as under our own launch.

`accelerate launch` with a MULTI_CPU configuration (or `--cpu --num_processes N`) starts ONE process and no RANK
unless MPI is set up (it then silently trained one process): `hand_off` turns that process into torchrun with
the world accelerate was asked for, whose ranks then do the above.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NoReturn

from launcher.config.errors import EXIT_CONFIG, Problem
from launcher.config.schema import RunConfig
from launcher.distributed.backends import BACKENDS, world_size

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
ACCELERATE_MARK = "ACCELERATE_MIXED_PRECISION"
"""Exported by each of accelerate launch's launchers (simple, multi-GPU, DeepSpeed) and by nothing else."""
MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")
STARTED_BY_ENV = "TUNELAUNCH_STARTED_BY"
"""Set by `hand_off` for the torchrun it becomes: who the user really started (JSON of launcher, started_by,
command, note)."""
# accelerate launch's per-field DeepSpeed variables. Rank 0's plan turns them into the run folder's deepspeed.json,
# which the worker passes to the Trainer; left in the environment beside that file, accelerate's DeepSpeedPlugin
# refuses to start ("When using `deepspeed_config_file`, the following accelerate config variables will be
# ignored"), so the worker is started without them.
ABSORBED_VARS = ("ACCELERATE_CONFIG_DS_FIELDS", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                 "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_NVME_PATH", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_NVME_PATH",
                 "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                 "ACCELERATE_GRADIENT_CLIPPING")
# The FSDP variables accelerate launch exports only when the user's config sets them (it exports the others
# always, with its own defaults): where one is missing, ours fills it in.
FSDP_UNSET_VARS = {"fsdp_auto_wrap_policy": "FSDP_AUTO_WRAP_POLICY", "fsdp_state_dict_type": "FSDP_STATE_DICT_TYPE"}
OFFLOADS = {("none", "none"): "none", ("cpu", "none"): "optimizer", ("cpu", "cpu"): "optimizer_and_params"}
"""accelerate's (optimizer, parameter) offload devices -> distributed.offload."""
PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
"""accelerate's mixed_precision -> precision.mixed_precision."""
CONFIG_ERROR = "config error"
WAIT_FOR_RANK0_S = 30 * 60  # rank 0 checks the data (a hub dataset may download first): as long as a collective
SHARED_FOLDER_WAIT_S = 30   # a shared filesystem may show another node's new files a little late
EXIT_TOGETHER_S = 60


@dataclass(frozen=True)
class World:
    """The processes the user's launcher started, and what it set up for them."""
    launcher: str
    """"torchrun" or "accelerate launch"."""
    started_by: str
    """The launcher with its own options, as launch.json and the messages name it
    ("accelerate launch --config_file zero3.yaml", "torchrun --nproc_per_node 2")."""
    command: str = ""
    """The user's whole command line."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    backend: str = "none"
    """none (one process), ddp (plain torchrun, accelerate's MULTI_GPU / MULTI_CPU), deepspeed or fsdp."""
    zero_stage: int | None = None
    offload_devices: tuple[str, str] | None = None
    """accelerate's (optimizer, parameter) offload devices, when its config gives them."""
    deepspeed_file: str | None = None
    """The user's own DeepSpeed JSON (accelerate's deepspeed_config_file)."""
    gradient_accumulation: int | None = None
    gradient_clipping: float | None = None
    save_16bit_model: bool | None = None
    mixed_precision: str | None = None
    """accelerate's: no / fp16 / bf16 / fp8 (torchrun says nothing)."""
    store: tuple[str, int] | None = None
    """The launcher's rendezvous store (torchrun's agent hosts it)."""
    attempt: str = "0"
    """This launch attempt: torchrun's run id and restart count (a restarted job plans again)."""
    handoff: tuple[str, ...] = ()
    """torchrun's options, when this one process must become torchrun (accelerate's MULTI_CPU without MPI)."""
    refusal: str = ""
    """Why `train` cannot run under this launcher (said by rank 0; every rank exits 2)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def description(self) -> str:
        """What the launcher set up, in words: "DeepSpeed ZeRO-3 over 2 processes"."""
        what = {"none": "one process", "ddp": "DDP", "fsdp": "FSDP"}.get(self.backend)
        if what is None:
            what = "DeepSpeed" + (f" ZeRO-{self.zero_stage}" if self.zero_stage else "")
        nodes = f" on {self.num_nodes} nodes" if self.num_nodes > 1 else ""
        return what if self.world_size == 1 else f"{what} over {self.world_size} processes{nodes}"


# ---- 1. the world, from the launcher's environment

def from_environment(env: Mapping[str, str] | None = None, parent: list[str] | None = None) -> World | None:
    """The world when this process was started by the user's launcher, else None (`tunelaunch train` then
    launches its own). `parent` is the parent process's command line (read with psutil when not given)."""
    env = os.environ if env is None else env
    ranked = all(k in env for k in RANK_VARS)
    if not ranked and ACCELERATE_MARK not in env:
        return None
    if parent is None:
        parent = parent_command_line()
    name, started_by, command = describe(parent, env)
    if not ranked:
        # accelerate launch's simple launcher (no RANK): one process, or MPI's, or the first of a MULTI_CPU world
        # accelerate could not start. Variables exported by hand, without accelerate as the parent, mean nothing.
        started = program_words(parent)[:2] == ["accelerate", "launch"]
        return _simple_launch(env, parent, started_by, command) if started else None
    rank, size, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    store = None
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true" and env.get("MASTER_ADDR"):
        store = (env["MASTER_ADDR"], int(env["MASTER_PORT"]))
    refusal = ""
    if store is None and size > 1:
        refusal = (f"{started_by} set RANK and WORLD_SIZE but runs no rendezvous store that the ranks can share "
                   "(torchrun's agent does; so does accelerate launch, which runs it): start the ranks with torchrun "
                   "or accelerate launch")
    if _truthy(env, "ACCELERATE_USE_MEGATRON_LM"):
        refusal = f"{started_by} sets up Megatron-LM, which is not a tunelaunch backend (ddp, deepspeed, fsdp)"
    backend = ("deepspeed" if _truthy(env, "ACCELERATE_USE_DEEPSPEED")
               else "fsdp" if _truthy(env, "ACCELERATE_USE_FSDP") else "ddp" if size > 1 else "none")
    devices = (env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
               env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"))
    recorded = json.loads(env[STARTED_BY_ENV]) if env.get(STARTED_BY_ENV) else {}
    return World(
        launcher=name, started_by=started_by, command=command, rank=rank, local_rank=local, world_size=size,
        local_world_size=local_size, node_rank=int(env.get("GROUP_RANK", rank // max(1, local_size))),
        backend=backend,
        zero_stage=_int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")),
        offload_devices=(devices[0] or "none", devices[1] or "none") if any(devices) else None,
        deepspeed_file=env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None,
        gradient_accumulation=_int(env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")),
        gradient_clipping=_float(env.get("ACCELERATE_GRADIENT_CLIPPING")),
        save_16bit_model=(env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"].lower() == "true"
                          if "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL" in env else None),
        mixed_precision=env.get(ACCELERATE_MARK),
        store=store, attempt=f"{env.get('TORCHELASTIC_RUN_ID', 'none')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}",
        refusal=refusal, notes=(recorded["note"],) if recorded.get("note") else ())


def _simple_launch(env: Mapping[str, str], parent: list[str], started_by: str, command: str) -> World:
    mp = env.get(ACCELERATE_MARK)
    if any(k in env for k in MPI_VARS):
        return World("accelerate launch", started_by, command, mixed_precision=mp, refusal=(
            f"{started_by} started its processes with MPI (mpirun), which tunelaunch does not run under: use an "
            "accelerate config with distributed_type MULTI_GPU (gloo on machines without GPUs) or torchrun"))
    request = accelerate_request(parent)
    if request is None or (request[0] <= 1 and request[1] <= 1):
        return World("accelerate launch", started_by, command, mixed_precision=mp)  # a world of one: this process
    processes, machines, machine_rank, ip, port = request
    options = ["--standalone", "--nproc_per_node", str(processes // machines)] if machines == 1 else [
        "--nnodes", str(machines), "--node_rank", str(machine_rank), "--nproc_per_node", str(processes // machines),
        "--master_addr", str(ip), "--master_port", str(port or 29500)]
    note = (f"launcher: {started_by} asks for {processes} processes, but accelerate starts several CPU processes "
            "(MULTI_CPU) only through MPI, and started one: tunelaunch started them with torchrun "
            f"{shlex.join(options)}")
    return World("accelerate launch", started_by, command, world_size=processes, mixed_precision=mp,
                 handoff=tuple(options), notes=(note,))


def accelerate_request(parent: list[str]) -> tuple[int, int, int, str | None, int | None] | None:
    """(processes, machines, machine rank, main process ip, port) that `accelerate launch ...` in `parent` was
    asked for, read with accelerate's own parser and config-file rules; None when it cannot be read."""
    words = program_words(parent)
    if words[:2] != ["accelerate", "launch"]:
        return None
    import logging

    logging.disable(logging.WARNING)  # its notice of defaults: accelerate launch printed it already
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(words[2:]))
    except (Exception, SystemExit):  # accelerate's parser exits on what it cannot read
        return None
    finally:
        logging.disable(logging.NOTSET)
    return (int(args.num_processes or 1), int(args.num_machines or 1), int(args.machine_rank or 0),
            args.main_process_ip, args.main_process_port)


def parent_command_line() -> list[str]:
    try:
        import psutil

        return psutil.Process(os.getppid()).cmdline()
    except Exception:  # gone, or not ours to read
        return []


def describe(parent: list[str], env: Mapping[str, str]) -> tuple[str, str, str]:
    """(launcher, launcher with its options, whole command) of the parent process's command line."""
    if env.get(STARTED_BY_ENV):
        recorded = json.loads(env[STARTED_BY_ENV])
        return recorded["launcher"], recorded["started_by"], recorded["command"]
    words = program_words(parent)
    if words[:2] == ["accelerate", "launch"]:
        name = "accelerate launch"
    elif words[:1] == ["torchrun"]:
        name = "torchrun"
    else:
        name = "accelerate launch" if ACCELERATE_MARK in env else "torchrun"
    return name, shlex.join(words[:_program_index(words)]) or name, shlex.join(words)


_MODULES = {"torch.distributed.run": ["torchrun"], "accelerate.commands.launch": ["accelerate", "launch"],
            "accelerate.commands.accelerate_cli": ["accelerate"]}


def program_words(cmdline: list[str]) -> list[str]:
    """A command line as the user typed it: the interpreter and its options dropped, the program by its name
    (`/venv/bin/python /venv/bin/torchrun --nproc_per_node 2 ...` -> `torchrun --nproc_per_node 2 ...`)."""
    words = list(cmdline)
    if words and Path(words[0]).name.startswith("python"):
        words.pop(0)
        while words and words[0].startswith("-") and words[0] != "-m":
            words.pop(0)
        if words[:1] == ["-m"] and len(words) > 1:
            words = _MODULES.get(words[1], [words[1]]) + words[2:]
    if words:
        words[0] = Path(words[0]).name
    return words


def _program_index(words: list[str]) -> int:
    """Where the training program starts (`-m launcher`, `tunelaunch`, `.../launcher/cli.py`) in a launcher's
    command line; its length when it is not found."""
    for i, word in enumerate(words[1:], 1):
        if word in ("launcher", "launcher.cli", "launcher.__main__") and words[i - 1] in ("-m", "--module"):
            return i - 1
        if Path(word).name == "tunelaunch" or word.endswith(("launcher/cli.py", "launcher/__main__.py")):
            return i
    return len(words)


def _truthy(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "").lower() in ("1", "true", "yes")


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


# ---- 2. the configuration against that world

def adopt(cfg: RunConfig, world: World) -> tuple[list[Problem], list[str]]:
    """Before resolution: the launcher's world becomes the configuration's (processes, nodes, backend, precision,
    the launcher), and every contradiction between the two is a problem naming both."""
    d, who = cfg.distributed, world.started_by
    problems: list[Problem] = []
    notes = list(world.notes)
    if d.num_processes is not None and d.num_processes != world.local_world_size:
        problems.append(Problem("distributed.num_processes", (
            f"{d.num_processes} per node in the configuration, but {who} started {world.local_world_size} per node "
            f"(world size {world.world_size}): leave distributed.num_processes unset under your own launcher (it "
            "decides), or start that many")))
    if d.num_nodes not in (1, world.num_nodes):
        problems.append(Problem("distributed.num_nodes", (
            f"{d.num_nodes} in the configuration, but {who} runs {world.num_nodes} node(s): leave it unset under "
            "your own launcher, or start that many nodes")))
    d.num_processes, d.num_nodes, d.node_rank = world.local_world_size, world.num_nodes, world.node_rank
    d.launcher = "torchrun" if world.launcher == "torchrun" else "accelerate"
    stage, offload, layout_problems = _deepspeed_layout(world)
    problems += layout_problems
    if d.backend == "auto":
        d.backend = world.backend
        if world.backend == "deepspeed":
            d.zero_stage, d.offload = stage or d.zero_stage, offload or "none"
        notes.append(f"distributed: auto -> {world.backend}: {world.description}, as {who} set it up")
    elif not _compatible(d.backend, world):
        problems.append(Problem("distributed.backend", (
            f"{_ours(cfg)} in the configuration, but {who} set up {world.description}: leave distributed at auto "
            "(it takes the launcher's choice), or start the run with a launcher configured for "
            f"{d.backend}{_fsdp_hint(d.backend)}")))
    elif world.backend == "deepspeed":
        if stage is not None and stage != d.zero_stage:
            problems.append(Problem("distributed.zero_stage", (
                f"ZeRO-{d.zero_stage} in the configuration, but {who} set up ZeRO-{stage}: make them agree, or "
                "leave distributed at auto")))
        if offload is not None and offload != d.offload:
            problems.append(Problem("distributed.offload", (
                f"{d.offload} in the configuration, but {who} offloads {offload}: make them agree, or leave "
                "distributed at auto")))
    elif d.backend != world.backend and world.world_size > 1:
        notes.append(f"distributed: {_ours(cfg)} from the configuration, over the {world.world_size} processes "
                     f"{who} started")
    problems += _adopt_precision(cfg, world, notes)
    return problems, notes


def _compatible(ours: str, world: World) -> bool:
    """Plain processes (torchrun, accelerate's MULTI_GPU / MULTI_CPU) take DDP or DeepSpeed, which the worker sets
    up itself; FSDP's settings reach the Trainer only through accelerate launch's environment. DeepSpeed and FSDP
    chosen in an accelerate config bind."""
    if world.backend in ("none", "ddp"):
        return ours in ("ddp", "deepspeed") or (ours == "none" and world.world_size == 1)
    return ours == world.backend


def _fsdp_hint(ours: str) -> str:
    return " (FSDP: an accelerate config with distributed_type FSDP)" if ours == "fsdp" else ""


def _ours(cfg: RunConfig) -> str:
    """The configuration's backend in words: "fsdp", "DeepSpeed ZeRO-3"."""
    d = cfg.distributed
    return f"DeepSpeed {BACKENDS[d.backend].label(d)}" if BACKENDS[d.backend].zero else d.backend


def _deepspeed_layout(world: World) -> tuple[int | None, str | None, list[Problem]]:
    """The ZeRO stage and distributed.offload the user's DeepSpeed settings choose (their JSON file, else
    accelerate's variables); None where they say nothing."""
    if world.backend != "deepspeed":
        return None, None, []
    stage, devices = world.zero_stage, world.offload_devices
    theirs, problems = their_deepspeed(world)
    zero = theirs.get("zero_optimization", {}) if isinstance(theirs.get("zero_optimization"), dict) else {}
    if isinstance(zero.get("stage"), int):
        stage = zero["stage"]
    if "offload_optimizer" in zero or "offload_param" in zero:
        devices = tuple((zero.get(k) or {}).get("device", "none") for k in ("offload_optimizer", "offload_param"))
    offload = None
    if devices is not None:
        offload = OFFLOADS.get(devices)
        if offload is None:
            problems.append(Problem("distributed.offload", (
                f"{world.started_by} offloads the optimizer to {devices[0]} and the parameters to {devices[1]}, "
                f"which tunelaunch does not plan (distributed.offload: {', '.join(OFFLOADS.values())}): offload to "
                "cpu, or not at all")))
    return stage, offload, problems


def their_deepspeed(world: World) -> tuple[dict, list[Problem]]:
    """The user's own DeepSpeed JSON ({} without one)."""
    if not world.deepspeed_file:
        return {}, []
    path = Path(world.deepspeed_file)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data, []
    except (OSError, ValueError) as err:
        return {}, [Problem("distributed.backend", f"{world.started_by} names the DeepSpeed config {path}, which "
                                                   f"cannot be read: {err}")]


def _adopt_precision(cfg: RunConfig, world: World, notes: list[str]) -> list[Problem]:
    theirs = world.mixed_precision
    if theirs is None:  # torchrun says nothing about precision
        return []
    ours, mapped = cfg.precision.mixed_precision, PRECISIONS.get(theirs)
    if mapped is None:
        return [Problem("precision.mixed_precision", f"{world.started_by} asks for mixed_precision {theirs}, which "
                                                     "tunelaunch does not plan: use bf16, fp16 or no")]
    if ours == "auto":
        cfg.precision.mixed_precision = mapped
        notes.append(f"precision: auto -> {mapped}, as {world.started_by} asks (mixed_precision: {theirs})")
    elif ours != mapped and theirs == "no":  # the Trainer's own bf16/fp16 wins over accelerate's "no" too
        notes.append(f"precision: {ours} from the configuration ({world.started_by} says mixed_precision: no)")
    elif ours != mapped:
        return [Problem("precision.mixed_precision", (
            f"{ours} in the configuration, but {world.started_by} asks for {theirs}: make them agree, or set "
            "precision=auto (it takes the launcher's)"))]
    return []


def check(cfg: RunConfig, world: World) -> tuple[list[Problem], list[str]]:
    """After resolution: the user's DeepSpeed settings against the training settings they must equal (the
    Trainer stops on any mismatch once the model is loaded; here it is said before)."""
    if world.backend != "deepspeed" or cfg.distributed.backend != "deepspeed":
        return [], []
    t, who = cfg.training, world.started_by
    theirs, _ = their_deepspeed(world)  # unreadable: adopt said so
    ours = {"train_micro_batch_size_per_gpu": ("training.batch_size", t.batch_size),
            "gradient_accumulation_steps": ("training.gradient_accumulation", t.gradient_accumulation),
            "train_batch_size": ("training.batch_size / training.gradient_accumulation",
                                 t.batch_size * t.gradient_accumulation * world_size(cfg)),
            "gradient_clipping": ("training.max_grad_norm", t.max_grad_norm)}
    given = {k: v for k, v in theirs.items() if k in ours and v != "auto"}
    if world.gradient_accumulation is not None and "gradient_accumulation_steps" not in given:
        given["gradient_accumulation_steps"] = world.gradient_accumulation
    if world.gradient_clipping is not None and "gradient_clipping" not in given:
        given["gradient_clipping"] = world.gradient_clipping
    problems = [Problem(ours[k][0], f"{ours[k][1]} in the configuration, but {who} sets {k} {v}: make them agree "
                                    f"(or leave {k} out of the launcher's settings)")
                for k, v in given.items() if v != ours[k][1]]
    mp = cfg.precision.mixed_precision
    for kind in ("bf16", "fp16"):
        enabled = (theirs.get(kind) or {}).get("enabled") if isinstance(theirs.get(kind), dict) else None
        if isinstance(enabled, bool) and enabled != (mp == kind):
            problems.append(Problem("precision.mixed_precision", f"{mp} in the resolved configuration, but {who}'s "
                                    f"DeepSpeed config has {kind}.enabled {str(enabled).lower()}: make them agree"))
    notes = []
    if world.save_16bit_model is False and cfg.distributed.zero_stage == 3:
        notes.append(f"deepspeed: {who} sets zero3_save_16bit_model false; kept true, so that the run folder holds "
                     "one whole, reloadable model")
    return problems, notes


def merge_deepspeed(ours: dict, theirs: dict) -> dict:
    """The run folder's deepspeed.json: the user's settings over ours; ours fill what theirs leaves unset or
    "auto". The gathered 16-bit save stays ours: without it ZeRO-3 leaves no reloadable model in the folder."""
    out = dict(ours)
    for key, value in theirs.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_deepspeed(out[key], value)
        elif value != "auto" or key not in out:
            out[key] = value
    if "stage3_gather_16bit_weights_on_model_save" in ours:
        out["stage3_gather_16bit_weights_on_model_save"] = ours["stage3_gather_16bit_weights_on_model_save"]
    return out


def worker_environment(env: Mapping[str, str], cfg: RunConfig, run_dir: Path) -> dict:
    """The launcher's environment as the worker needs it: the DeepSpeed settings rank 0 moved into the run
    folder removed, accelerate's precision set to the resolved one (the Trainer reads it), and the FSDP settings
    the user's config leaves unset filled in with ours."""
    out = {k: v for k, v in env.items() if k not in ABSORBED_VARS}
    if ACCELERATE_MARK in out:
        out[ACCELERATE_MARK] = {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision.mixed_precision, "no")
    if _truthy(out, "ACCELERATE_USE_FSDP"):
        ours = BACKENDS["fsdp"].accelerate_extras(cfg, run_dir).get("fsdp_config", {})
        for key, var in FSDP_UNSET_VARS.items():
            if key in ours:
                out.setdefault(var, str(ours[key]))
    return out


# ---- 3. rank 0 plans, every rank learns the outcome

class RankError(Exception):
    """This rank cannot go on; the message says why (its console shows it, the rank exits 1)."""


def agree_on_run_folder(world: World, plan_and_write: Callable[[], Path | None],
                        wait_s: float = WAIT_FOR_RANK0_S) -> Path | None:
    """Rank 0 runs plan_and_write (it prints the plan or the report, and returns the run folder it wrote, or None
    on a configuration error) and publishes the outcome; every rank returns the run folder. The other ranks
    compose nothing. On a configuration error a world of one returns None (exit 2); in a larger one every rank
    exits 2 here, together (`_exit_together`)."""
    if world.world_size == 1:
        folder = plan_and_write()
        return folder.resolve() if folder is not None else None
    store = _connect(world, wait_s)
    key = f"tunelaunch/{world.attempt}/run_folder"
    if world.rank == 0:
        folder = plan_and_write()
        if folder is not None:
            folder = folder.resolve()
        store.set(key, json.dumps({"run": str(folder), "host": socket.gethostname()}) if folder else CONFIG_ERROR)
        if folder is None:
            _exit_together(store, key, world)
        return folder
    value = _wait_for(store, key, wait_s, world)
    if value == CONFIG_ERROR:
        _exit_together(store, key, world)
    published = json.loads(value)
    folder = Path(published["run"])
    _see_run_folder(folder, published["host"], world)
    return folder


def _connect(world: World, wait_s: float):
    from datetime import timedelta

    from torch.distributed import TCPStore

    host, port = world.store
    return TCPStore(host, port, is_master=False, timeout=timedelta(seconds=wait_s), wait_for_workers=False)


def _wait_for(store, key: str, wait_s: float, world: World) -> str:
    """The value rank 0 publishes. Polled from Python (not one blocking wait) so that the launcher's SIGTERM
    still ends this rank at once."""
    deadline = time.monotonic() + wait_s
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise RankError(
                f"rank {world.rank}: rank 0 has not finished planning the run after {wait_s / 60:.0f} min (it checks "
                "the configuration and the data, then writes the run folder; its console says what it is doing). "
                f"The ranks of {world.started_by} wait for it before training.")
        time.sleep(0.1)
    return store.get(key).decode()


def _exit_together(store, key: str, world: World) -> NoReturn:
    """After a configuration error every rank exits 2, rank 0 (whose report is the console's) last, once the
    others have read the outcome. The launcher ends the remaining ranks with SIGTERM as soon as one has exited,
    so from here SIGTERM means exit 2 too; and the exit is immediate (os._exit): during an interpreter's
    teardown Python's own handlers are gone and that SIGTERM killed rank 0 (-15 in torchrun's summary)."""
    def leave(*_) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CONFIG)

    signal.signal(signal.SIGTERM, leave)
    done = f"{key}/read"
    if world.rank != 0:
        store.add(done, 1)
        leave()
    deadline = time.monotonic() + EXIT_TOGETHER_S
    while store.add(done, 0) < world.world_size - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    leave()


def _see_run_folder(folder: Path, host: str, world: World) -> None:
    """Another node's ranks need the run folder rank 0 wrote: on a filesystem every node shares."""
    deadline = time.monotonic() + SHARED_FOLDER_WAIT_S
    while not (folder / "config.yaml").is_file():
        if time.monotonic() > deadline:
            here = socket.gethostname()
            raise RankError(
                f"rank {world.rank} (node {world.node_rank}, {here}) cannot see {folder / 'config.yaml'}, which rank 0 "
                f"wrote on {host}: the run folder (project_name) must be on a filesystem that every node of "
                f"{world.started_by} shares" if here != host else
                f"rank {world.rank}: {folder / 'config.yaml'}, which rank 0 wrote, is gone")
        time.sleep(0.5)


# ---- 4. become the worker (or, for accelerate's one MULTI_CPU process, torchrun)

def become_worker(run_dir: Path, env: Mapping[str, str]) -> None:
    """exec `python -m launcher.worker RUN/config.yaml`: this process, its pid and its place in the launcher's
    world become the worker's."""
    _exec([sys.executable, "-m", "launcher.worker", str(run_dir / "config.yaml")], env)


def hand_off(world: World, argv: list[str], env: Mapping[str, str]) -> None:
    """exec torchrun with the world accelerate launch was asked for, running this same command on each rank;
    the ranks learn (STARTED_BY_ENV) who the user really started."""
    recorded = {"launcher": world.launcher, "started_by": world.started_by, "command": world.command,
                "note": world.notes[0] if world.notes else ""}
    _exec([sys.executable, "-m", "torch.distributed.run", *world.handoff, "-m", "launcher", *argv[1:]],
          {**env, STARTED_BY_ENV: json.dumps(recorded)})


def _exec(argv: list[str], env: Mapping[str, str]) -> None:
    sys.stdout.flush()  # exec drops what Python still buffers
    sys.stderr.flush()
    os.execve(argv[0], argv, dict(env))
