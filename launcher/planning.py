"""Compose -> validate -> resolve -> check data and output folder -> plan the launch.

Nothing here loads model weights or tokenises data: every problem is found and reported together before
anything expensive starts. `plan` prints the result; `train` writes it into the run folder and launches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config.compose import compose
from launcher.config.errors import ConfigError, Problem
from launcher.config.resolve import resolve
from launcher.config.schema import RunConfig
from launcher.config.validate import validate
from launcher.data.load import DataCheck, check_data
from launcher.distributed.hardware import Hardware
from launcher.distributed.launch import LaunchPlan, plan_launch
from launcher.run_dir import check_run_dir
from launcher.trainers import TRAINERS


@dataclass
class Plan:
    cfg: RunConfig
    """Resolved configuration (secrets still in memory)."""
    hardware: Hardware
    launch: LaunchPlan
    data: DataCheck
    notes: list = field(default_factory=list)
    blockers: list = field(default_factory=list)
    """Not wrong in the config, but `train` cannot start until fixed (e.g. a missing hub token)."""
    source: str | None = None
    origin: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.project_name).expanduser()

    def hub_token(self) -> str | None:
        return self.cfg.hub.token or os.environ.get("HF_TOKEN")


def _derive_accumulation(cfg: RunConfig, launch: LaunchPlan, notes: list) -> list[Problem]:
    """The hosted-API batch form: a global batch over all processes fixes the accumulation steps."""
    t = cfg.training
    if t.global_batch_size is None:
        return []
    per_pass = t.batch_size * launch.world_size
    if t.global_batch_size < per_pass or t.global_batch_size % per_pass:
        return [Problem("training.global_batch_size / training.batch_size", (
            f"{t.global_batch_size} is not a multiple of batch_size {t.batch_size} x world size "
            f"{launch.world_size} = {per_pass}: choose a global batch of k x {per_pass}"))]
    t.gradient_accumulation = t.global_batch_size // per_pass
    notes.append(f"batch: global {t.global_batch_size} = {t.batch_size} per device x {launch.world_size} "
                 f"process(es) x {t.gradient_accumulation} accumulation steps")
    return []


def make_plan(config_file: str | None, overrides: list[str], hardware: Hardware | None = None) -> Plan:
    """Raise ConfigError with every problem, or return the plan."""
    composed = compose(config_file, overrides, collect=True)
    cfg = composed.config
    hw = hardware or Hardware.detect()
    problems = composed.problems + validate(cfg)
    resolve_problems, notes = resolve(cfg, hw)
    launch = plan_launch(cfg, hw)
    problems += _derive_accumulation(cfg, launch, notes)
    data = check_data(cfg)
    dir_problems, dir_notes = check_run_dir(cfg)
    problems += resolve_problems + launch.problems + data.problems + dir_problems
    if cfg.trainer.name not in TRAINERS:
        problems.append(Problem("trainer.name", f"the {cfg.trainer.name} trainer is not available in this "
                                f"version; available: {', '.join(TRAINERS)}"))
    if data.format == "alpaca" and cfg.data.chat_template == "none":
        cfg.data.chat_template = "alpaca"  # data.notes already says so
    if problems:
        raise ConfigError(problems, composed.source, composed.origin)
    plan = Plan(cfg, hw, launch, data, composed.notes + notes + launch.notes + data.notes + dir_notes,
                source=composed.source, origin=composed.origin)
    if cfg.hub.push_to_hub and not cfg.hub.username:
        plan.blockers.append(Problem("hub.username", "push_to_hub is true but no username is set (the repository "
                                     "is username/project_name): set hub.username or HF_USERNAME"))
    if cfg.hub.push_to_hub and not plan.hub_token():
        plan.blockers.append(Problem("hub.token", "push_to_hub is true but there is no token: set HF_TOKEN "
                                     "(or hub.token) so the upload at the end does not fail after training"))
    return plan
