"""Fixtures the planner's distributed tests share."""
import json
from pathlib import Path

import pytest

from tests.unit.helpers import LLAMA3_8B


@pytest.fixture(scope="module")
def llama3_8b(tmp_path_factory) -> Path:
    """A model folder with Llama-3-8B's config.json and no weights: the plan must not need them."""
    folder = tmp_path_factory.mktemp("models") / "llama3-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
    return folder
