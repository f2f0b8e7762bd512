"""The distill trainer end to end on the embedded tiny model, a real `tunelaunch train` subprocess as in
test_trainers.py. The teacher shares the tiny tokenizer: an adapter folder of the tiny model with random LoRA
weights (so the teacher path that merges an adapter onto the base named in adapter_config.json is exercised).
The run must finish, log a finite divergence, write samples.jsonl, save a model, and move the student's weights."""
import json
import math

import pytest
import yaml

from tests.conftest import run_cli


def random_adapter_teacher(tiny_model, folder):
    """The tiny model with a LoRA adapter whose both factors are random (init_lora_weights=False), saved as an
    adapter folder with the tiny tokenizer: a teacher unlike the student, of the same vocabulary."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear",
                                            init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_distill_trains_the_student_towards_its_teacher(tiny_model, tmp_path, peft):
    from safetensors.torch import load_file

    teacher = random_adapter_teacher(tiny_model, tmp_path / "teacher")
    run = tmp_path / "distill"
    result = run_cli("train", "recipe=distill/tiny_from_run", f"trainer.teacher={teacher}", f"project_name={run}",
                     f"peft={peft}",
                     "training.max_steps=3", "training.batch_size=2", "data.max_completion_length=8",
                     "logging.steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merged onto" in result.stderr + result.stdout  # the adapter teacher was merged onto its base

    weights = ("adapter_config.json", "adapter_model.safetensors") if peft == "lora" else (
        "config.json", "model.safetensors")
    for name in (*weights, "tokenizer.json", "config.yaml", "manifest.json", "trainer_state.json", "samples.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "completions").exists()  # trl's parquet copies of the samples are off
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["name"] == "distill" and cfg["trainer"]["teacher"] == str(teacher)

    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    assert metrics["global_step"] == 3 and metrics["data_format"] == "prompt_only"
    assert metrics["saved"] == ("adapter" if peft == "lora" else "full")
    assert math.isfinite(metrics["final_divergence"]) and metrics["final_divergence"] > 0
    assert 0 < metrics["final_completion_length"] <= 8
    history = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(history) == 3 and all(math.isfinite(h["loss"]) and h["entropy"] > 0 for h in history)

    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 3} and all(s["prompt"] and "completion" in s for s in samples)
    assert "<|im_start|>" not in samples[0]["prompt"] and "assistant" in samples[0]["prompt"]  # the chatml render

    if peft == "lora":  # the B factors start at zero
        adapter = load_file(run / "adapter_model.safetensors")
        assert any(float(w.abs().max()) > 0 for k, w in adapter.items() if "lora_B" in k)
        return
    before, after = load_file(tiny_model / "model.safetensors"), load_file(run / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > len(before) // 2, changed  # a full fine-tune: most tensors moved
