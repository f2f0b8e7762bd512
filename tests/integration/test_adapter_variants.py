"""LoRA variants (DoRA, rsLoRA, the initialisations, modules_to_save) from `launcher.models.lora_config` to a
saved adapter and `tunelaunch merge`: the merged model gives the adapter's logits, and each variant is really in
the adapter. One run through the real CLI (slow) checks that trl's SFTTrainer keeps them in what it saves."""
import json

import pytest
import torch
from safetensors import safe_open

from launcher import models
from launcher.config.schema import RunConfig
from launcher.merge import merge_run

from tests.conftest import run_cli

VARIANTS = {
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "gaussian": {"init": "gaussian"},
    "orthogonal": {"init": "orthogonal"},
    "modules_to_save": {"modules_to_save": ["lm_head"]},
    "dora+rslora+lm_head": {"use_dora": True, "use_rslora": True, "modules_to_save": ["lm_head"]},
}


def adapter_keys(folder) -> list[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def trained_adapter(tiny_model, out, **peft):
    """A peft model built from our config, moved off its initial no-op by a few large SGD steps, saved as a bare
    adapter folder (adapter + tokenizer), as `merge` reads it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model)
    cfg.peft.enabled = True
    for key, value in peft.items():
        setattr(cfg.peft, key, value)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                           models.lora_config(cfg))
    ids = torch.randint(3, 200, (2, 16))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return model, ids


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merging_each_variant_gives_the_adapter_logits(variant, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    peft = VARIANTS[variant]
    model, ids = trained_adapter(tiny_model, tmp_path / "adapter", **peft)
    merged_dir = merge_run(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        a, m, b = model(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    assert (a - b).abs().max() > 1e-3  # the adapter changed the model, so the comparison means something
    assert torch.allclose(a, m, atol=1e-5), (a - m).abs().max()

    keys, config = adapter_keys(tmp_path / "adapter"), json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert any("lora_magnitude_vector" in k for k in keys) == bool(peft.get("use_dora"))
    assert config["use_dora"] == bool(peft.get("use_dora")) and config["use_rslora"] == bool(peft.get("use_rslora"))
    assert config["init_lora_weights"] == models.LORA_INITS[peft.get("init", "default")]
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(32 / 16 ** 0.5 if peft.get("use_rslora") else 32 / 16)
    if peft.get("modules_to_save"):  # the trained copy of lm_head is saved, and it is what the merged model holds
        assert "base_model.model.lm_head.weight" in keys
        assert not torch.equal(merged.lm_head.weight, base.lm_head.weight)
    else:
        assert torch.equal(merged.lm_head.weight, base.lm_head.weight)


@pytest.mark.slow  # a training run and a merge through the CLI: ~40 s alone, minutes on a busy machine
def test_a_dora_run_saves_magnitudes_and_merges(tmp_path):
    run = tmp_path / "dora-run"
    result = run_cli("train", "recipe=sft/chat_tiny", "peft=lora", "peft.use_dora=true", "peft.use_rslora=true",
                     "peft.modules_to_save=[lm_head]", f"project_name={run}",
                     "training.max_steps=2", "training.lr=5e-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = adapter_keys(run)
    magnitudes = [k for k in keys if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 4 * 7, magnitudes  # 4 blocks x 7 adapted Linear layers (all-linear)
    assert "base_model.model.lm_head.weight" in keys
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["use_dora"] and config["use_rslora"] and config["modules_to_save"] == ["lm_head"]

    merged_dir = tmp_path / "merged"
    merged = run_cli("merge", str(run), "--output", str(merged_dir), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    from launcher.generate import from_run

    adapter = from_run(run)
    ids = torch.tensor([adapter.prompt_ids(text="Tell me about the moon.")])
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        a, m = adapter.model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(a, m, atol=1e-5), (a - m).abs().max()
