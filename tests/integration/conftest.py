import json
from pathlib import Path

import pytest

from launcher.embedded import build_tiny_llama
from tests.conftest import REPO, run_cli  # noqa: F401 (imported from here by older test modules)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_llama()


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]
