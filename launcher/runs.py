"""`tunelaunch runs DIR`: one row per run folder under DIR (a sweep's trials, or any folder of runs) with its
overrides, state, steps, final losses and run time, read from the files every run leaves."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from launcher import run_dir as runs
from launcher.cluster import jobs

COLUMNS = ("run", "state", "steps", "train_loss", "eval_loss", "seconds", "overrides")
SORT_KEYS = COLUMNS[:-1]


@dataclass
class RunRow:
    run: str
    state: str
    """planned, running, preempted, failed or finished (run_state.json); for a Slurm run, Slurm's word on its
    current job (PENDING, RUNNING, CANCELLED, FAILED, TIMEOUT, ...: launcher.cluster.jobs.run_status)."""
    steps: str
    train_loss: float | None
    """A finished run's mean training loss (run_state.json, the model card); else the latest logged one."""
    eval_loss: float | None
    seconds: float | None
    overrides: str


def _history(folder: Path) -> dict:
    """trainer_state.json of the run, or of its newest complete checkpoint."""
    for candidate in (folder / "trainer_state.json",
                      (runs.latest_checkpoint(folder) or folder / "-") / "trainer_state.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return {}


def collect(root: Path) -> list[RunRow]:
    rows = []
    root = Path(root)
    for config in sorted(root.rglob("config.yaml")):
        folder = config.parent
        if not (folder / runs.STATE_FILE).is_file() or "checkpoint-" in str(folder.relative_to(root)):
            continue
        state = runs.read_state(folder)
        history = _history(folder)
        log = history.get("log_history", [])
        train = next((h["loss"] for h in reversed(log) if "loss" in h), None)
        evals = next((h["eval_loss"] for h in reversed(log) if "eval_loss" in h), None)
        launch = folder / "launch.json"
        overrides = json.loads(launch.read_text()).get("overrides", []) if launch.is_file() else []
        shown = [o for o in overrides if not o.startswith(("project_name=", "cluster="))]
        rows.append(RunRow(
            run=str(folder.relative_to(root)) if folder != root else folder.name,
            state=jobs.run_status(folder),
            steps=f"{history.get('global_step', 0)}/{history.get('max_steps', '?')}" if history else "0",
            # A finished run: the figure run_state.json and the model card hold (one source); else the latest logged.
            train_loss=state["train_loss"] if runs.read_status(folder) is runs.Status.FINISHED and "train_loss" in state else train,
            eval_loss=evals, seconds=state.get("seconds"), overrides=" ".join(shown)))
    return rows


def render(rows: list[RunRow], sort: str = "run") -> str:
    def key(row):
        value = getattr(row, sort)
        missing = value is None
        return (missing, value if not missing else 0)

    rows = sorted(rows, key=key)
    cells = [COLUMNS] + [(r.run, r.state, r.steps, _num(r.train_loss), _num(r.eval_loss), _num(r.seconds, 1),
                          r.overrides) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
