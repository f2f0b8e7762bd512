"""grpo and rloo end to end on the embedded tiny model, each a real `tunelaunch train` subprocess (full fine-tune
and LoRA): the run finishes and saves its model, trl's reward metrics are in the log, samples.jsonl holds the
sampled completions scored by each reward function, the rewards the log reports are the ones the shipped
function gives those completions, and the weights moved. (The README's block, a user reward function among them,
is run as written by test_readme_online_rl.py.)"""
from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from tests.conftest import run_cli

STEPS = 4
FAST = (f"training.max_steps={STEPS}", "logging.steps=1")


def trained_weights(run, peft: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / ("adapter_model.safetensors" if peft == "lora" else "model.safetensors")))


@pytest.mark.parametrize("method, peft", [("grpo", "none"), ("grpo", "lora"), ("rloo", "none"), ("rloo", "lora")])
def test_online_method_trains_and_logs_its_rewards(method, peft, tmp_path, tiny_model):
    run = tmp_path / f"{method}-{peft}"
    result = run_cli("train", f"recipe={method}/format_tiny", f"peft={peft}", f"project_name={run}", *FAST,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["name"] == method and cfg["data"]["max_completion_length"] == 8

    # trl's metrics: the total reward, the per-function mean and std, completion lengths, the clip ratio
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "reward" in h]
    assert len(history) == STEPS
    for key in ("reward", "reward_std", "rewards/format/mean", "rewards/format/std", "completions/mean_length"):
        assert all(math.isfinite(h[key]) for h in history), key
    assert all(0 <= h["completions/mean_length"] <= 8 for h in history)
    assert any(k.startswith("clip_ratio") for k in history[0])

    # samples.jsonl: every logged step's completions (2 prompts x 4 per round, 2 rounds a step), each scored by
    # the shipped format reward exactly as the log averages it
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == list(range(1, STEPS + 1))
    pattern = re.compile(cfg["trainer"]["format_pattern"], re.DOTALL)
    for row in rows:
        text = row["completion"][-1]["content"] if isinstance(row["completion"], list) else row["completion"]
        assert row["rewards"]["format"] == (1.0 if pattern.search(text) else 0.0), row
    last = [r["rewards"]["format"] for r in rows if r["step"] == STEPS]
    assert history[-1]["rewards/format/mean"] == pytest.approx(sum(last) / len(last), abs=1e-6)

    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == STEPS and metrics["data_format"] == "prompt_only"
    assert set(metrics["final_rewards"]) == {"format"}
    assert (run / "reward_curve.png").is_file()

    # the weights moved (LoRA: the B matrices start at zero)
    weights = trained_weights(run, peft)
    if peft == "lora":
        assert any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)
    else:
        from safetensors.torch import load_file

        base = load_file(str(tiny_model / "model.safetensors"))
        assert any(not (weights[k] == base[k]).all() for k in base if k in weights)
