"""The kto trainer end to end on the embedded tiny model: a full fine-tune on prompt/completion/label strings and a
LoRA run on labelled conversations (with prompt and completion limits below the samples' lengths, so the cut is
exercised), each a real `tunelaunch train` subprocess as in test_trainers.py; and `prepare --show`."""
import json
import math

import pytest
import yaml

from launcher import cli

from tests.conftest import run_cli
from .conftest import losses

CASES = {"none": ("recipe=kto/unpaired_tiny",),
         "lora": ("recipe=kto/conversation_tiny", "data.max_prompt_length=8", "data.max_completion_length=4")}
PREFERENCE_METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins")


@pytest.mark.parametrize("peft", list(CASES))
def test_kto_trains_and_logs_its_rewards(peft, tmp_path):
    run = tmp_path / f"kto-{peft}"
    result = run_cli("train", *CASES[peft], f"peft={peft}", f"project_name={run}", "logging.steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    weights = ("adapter_config.json", "adapter_model.safetensors") if peft == "lora" else (
        "config.json", "model.safetensors")
    for name in (*weights, "tokenizer.json", "config.yaml", "manifest.json", "trainer_state.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["name"] == "kto" and cfg["peft"]["enabled"] == (peft == "lora")

    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == cfg["training"]["max_steps"] == 10
    assert metrics["saved"] == ("adapter" if peft == "lora" else "full")
    curve = losses(run)
    assert len(curve) == 10 and all(math.isfinite(x) for x in curve), curve

    # trl's own KTO metrics are in the log, finite, and the rewards move away from 0 once the policy has changed
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    for key in PREFERENCE_METRICS:
        values = [h[key] for h in history if key in h]
        assert values and all(math.isfinite(v) for v in values), (key, values)
    assert any(h["rewards/chosen"] != 0 for h in history[1:] if "rewards/chosen" in h)

    if peft == "none":  # samples/kto: 20 desirable, 12 undesirable; the recipe weighs the undesirable 1.5
        assert (metrics["desirable_rows"], metrics["undesirable_rows"]) == (20, 12)
        assert cfg["trainer"]["undesirable_weight"] == 1.5
    else:  # every ChatML prompt is over 8 tokens, every reply (with its end of turn) over 4
        assert metrics["truncated_prompts"] == metrics["truncated_answers"] == metrics["train_rows"] == 24


def test_prepare_shows_each_label_and_the_trained_completion(tmp_path, capsys):
    code = cli.main(["prepare", "--show", "2", "recipe=kto/unpaired_tiny", "data.max_prompt_length=8",
                     f"project_name={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Prepared unpaired rows for the kto trainer" in out and "template chatml" in out
    assert "-- row 1: label true (desirable), 8 prompt tokens" in out
    assert "-- row 2: label false (undesirable), 8 prompt tokens" in out
    # the kept end of the prompt plain, the completion with its end-of-turn token marked as trained
    assert "<|im_start|>assistant\n[[The capital of Norway is Oslo.<|im_end|>\n]]" in out
    assert "== train: 32 rows, 20 desirable (true), 12 undesirable (false)" in out
    assert "prompts cut to their last 8 tokens (max_prompt_length): 32" in out
    assert not (tmp_path / "run").exists()
