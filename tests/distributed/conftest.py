"""Helpers for the tests that train with two real processes (gloo on CPU).

Each run is `tunelaunch train` in a subprocess, as a user runs it, with the probe of probe_site/tunelaunch_probe.py
switched on through the environment: every rank writes what it saw into <probe dir>/rank<R>.json. The shipped
launcher knows nothing of it: probe_site/ goes first on PYTHONPATH, which the CLI passes on to the launchers and
their workers, and its sitecustomize.py installs the probe in the processes that run `-m launcher.worker`.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import cli_env, tunelaunch

PROBE_SITE = Path(__file__).resolve().parent / "probe_site"
TIMEOUT = 600


@dataclass
class Run:
    run_dir: Path
    probe_dir: Path
    returncode: int
    output: str
    seconds: float
    probes: dict = field(default_factory=dict)

    def probe(self, rank: int) -> dict:
        assert rank in self.probes, f"rank {rank} wrote no probe file; output:\n{self.output[-4000:]}"
        return self.probes[rank]

    def ok(self) -> "Run":
        assert self.returncode == 0, f"exit {self.returncode} after {self.seconds:.0f} s:\n{self.output[-6000:]}"
        return self

    def losses(self) -> list[float]:
        history = json.loads((self.run_dir / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    def launch(self) -> dict:
        return json.loads((self.run_dir / "launch.json").read_text())


def probe_env(probe_dir: Path | None, extra: dict | None = None) -> dict:
    """cli_env() with the probe's sitecustomize first on the path; the probe on (writing into probe_dir) or off
    (TUNELAUNCH_PROBE_FAIL_RANK in extra still switches on its failing rank). Probe variables of this process are
    dropped: only what a test asks for reaches the workers."""
    unset = dict.fromkeys(("TUNELAUNCH_PROBE_DIR", "TUNELAUNCH_PROBE_FAIL_RANK", "TUNELAUNCH_PROBE_STEP_SLEEP",
                           "TUNELAUNCH_PROBE_SAVE_SLEEP"))
    probe = {} if probe_dir is None else {"TUNELAUNCH_PROBE_DIR": str(probe_dir)}
    return cli_env(PROBE_SITE, **{**unset, **probe, **(extra or {})})


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return tunelaunch("train", "recipe=sft/chat_tiny", f"project_name={run_dir}", *overrides)


def read_probes(probe_dir: Path) -> dict:
    if not probe_dir.is_dir():
        return {}
    return {int(f.stem[4:]): json.loads(f.read_text()) for f in probe_dir.glob("rank*.json")}


def train(base: Path, name: str, *overrides: str, env: dict | None = None, probe: bool = True) -> Run:
    """`tunelaunch train recipe=sft/chat_tiny project_name=<base>/<name> ...overrides`, timed."""
    run_dir, probe_dir = base / name, base / f"{name}-probe"
    start = time.monotonic()
    out = subprocess.run(train_command(run_dir, *overrides), cwd=base, env=probe_env(probe_dir if probe else None, env),
                         capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    return Run(run_dir, probe_dir, out.returncode, out.stdout + out.stderr, seconds, read_probes(probe_dir))


def max_weight_diff(a: Path, b: Path, file: str = "model.safetensors") -> float:
    """The largest difference between the same weights of two run folders (the files must hold the same names)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / file)), load_file(str(b / file))
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_recipe(base: Path, name: str, recipe: str, *overrides: str, env: dict | None = None,
                 probe: bool = True) -> Run:
    """`train` with another recipe than sft/chat_tiny (Hydra takes one `recipe=` per command)."""
    run_dir, probe_dir = base / name, base / f"{name}-probe"
    command = [word if not word.startswith("recipe=") else f"recipe={recipe}" for word in train_command(run_dir)]
    start = time.monotonic()
    out = subprocess.run([*command, *overrides], cwd=base, env=probe_env(probe_dir if probe else None, env),
                         capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    return Run(run_dir, probe_dir, out.returncode, out.stdout + out.stderr, seconds, read_probes(probe_dir))


def hashes(probe: dict, start: int = 0, stop: int | None = None) -> list[str]:
    """The probe's hashes of the batches a rank trained on, from `start` to `stop`."""
    return [b["sha256"] for b in probe["batches"][start:stop]]


def check_same_as_one_process(one: Run, two: Run, steps: int, learned: float) -> None:
    """Two ranks against one process with the same global batch: each optimizer step holds the same samples (one
    process takes micro-batches 4s..4s+3, the two ranks 2s, 2s+1 each: the sampler deals micro-batch i to rank
    i % 2), and the losses are equal within 1e-4 relative, after a run that lowers the loss by `learned` (equal
    losses then mean equal training)."""
    from collections import Counter

    alone, r0, r1 = one.probe(0), two.probe(0), two.probe(1)
    for step in range(steps):
        a = Counter(hashes(alone, 4 * step, 4 * step + 4))
        b = Counter(hashes(r0, 2 * step, 2 * step + 2) + hashes(r1, 2 * step, 2 * step + 2))
        assert a == b, f"step {step + 1}: the global batch differs between 1 and 2 ranks"
    x, y = one.losses(), two.losses()
    assert len(x) == len(y) == steps
    assert x[0] - x[-1] > learned
    worst = max(abs(u - v) / abs(u) for u, v in zip(x, y))
    assert worst < 1e-4, f"1 process {x}\n2 ranks {y}\nworst relative difference {worst:.2e}"


def kill_everything(proc: subprocess.Popen) -> None:
    """kill -9 the CLI, its launcher and every worker at once: a crash, not a stop."""
    import signal

    import psutil

    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            psutil.Process(pid).send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
