"""Run a training command as a user would (a subprocess, from the command's start) with the probe of
benchmarks/probe/sitecustomize.py in its processes, and read back what the probe saw: time to the first optimizer
step, step times, logged losses, peak RSS of the training process. The benchmarks that compare training commands
(packing.py, trl_by_hand.py) measure every arm through this one function.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROBE = HERE / "probe"
THREADS = "2"  # OMP_NUM_THREADS for every arm (accelerate launch would export 1 when unset: FACTS.md)


def tool(name: str) -> str:
    """A console script of this interpreter's environment (tunelaunch, accelerate, trl)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def environment(probe_file: Path, threads: str = THREADS) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), str(REPO), env.get("PYTHONPATH")]))
    env.update(BENCH_PROBE=str(probe_file), OMP_NUM_THREADS=threads, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               TRL_EXPERIMENTAL_SILENCE="1", DISABLE_MLFLOW_INTEGRATION="TRUE", WANDB_DISABLED="true")
    return env


@dataclass
class Run:
    label: str
    command: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    started: float = 0.0
    output: str = ""
    events: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.steps)

    @property
    def steps(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "step"]

    @property
    def first_step_s(self) -> float:
        """From the command's start to the end of the first optimizer step."""
        return self.steps[0]["t"] - self.started if self.steps else float("nan")

    def step_times(self) -> list[float]:
        t = [e["t"] for e in self.steps]
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def median_step_s(self) -> float:
        times = self.step_times()
        return statistics.median(times) if times else float("nan")

    @property
    def train_s(self) -> float:
        """First `begin` to last `end` event: the Trainer's loop, without loading and saving."""
        begin = [e["t"] for e in self.events if e["event"] == "begin"]
        end = [e["t"] for e in self.events if e["event"] == "end"]
        return end[-1] - begin[0] if begin and end else float("nan")

    @property
    def peak_rss_mib(self) -> float:
        """Peak RSS of the process that trained (the one the probe's events came from)."""
        return max((e["maxrss_kb"] for e in self.events), default=0) / 1024

    def losses(self) -> list[tuple[int, float, float]]:
        """(step, num_tokens, loss) of every training log that has a loss."""
        out = []
        for e in self.events:
            logs = e.get("logs") or {}
            if e["event"] == "log" and "loss" in logs:
                out.append((e["step"], float(logs.get("num_tokens", "nan")), float(logs["loss"])))
        return out

    def tokens_per_s(self) -> float:
        """Trained tokens per second between the first and the last log that counts them (`num_tokens`): the
        first step's warm-up and compilation are left out."""
        timed = [e for e in self.events if e["event"] == "log" and "num_tokens" in (e.get("logs") or {})]
        if len(timed) < 2 or timed[-1]["t"] <= timed[0]["t"]:
            return float("nan")
        tokens = float(timed[-1]["logs"]["num_tokens"]) - float(timed[0]["logs"]["num_tokens"])
        return tokens / (timed[-1]["t"] - timed[0]["t"])

    @property
    def peak_cuda_bytes(self) -> int | None:
        """Peak CUDA memory of the process that trained, None where it used no GPU."""
        peaks = [e["cuda_peak_bytes"] for e in self.events if "cuda_peak_bytes" in e]
        return max(peaks) if peaks else None

    @property
    def trainable_params(self) -> int:
        return next((e.get("trainable_params", 0) for e in self.events if e["event"] == "begin"), 0)

    @property
    def final_loss(self) -> float:
        losses = self.losses()
        return losses[-1][2] if losses else float("nan")

    def failure(self) -> str:
        return f"{self.label}: exit {self.returncode}, {len(self.steps)} steps; last output:\n{self.output[-3000:]}"


def run(label: str, command: list[str], cwd: Path, timeout: float = 1800, env_extra: dict | None = None,
        echo: bool = True) -> Run:
    """Start `command` in `cwd` with the probe, wait for it, and return what it measured."""
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        probe_file = Path(tmp) / "events.jsonl"
        env = environment(probe_file)
        env.update(env_extra or {})
        if echo:
            print(f"[{label}] {' '.join(command)}", flush=True)
        result = Run(label, command)
        result.started = time.time()
        try:
            out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
            result.returncode, result.output = out.returncode, out.stdout + out.stderr
        except subprocess.TimeoutExpired as err:
            result.returncode = 124
            result.output = f"timed out after {timeout:.0f} s\n" + (err.stdout or b"").decode(errors="replace")[-3000:]
        result.wall_s = time.time() - result.started
        if probe_file.exists():
            result.events = [json.loads(line) for line in probe_file.read_text().splitlines() if line.strip()]
    if echo:
        print(f"[{label}] exit {result.returncode} in {result.wall_s:.1f} s, {len(result.steps)} steps, first step "
              f"after {result.first_step_s:.1f} s, median step {result.median_step_s:.3f} s, peak RSS "
              f"{result.peak_rss_mib:.0f} MiB, last loss {result.final_loss:.4f}", flush=True)
    return result
