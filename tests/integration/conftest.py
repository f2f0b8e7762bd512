import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.embedded import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_llama()


def run_cli(*args, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    for key in [k for k, v in full_env.items() if v is None]:  # None unsets a variable
        del full_env[key]
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]
