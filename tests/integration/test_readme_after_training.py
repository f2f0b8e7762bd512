"""The README's "After training" block, run as written in a fresh folder (samples/ beside it, as in a checkout):
scores written and shown, the GGUF loaded back by transformers, the sweep plotted and compared, the mlflow store
holding the run's parameters, metrics and eval results."""
import json
import re

import pytest

from tests.conftest import run_readme_block

pytestmark = pytest.mark.slow


def test_the_after_training_block_runs_as_written(tmp_path):
    done, out = run_readme_block("## After training", tmp_path, timeout=1500)
    assert done.returncode == 0, out[-5000:]
    run = tmp_path / "runs" / "scored"

    # scored at the end of training (8 questions), then by hand on all 24 without the template
    results = json.loads((run / "eval" / "pirate.json").read_text())
    assert results["results"]["pirate"]["acc,none"] is not None
    assert results["n-samples"]["pirate"] == {"original": 24, "effective": 24}
    assert "eval: pirate, the first 8 examples of each, by rank 0 alone when training ends" in out
    assert re.search(r"^pirate\s+acc\s+[\d.]+\s", out, re.M), out[-3000:]  # the table
    # `runs` shows the score as a column
    assert any("pirate/acc" in line and "train_loss" in line for line in out.splitlines()), out[-3000:]

    # the GGUF: transformers reads it back; safetensors folder has the merged model alone
    gguf = run / "export" / "scored-f32.gguf"
    assert gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert model.config.model_type == "llama"
    folder = run / "export" / "safetensors"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()

    # the sweep: one PNG of both curves; compare labels both trials' answers
    assert (tmp_path / "runs" / "lr-sweep" / "runs_train_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "[runs/lr-sweep/training.lr=0.001]" in out and "[runs/lr-sweep/training.lr=0.01]" in out

    # mlflow: the local store beside the run, with our names and AutoTrain's, the loss per step, the eval file
    from mlflow.tracking import MlflowClient

    recorded = json.loads((run / "tracker.json").read_text())["mlflow"]
    assert recorded["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=recorded["tracking_uri"])
    run_id = recorded["run_id"]
    logged = client.get_run(run_id)
    assert logged.data.params["training.max_steps"] == "4" and "lr" in logged.data.params
    assert client.get_metric_history(run_id, "loss")
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "eval")}
    assert "eval/pirate.json" in artifacts, artifacts
