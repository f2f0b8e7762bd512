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
from launcher.distributed import launch
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

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.project_name).expanduser()

    @property
    def world_size(self) -> int:
        return launch.world_size(self.cfg)

    def hub_token(self) -> str | None:
        return self.cfg.hub.token or os.environ.get("HF_TOKEN")


def _target_hardware(cfg: RunConfig) -> Hardware:
    """The machine the workers will run on: this one, or (submitting to Slurm from outside an allocation) the
    nodes the cluster settings describe."""
    c = cfg.cluster
    if c.kind == "slurm" and not os.environ.get("SLURM_JOB_ID"):
        return Hardware.of_slurm_nodes(c.gpus_per_node, c.gpu_memory_gib, c.bf16)
    return Hardware.detect()


def make_plan(config_file: str | None, overrides: list[str], hardware: Hardware | None = None) -> Plan:
    """Raise ConfigError with every problem, or return the plan."""
    composed = compose(config_file, overrides, collect=True)
    cfg = composed.config
    hw = hardware or _target_hardware(cfg)
    problems = composed.problems + validate(cfg)
    data = check_data(cfg)
    auto_backend = cfg.distributed.backend == "auto"
    resolution = resolve(cfg, hw, data.format)
    launch_problems, launch_notes = launch.check(cfg, hw, resolution.backend_reason if auto_backend else "")
    dir_problems, dir_notes = check_run_dir(cfg)
    problems += data.problems + resolution.problems + launch_problems + dir_problems
    if problems:
        raise ConfigError(problems, composed.source, composed.origin)
    notes = composed.notes + unused_keys(cfg) + data.notes + resolution.notes + launch_notes + dir_notes
    plan = Plan(cfg, hw, data, resolution, notes)
    if cfg.hub.push_to_hub and not cfg.hub.username:
        plan.blockers.append(Problem("hub.username", "push_to_hub is true but no username is set (the repository "
                                     "is username/project_name): set hub.username or HF_USERNAME"))
    if cfg.hub.push_to_hub and not plan.hub_token():
        plan.blockers.append(Problem("hub.token", "push_to_hub is true but there is no token: set HF_TOKEN "
                                     "(or hub.token) so the upload at the end does not fail after training"))
    return plan
