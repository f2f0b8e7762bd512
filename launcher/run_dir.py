"""The run folder `<project_name>/`: what state it is in, and the files written before the workers start.

A finished run is never overwritten silently: starting again needs `overwrite=true`, and even then the old
folder is moved aside, not deleted. An unfinished run (it has checkpoints) is resumed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from enum import Enum
from pathlib import Path

import yaml

from launcher import atomic
from launcher.config.errors import Problem
from launcher.config.schema import REDACTED, RunConfig

STATE_FILE = "run_state.json"


class RunState(Enum):
    NEW = "new"
    UNFINISHED = "unfinished"
    FINISHED = "finished"
    FOREIGN = "foreign"


def read_state(path: Path) -> dict:
    """run_state.json of a run folder ({} when there is none)."""
    state_file = Path(path) / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def run_state(path: Path) -> RunState:
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return RunState.NEW
    state_file = path / STATE_FILE
    if not path.is_dir() or not state_file.is_file():
        return RunState.FOREIGN
    status = json.loads(state_file.read_text()).get("status")
    return RunState.FINISHED if status == "finished" else RunState.UNFINISHED


def check_run_dir(cfg: RunConfig) -> tuple[list[Problem], list[str]]:
    """What starting this run would do to its folder; problems when it would lose something."""
    path = Path(cfg.project_name).expanduser()
    state = run_state(path)
    if state is RunState.FOREIGN:
        return [Problem("project_name", f"{path} exists and is not a tunelaunch run folder; choose another "
                        "project_name (nothing in it will be touched)")], []
    if state is RunState.FINISHED:
        if cfg.overwrite:
            return [], [f"output: {path} holds a finished run; it will be moved aside to {path}.old-<time>"]
        return [Problem("project_name", f"{path} already holds a finished run. Choose another project_name, "
                        "or pass overwrite=true to start over (the old run is moved aside, not deleted)")], []
    if state is RunState.UNFINISHED:
        problem = _node_count_changed(cfg, path)
        if problem:
            return [problem], []
        newest = latest_checkpoint(path)
        what = f"resumes from {newest.name}" if newest else "restarts (no complete checkpoint yet)"
        return [], [f"output: {path} holds an unfinished run; training {what}"]
    return [], [f"output: {path}"]


def _node_count_changed(cfg: RunConfig, path: Path) -> Problem | None:
    """A resumed Slurm run keeps the node count it was started with (its checkpoints and data order are for that
    world size): another count is refused, naming both."""
    if cfg.cluster.kind != "slurm" or not (path / "config.yaml").is_file():
        return None
    try:
        before = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("cluster", {}).get("nodes")
    except yaml.YAMLError:
        return None
    if isinstance(before, int) and before != cfg.cluster.nodes:
        return Problem("cluster.nodes", f"{path} holds an unfinished run started on {before} node(s), and this "
                       f"one asks for {cfg.cluster.nodes}: resume it with cluster.nodes={before} (sbatch "
                       f"{path / 'job.sbatch'}), or choose another project_name for {cfg.cluster.nodes} node(s)")
    return None


def open_run_dir(cfg: RunConfig) -> Path:
    """Create (or reuse, for a resume) the run folder; a finished run is moved aside when overwriting."""
    path = Path(cfg.project_name).expanduser()
    if run_state(path) is RunState.FINISHED and cfg.overwrite:
        path.rename(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    path.mkdir(parents=True, exist_ok=True)
    if not (path / STATE_FILE).exists():
        write_state(path, "planned")
    return path


def write_state(path: Path, status: str, **extra) -> None:
    atomic.write_text(path / STATE_FILE, json.dumps({"status": status, "time": time.time(), **extra}, indent=2))


def redacted_dict(cfg: RunConfig) -> dict:
    data = dataclasses.asdict(cfg)
    if data["hub"]["token"]:
        data["hub"]["token"] = REDACTED
    return data


def read_config(folder: Path) -> RunConfig:
    """The resolved configuration of a run folder, as the workers, generate, merge and push read it. The hub
    token is never in the file: it comes from HF_TOKEN."""
    from launcher.config.parse import from_dict

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: it has no config.yaml")
    cfg, problems = from_dict(RunConfig, yaml.safe_load(path.read_text()))
    if problems:
        raise ValueError(f"{path} is not a valid resolved configuration:\n" + "\n".join(map(str, problems)))
    cfg.hub.token = os.environ.get("HF_TOKEN")  # the secret travels in the environment only, never in the file
    return cfg


def write_config(path: Path, cfg: RunConfig) -> Path:
    """The resolved configuration the workers read, with secrets redacted."""
    header = "# Resolved by tunelaunch; workers read this file. Secrets are redacted (the token travels as HF_TOKEN).\n"
    target = path / "config.yaml"
    atomic.write_text(target, header + yaml.safe_dump(redacted_dict(cfg), sort_keys=False))
    return target


def write_yaml(target: Path, data: dict) -> None:
    atomic.write_text(target, yaml.safe_dump(data, sort_keys=False))


def write_json(target: Path, data: dict) -> None:
    atomic.write_text(target, json.dumps(data, indent=2, default=str))


def latest_checkpoint(path: Path) -> Path | None:
    """The newest COMPLETE checkpoint. Checkpoints are written as `tmp-checkpoint-N` and renamed when every rank
    has written its files (launcher.checkpointing), so a `checkpoint-N` is complete; trainer_state.json (written
    last) is still required, for run folders from before that."""
    from launcher.checkpointing import checkpoints

    if not Path(path).is_dir():
        return None
    done = [c for c in checkpoints(path) if (c / "trainer_state.json").is_file()]
    return done[-1] if done else None
