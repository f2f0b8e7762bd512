"""An AutoTrain config.yaml trained through `tunelaunch train --config FILE`, as a user of AutoTrain runs it."""
import json
import math

import yaml

from tests.conftest import REPO, run_cli
from .conftest import losses


def test_task_llm_with_a_small_block_size_trains(tmp_path, tiny_model):
    """`task: llm` (the default trainer) with block_size 32 and nothing about prompts: AutoTrain's
    max_prompt_length (128 > 32) is a key the default trainer never reads, so it must not stop the run."""
    run = tmp_path / "llm-block-32"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "task": "llm", "base_model": str(tiny_model), "project_name": str(run), "backend": "local",
        "data": {"path": str(REPO / "samples" / "text"), "train_split": "train", "valid_split": None},
        "params": {"block_size": 32, "batch_size": 2, "gradient_accumulation": 1, "lr": 1e-3},
    }))
    result = run_cli("train", "--config", str(config), "training.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["name"] == "default" and cfg["data"]["block_size"] == 32
    assert cfg["data"]["max_prompt_length"] == 128  # untouched, unread
    params = json.loads((run / "training_params.json").read_text())
    assert (params["trainer"], params["block_size"]) == ("default", 32)
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert (run / "model.safetensors").is_file()
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    curve = losses(run)
    assert len(curve) == 2 and all(math.isfinite(x) for x in curve), curve
