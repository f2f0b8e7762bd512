"""How long `tunelaunch plan` takes, as a user runs it: median wall time over N runs of

  - `python -c pass`                                   (the interpreter alone: the floor)
  - `tunelaunch plan recipe=sft/chat_tiny`              (a recipe: Hydra layers, data preflight, resolution)
  - `tunelaunch plan --config <AutoTrain config.yaml>`  (AutoTrain's format, translated, on the same tiny model)

Each command is a fresh subprocess, run one after the other (never side by side) in an empty folder, and must exit
0. With `--against DIR` (a checkout of an older commit, e.g. `git worktree add /tmp/before <commit>`) the same
commands run that tree's code too, interleaved with this one's, for a before/after table.

    python benchmarks/plan_time.py [--runs N] [--against DIR] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import results  # noqa: E402

TARGET_S = 2.0


def autotrain_file(folder: Path, model: Path) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "task": "llm-sft", "base_model": str(model), "project_name": "plan-time-run", "backend": "local",
        "data": {"path": str(REPO / "samples" / "chat"), "train_split": "train", "valid_split": None,
                 "chat_template": "chatml"},
        "params": {"block_size": 256, "epochs": 1, "batch_size": 2, "lr": 3e-5, "peft": True, "quantization": None},
    }, sort_keys=False))
    return path


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results.add_arguments(parser)
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7; quick 3)")
    parser.add_argument("--against", type=Path, help="another checkout of the project to time beside this one")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs

    from launcher.embedded import build_tiny_llama

    model = build_tiny_llama()  # built (or found in the cache) before any timing
    trees = [("now", REPO)] + ([("before", args.against.resolve())] if args.against else [])
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="plan-time-") as tmp:
        cwd = Path(tmp)
        config = autotrain_file(cwd, model)
        commands = [("python -c pass", ["-c", "pass"]),
                    ("tunelaunch plan recipe=sft/chat_tiny", ["-m", "launcher.cli", "plan", "recipe=sft/chat_tiny"]),
                    ("tunelaunch plan --config <AutoTrain file>",
                     ["-m", "launcher.cli", "plan", "--config", str(config)])]
        for tree_name, tree in trees:  # an untimed run: the first import of a package fills the OS cache
            timed([sys.executable, *commands[1][1]], cwd, tree_env(tree))
        for _ in range(runs):
            for tree_name, tree in trees:
                for label, cmd in commands:
                    if label.startswith("python") and tree_name != "now":
                        continue
                    times.setdefault((label, tree_name), []).append(timed([sys.executable, *cmd], cwd, tree_env(tree)))
        assert sorted(p.name for p in cwd.iterdir()) == ["config.yaml"], "plan created something"

    rows = []
    for (label, tree_name), values in times.items():
        med = statistics.median(values)
        target = "" if label.startswith("python") else (
            f"≤ {TARGET_S:.0f} s: {results.verdict(med <= TARGET_S)}" if tree_name == "now" else "")
        rows.append([label, tree_name if args.against else "", f"{med:.2f}", f"{min(values):.2f}",
                     f"{max(values):.2f}", len(values), target])
    body = [f"{runs} runs of each command, interleaved, one at a time; load average at the end "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}."
            + (f" 'before' is the tree at {args.against} (git {git_head(args.against)})." if args.against else ""),
            "", *results.table(["command", "code", "median s", "min s", "max s", "runs", "target"], rows), "",
            "What `plan` no longer imports: torch, transformers' trainer modules, peft and trl (the optimizer and "
            "scheduler names are read from transformers' source; GPUs are looked for only where a driver is "
            "loaded; a model's shape is counted once and cached)."]
    results.publish(args, "plan_time", "`tunelaunch plan` wall time", body)
    return 0


def tree_env(tree: Path) -> dict:
    """The environment that runs `tree`'s code (its folder first on the path, ahead of the installed package)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))


def git_head(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
