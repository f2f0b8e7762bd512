"""The default, reward, dpo and orpo trainers end to end on the embedded tiny model, each as a full fine-tune and
with LoRA: real `tunelaunch train` subprocesses through accelerate launch, as in test_train_sft.py."""
import json
import math

import pytest
import yaml

from tests.conftest import run_cli
from .conftest import losses

RECIPES = {"default": "default/text_tiny", "reward": "reward/pairs_tiny", "dpo": "dpo/preference_tiny",
           "orpo": "orpo/preference_chat_tiny"}
# The LoRA runs of dpo/orpo also set prompt and answer limits below the samples' lengths, so the cut is exercised.
LIMITS = ("data.max_prompt_length=8", "data.max_completion_length=4")


@pytest.mark.parametrize("peft", ["none", "lora"])
@pytest.mark.parametrize("trainer", list(RECIPES))
def test_trainer_run_leaves_a_complete_output_folder(trainer, peft, tmp_path):
    run = tmp_path / f"{trainer}-{peft}"
    extra = LIMITS if trainer in ("dpo", "orpo") and peft == "lora" else ()
    result = run_cli("train", f"recipe={RECIPES[trainer]}", f"peft={peft}", f"project_name={run}", *extra,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    weights = ("adapter_config.json", "adapter_model.safetensors") if peft == "lora" else (
        "config.json", "model.safetensors")
    for name in (*weights, "tokenizer.json", "tokenizer_config.json", "config.yaml", "training_params.json",
                 "manifest.json", "trainer_state.json"):
        assert (run / name).is_file(), name
    assert (peft == "lora") != (run / "model.safetensors").exists()
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert json.loads((run / "training_params.json").read_text())["trainer"] == trainer
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["name"] == trainer and cfg["peft"]["enabled"] == (peft == "lora")

    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == cfg["training"]["max_steps"]
    assert metrics["saved"] == ("adapter" if peft == "lora" else "full")
    curve = losses(run)
    assert len(curve) == metrics["global_step"] and all(math.isfinite(x) for x in curve), curve

    if trainer == "default":  # causal LM on 128-token blocks: 15 steps visibly lower the loss
        assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.05, curve
    if trainer == "reward":
        assert_sequence_classifier_with_one_label(run, peft)
    if extra:  # every sample prompt is over 8 tokens in ChatML, every pair has an answer over 4
        assert metrics["truncated_prompts"] == metrics["train_rows"], metrics
        assert metrics["truncated_answers"] == metrics["train_rows"], metrics


def assert_sequence_classifier_with_one_label(run, peft):
    if peft == "lora":
        from peft import AutoPeftModelForSequenceClassification

        adapter = json.loads((run / "adapter_config.json").read_text())
        assert adapter["task_type"] == "SEQ_CLS"
        # The base config holds no label count, so the loader is told; a saved head of another size would not load.
        model = AutoPeftModelForSequenceClassification.from_pretrained(run, num_labels=1).get_base_model()
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(run)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1 and model.score.out_features == 1
    assert model.config.pad_token_id is not None
