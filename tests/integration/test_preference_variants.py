"""The cpo and simpo trainers, and dpo with a combined loss, end to end on the embedded tiny model through real
`tunelaunch train` subprocesses (as test_trainers.py); and a misspelled DPO loss refused before anything starts."""
import json
import math

import pytest

from tests.conftest import run_cli
from .conftest import losses

RECIPES = {"cpo": "cpo/preference_tiny", "simpo": "simpo/preference_chat_tiny"}
LIMITS = ("data.max_prompt_length=8", "data.max_completion_length=4")  # below every sample's lengths


def train_logs(run) -> list[dict]:
    return [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["none", "lora"])
@pytest.mark.parametrize("trainer", list(RECIPES))
def test_cpo_and_simpo_train_with_their_reward_margin_logged(trainer, peft, tmp_path):
    run = tmp_path / f"{trainer}-{peft}"
    extra = LIMITS if peft == "lora" else ()
    result = run_cli("train", f"recipe={RECIPES[trainer]}", f"peft={peft}", f"project_name={run}", *extra,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    weights = "adapter_model.safetensors" if peft == "lora" else "model.safetensors"
    assert (run / weights).is_file() and json.loads((run / "run_state.json").read_text())["status"] == "finished"
    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    curve = losses(run)
    assert len(curve) == metrics["global_step"] == 10 and all(math.isfinite(x) for x in curve), curve

    logs = train_logs(run)
    margins = [h["rewards/margins"] for h in logs]
    assert len(margins) == 10 and all(math.isfinite(m) for m in margins), margins
    # cpo adds the SFT loss on the chosen answer (cpo_alpha 1.0); pure SimPO has none (cpo_alpha 0).
    nll = [h["nll_loss"] for h in logs]
    assert all(x > 0 for x in nll) if trainer == "cpo" else all(x == 0 for x in nll), nll
    if trainer == "simpo":  # -log sigmoid(margin - gamma), gamma 1.0 (mean over the batch of 2, hence the tolerance)
        first = logs[0]
        assert math.isclose(first["loss"], math.log1p(math.exp(1.0 - first["rewards/margins"])), rel_tol=1e-2), first
    if extra:
        assert metrics["truncated_prompts"] == metrics["train_rows"], metrics
        assert metrics["truncated_answers"] == metrics["train_rows"], metrics


@pytest.mark.slow
def test_dpo_trains_on_a_weighted_sum_of_losses(tmp_path):
    run = tmp_path / "mpo"
    result = run_cli("train", "recipe=dpo/preference_tiny", "peft=lora", f"project_name={run}",
                     "trainer.loss_type=[sigmoid,bco_pair,sft]", "trainer.loss_weights=[0.8,0.2,1.0]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses(run)
    assert len(curve) == 10 and all(math.isfinite(x) for x in curve), curve
    # At the first step the policy is the reference: sigmoid = bco_pair / 2 = log 2, so the sum is
    # 0.8 log 2 + 0.2 x 2 log 2 + the SFT loss, above what the DPO loss alone (log 2) gives.
    assert curve[0] > 1.2 * math.log(2), curve
    assert all(math.isfinite(h["rewards/margins"]) for h in train_logs(run))


def test_a_misspelled_loss_type_is_refused_before_any_model_loads(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "recipe=dpo/preference_tiny", f"project_name={run}", "trainer.loss_type=sigmod",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "trainer.loss_type: unknown DPO loss 'sigmod'. Did you mean 'sigmoid'?" in result.stderr
    assert "Nothing was started." in result.stderr
    assert not run.exists()
