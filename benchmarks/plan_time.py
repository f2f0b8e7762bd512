"""How long `tunelaunch plan` takes, as a user runs it: median wall time over N runs of

  - `python -c pass`                                   (the interpreter alone: the floor)
  - `tunelaunch plan recipe=sft/chat_tiny`              (a recipe: Hydra layers, data preflight, resolution)
  - `tunelaunch plan --config <AutoTrain config.yaml>`  (AutoTrain's format, translated, on the same tiny model)

Each command is a fresh subprocess, run one after the other (never side by side) in an empty folder, and must exit
0. Usage: `python benchmarks/plan_time.py [--runs N] [--quick]`. The figures depend on the machine and its load: they
are printed, not recorded (and not asserted by any test).
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


def tunelaunch() -> list[str]:
    script = Path(sys.executable).parent / "tunelaunch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


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
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs

    sys.path.insert(0, str(REPO))
    from launcher.embedded import build_tiny_llama

    model = build_tiny_llama()  # built (or found in the cache) before any timing
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="plan-time-") as tmp:
        cwd = Path(tmp)
        config = autotrain_file(cwd, model)
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("tunelaunch plan recipe=sft/chat_tiny", [*tunelaunch(), "plan", "recipe=sft/chat_tiny"]),
            ("tunelaunch plan --config <AutoTrain file>", [*tunelaunch(), "plan", "--config", str(config)]),
        ]
        timed(commands[1][1], cwd, env)  # one untimed run: the first import of a package fills the OS cache
        results = []
        for label, cmd in commands:
            times = [timed(cmd, cwd, env) for _ in range(runs)]
            results.append((label, times))
            assert sorted(p.name for p in cwd.iterdir()) == ["config.yaml"], "plan created something"

    width = max(len(label) for label, _ in results)
    print(f"{'command':{width}s}  {'median s':>8s}  {'min s':>6s}  {'max s':>6s}  runs")
    for label, times in results:
        print(f"{label:{width}s}  {statistics.median(times):8.2f}  {min(times):6.2f}  {max(times):6.2f}  {len(times)}")
    print(f"\n{runs} runs each, one after the other; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
