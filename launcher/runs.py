"""`tunelaunch runs DIR`: one row per run folder under DIR (a sweep's trials, or any folder of runs) with its
overrides, state, steps, final losses, run time and eval scores, read from the files every run leaves; sorted by
any of them, and `--plot` draws the loss curves of them all in one figure."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from launcher import run_dir as runs
from launcher.cluster import jobs
from launcher.manifest import eval_record

COLUMNS = ("run", "state", "steps", "train_loss", "eval_loss", "seconds", "overrides")
SORT_KEYS = COLUMNS[:-1]
# trainer_state.json's log_history names the training loss "loss"; the table and --plot call it train_loss
LOG_KEYS = {"train_loss": "loss"}


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
    scores: dict[str, float] = field(default_factory=dict)
    """Its eval scores, `{"arc_easy/acc": 0.42}` (launcher.evaluation.scores.read_scores); {} if never scored."""
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    """lm-eval's direction of each score (None where it gives none)."""
    folder: Path | None = None


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
        scored = eval_record(folder)
        rows.append(RunRow(
            run=str(folder.relative_to(root)) if folder != root else folder.name,
            state=jobs.run_status(folder),
            steps=f"{history.get('global_step', 0)}/{history.get('max_steps', '?')}" if history else "0",
            # A finished run: the figure run_state.json and the model card hold (one source); else the latest logged.
            train_loss=state["train_loss"] if runs.read_status(folder) is runs.Status.FINISHED and "train_loss" in state else train,
            eval_loss=evals, seconds=state.get("seconds"), overrides=" ".join(shown),
            scores=scored.get("scores", {}), higher_is_better=scored.get("higher_is_better", {}), folder=folder))
    return rows


def score_columns(rows: list[RunRow]) -> list[str]:
    """The scores some run has, in the order the runs name them: a column per score, none for a score no run has."""
    return list(dict.fromkeys(name for row in rows for name in row.scores))


def value_of(row: RunRow, column: str):
    return row.scores.get(column) if column not in SORT_KEYS else getattr(row, column)


def sort_rows(rows: list[RunRow], sort: str = "run") -> list[RunRow]:
    """Sorted by a column, runs without a value last. The table's own columns ascend (run names, losses and
    seconds: lower is better); a score comes best first in lm-eval's direction for it (higher first where lm-eval
    says higher is better or says nothing, lower first for perplexities and the like)."""
    descending = False
    if sort not in SORT_KEYS:
        descending = next((row.higher_is_better[sort] for row in rows if row.higher_is_better.get(sort) is not None),
                          True) is not False

    def key(row):
        value = value_of(row, sort)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (1, 0)
        return (0, -value if descending else value)

    return sorted(rows, key=key)


def render(rows: list[RunRow], sort: str = "run") -> str:
    rows = sort_rows(rows, sort)
    scores = score_columns(rows)
    header = (*COLUMNS[:-1], *scores, COLUMNS[-1])
    cells = [header] + [(r.run, r.state, r.steps, _num(r.train_loss), _num(r.eval_loss), _num(r.seconds, 1),
                         *(_num(r.scores.get(name)) for name in scores), r.overrides) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def curves(rows: list[RunRow], metric: str) -> list[tuple[str, list[tuple[int, float]]]]:
    """(run, [(step, value)]) of each run that logged `metric` (train_loss, eval_loss, or any other key of
    trainer_state.json's log_history: learning_rate, grad_norm, reward...), from its trainer_state.json."""
    key = LOG_KEYS.get(metric, metric)
    out = []
    for row in rows:
        points = [(h["step"], h[key]) for h in _history(row.folder).get("log_history", [])
                  if isinstance(h.get(key), (int, float)) and "step" in h]
        if points:
            out.append((row.run, points))
    return out


def plot(rows: list[RunRow], metric: str, out: Path, title: str) -> Path:
    """One PNG with a curve per run (in the table's order): a sweep at a glance."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (a login node, a pipe)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, points in curves(rows, metric):
        ax.plot(*zip(*points), label=label, marker="o" if len(points) < 20 else None)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="a folder of run folders (a sweep's), or one run folder")
    parser.add_argument("--sort", default="run", metavar="COLUMN",
                        help=f"column to sort by: {', '.join(SORT_KEYS)} (ascending) or an eval score such as "
                             "arc_easy/acc (best first) (default run)")
    parser.add_argument("--plot", metavar="METRIC",
                        help="write one PNG with every run's curve of METRIC (train_loss, eval_loss, or another "
                             "logged key such as learning_rate) instead of the table, and print its path")
    parser.add_argument("--output", metavar="FILE",
                        help="where --plot writes its PNG (default DIR/runs_METRIC.png)")


def main(args) -> int:
    import sys

    if not Path(args.dir).is_dir():
        print(f"{args.dir}: no such folder", file=sys.stderr)
        return 1
    rows = collect(Path(args.dir))
    if not rows:
        print(f"no run folders (with config.yaml and run_state.json) under {args.dir}", file=sys.stderr)
        return 1
    scores = score_columns(rows)
    if args.sort not in SORT_KEYS and args.sort not in scores:
        print(f"--sort {args.sort}: not a column of this table; sort by one of {', '.join(SORT_KEYS)}"
              + (f" or a score: {', '.join(scores)}" if scores else " (no run under it has eval scores)"),
              file=sys.stderr)
        return 2
    if args.output and not args.plot:
        print("--output names the PNG of --plot: add --plot train_loss (or another metric)", file=sys.stderr)
        return 2
    rows = sort_rows(rows, args.sort)
    if args.plot:
        if not curves(rows, args.plot):
            logged = sorted({key for row in rows for h in _history(row.folder).get("log_history", []) for key in h
                             if isinstance(h[key], (int, float))} - {"step", "epoch"})
            names = sorted({{v: k for k, v in LOG_KEYS.items()}.get(key, key) for key in logged})
            print(f"--plot {args.plot}: no run under {args.dir} logged it"
                  + (f"; they logged {', '.join(names)}" if names else " (none has a trainer_state.json yet)"),
                  file=sys.stderr)
            return 2
        out = Path(args.output) if args.output else Path(args.dir) / f"runs_{args.plot.replace('/', '_')}.png"
        print(plot(rows, args.plot, out, f"{args.plot}: {Path(args.dir).resolve().name}"))
        return 0
    print(render(rows, args.sort))
    return 0
