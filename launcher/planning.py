"""Compose -> validate -> check the data -> resolve every `auto` -> check the launch and the output folder.

Nothing here loads model weights or tokenises data: every problem is found and reported together before
anything expensive starts. `plan` prints the result; `train` (and `submit`) write it into the run folder and
launch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config.compose import compose
from launcher.config.errors import ConfigError, Problem
from launcher.config.schema import RunConfig
from launcher.config.validate import unused_keys, validate
from launcher.data.load import DataCheck, check_data
from launcher.data.streaming import check_stream
from launcher.distributed import external, launch
from launcher.hardware import Hardware
from launcher.resolve import Resolution, resolve
from launcher.run_dir import check_run_dir


@dataclass
class Plan:
    cfg: RunConfig
    """Resolved configuration: the one source of truth (secrets still in memory)."""
    hardware: Hardware
    data: DataCheck
    resolution: Resolution
    notes: list = field(default_factory=list)
    blockers: list = field(default_factory=list)
    """Not wrong in the config, but `train` cannot start until fixed (e.g. a missing hub token)."""
    user_launcher: external.World | None = None
    """The user's own launcher (torchrun, accelerate launch) whose world this run was planned for."""

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.project_name).expanduser()

    @property
    def world_size(self) -> int:
        return launch.world_size(self.cfg)

    def hub_token(self) -> str | None:
        return self.cfg.hub.token or os.environ.get("HF_TOKEN")


def _target_hardware(cfg: RunConfig) -> Hardware:
    """The machine the workers will run on: this one (also in a Slurm job's own batch step, which runs on its
    first node), or the nodes the cluster settings describe (submitting to Slurm, from wherever: a login node, an
    `salloc` shell or another job)."""
    from launcher.cluster.resources import in_batch_step

    c = cfg.cluster
    if c.kind == "slurm" and not in_batch_step():
        return Hardware.of_slurm_nodes(c.gpus_per_node, c.gpu_memory_gib, c.bf16)
    return Hardware.detect()


def make_plan(config_file: str | None, overrides: list[str], hardware: Hardware | None = None,
              user_launcher: external.World | None = None) -> Plan:
    """Raise ConfigError with every problem, or return the plan. `user_launcher`: the world of the user's own
    launcher this process is a rank of; it decides the processes, nodes and (with distributed=auto) the backend."""
    composed = compose(config_file, overrides, collect=True)
    cfg = composed.config
    hw = hardware or _target_hardware(cfg)
    auto_backend = cfg.distributed.backend == "auto"
    adopted, adopted_notes = external.adopt(cfg, user_launcher) if user_launcher else ([], [])
    problems = composed.problems + adopted + validate(cfg)
    # A stream is checked on its first rows only (it may not fit in memory): its row count is not known here.
    data = check_stream(cfg) if cfg.data.streaming else check_data(cfg)
    counted = data.train is not None and not data.problems and not cfg.data.streaming
    resolution = resolve(cfg, hw, data.format, len(data.train.rows) if counted else None)
    if user_launcher is not None and auto_backend:
        resolution.backend_reason = f"set up by {user_launcher.started_by}"
    launch_problems, launch_notes = launch.check(cfg, hw, resolution.backend_reason if auto_backend else "",
                                                 user_launcher)
    dir_problems, dir_notes = check_run_dir(cfg)
    problems += data.problems + resolution.problems + _online_problems(cfg, data) + launch_problems + dir_problems
    if problems:
        raise ConfigError(problems, composed.source, composed.origin, composed.places)
    notes = (composed.notes + adopted_notes + unused_keys(cfg) + data.notes + resolution.notes
             + _packing_estimate(cfg, data) + launch_notes + dir_notes)
    plan = Plan(cfg, hw, data, resolution, notes, user_launcher=user_launcher)
    if cfg.hub.push_to_hub and not cfg.hub.username:
        plan.blockers.append(Problem("hub.username", "push_to_hub is true but no username is set (the repository "
                                     "is username/project_name): set hub.username or HF_USERNAME"))
    if cfg.hub.push_to_hub and not plan.hub_token():
        plan.blockers.append(Problem("hub.token", "push_to_hub is true but there is no token: set HF_TOKEN "
                                     "(or hub.token) so the upload at the end does not fail after training"))
    return plan


def _online_problems(cfg: RunConfig, data: DataCheck) -> list[Problem]:
    """grpo/rloo's rewards and tools, imported and called on two dummy completions with the data's own columns,
    and distill's teacher: what trl would only find once the weights are loaded (launcher/rl)."""
    from launcher.data.formats import is_conversational
    from launcher.methods import METHODS, reads

    name = cfg.trainer.name
    if not METHODS[name].online:
        return []
    from launcher.rl import rewards, teacher, tools

    rows = data.train.rows[:1] if data.train is not None and not data.problems else []
    problems = []
    if reads(name, "trainer.rewards"):
        problems += rewards.check_rewards(cfg, rows, is_conversational(cfg, [data.train]))
    if reads(name, "trainer.tools") and cfg.trainer.tools:
        problems += tools.check_tools(cfg)
    if reads(name, "trainer.teacher"):
        problems += teacher.check_teacher(cfg)
    return problems


CHARS_PER_TOKEN = 4
"""English text in a BPE vocabulary, roughly: the plan counts characters (it tokenises nothing)."""


def _packing_estimate(cfg: RunConfig, data: DataCheck) -> list[str]:
    """What packing saves on this data, estimated from the rows' characters (tokens ~ characters / 4, each sequence
    cut at block_size): computed tokens of padded batches (each batch padded to its longest sequence, as the
    trainers batch them) against packed ones (only real tokens). `prepare --show` counts the real tokens."""
    from launcher.methods import METHODS
    from launcher.trainers.packed_pairs import packing_efficiency

    method = METHODS[cfg.trainer.name]
    if not (cfg.data.packing and method.packs) or data.train is None or data.problems:
        return []
    block = cfg.data.block_size

    def tokens(*values) -> int:
        chars = sum(len(m.get("content") or "") if isinstance(m, dict) else len(str(m))
                    for v in values if v is not None for m in (v if isinstance(v, list) else [v]))
        return min(block, max(1, round(chars / CHARS_PER_TOKEN)))

    lengths = []
    for row in data.train.rows:
        if method.pairs:
            lengths.append((tokens(row.get("prompt"), row.get("chosen")), tokens(row.get("prompt"), row.get("rejected"))))
        elif cfg.trainer.name == "kto":
            lengths.append((tokens(row.get("prompt"), row.get("completion"), row.get("messages")),))
        else:
            lengths.append((tokens(*row.values()),))
    est = packing_efficiency(lengths, cfg.training.batch_size, cfg.data.chunk_size)
    return [f"data: packing efficiency (estimated from the rows' characters, ~{CHARS_PER_TOKEN} per token; "
            f"`tunelaunch prepare` counts the tokens): padded batches of {cfg.training.batch_size} would compute "
            f"{est.padded_tokens / max(est.real_tokens, 1):.2f} tokens per real token, packed rows 1.00: up to "
            f"{est.ceiling:.2f}x fewer computed tokens"]


def write_run(plan: Plan, overrides=()):
    """The run folder, written once by the launching process: the resolved config.yaml (secrets redacted),
    training_params.json, what the launchers read (launcher.distributed.launch.prepare) and, for Slurm, the batch
    scripts (launcher.cluster.submit.write). Returns the folder and how it starts."""
    from launcher import run_dir as runs

    folder = runs.open_run_dir(plan.cfg)
    runs.write_run_config(folder, plan.cfg)  # a resume's config.yaml is replaced only once the worker resumed
    command = None
    if plan.cfg.cluster.kind == "slurm":
        from launcher.cluster import submit

        command = submit.write(plan.cfg, folder)
    return folder, launch.prepare(plan.cfg, plan.hardware, folder, plan.resolution.hidden_size, tuple(overrides),
                                  command=command, user_launcher=plan.user_launcher)
