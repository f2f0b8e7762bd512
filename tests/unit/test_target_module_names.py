"""peft.target_modules and peft.modules_to_save are checked by `plan` against the model's own module names (the
skeleton built on the meta device from a local config.json, or one the hub cache already holds), so a misspelt
name is refused before anything loads, with a did-you-mean and the model's linear layers; a model whose
config.json is not on this machine gets a note that the names are checked when it loads."""
import json

import pytest

from launcher.distributed import memory
from tests.conftest import run_cli
from tests.unit.helpers import plan, problems

LINEAR = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"


def test_a_misspelt_target_module_is_a_problem_with_a_did_you_mean(tmp_path):
    found = problems(tmp_path, "peft=lora", "peft.target_modules=[q_prj,v_proj]")
    assert len(found) == 1, found
    assert found[0].startswith("peft.target_modules")
    assert "'q_prj' matches no module" in found[0] and "did you mean q_proj?" in found[0]
    assert f"the model's linear layers: {LINEAR}" in found[0]


def test_every_unknown_name_is_reported_and_known_ones_pass(tmp_path):
    found = problems(tmp_path, "peft=lora", "peft.target_modules=[self_attn.q_proj,mlp.up,attn]")
    assert [f.split("'")[1] for f in found] == ["mlp.up", "attn"]  # a dotted suffix matches, as in peft
    assert plan(tmp_path, "peft=lora", "peft.target_modules=[q_proj,down_proj]").cfg.peft.target_modules


def test_a_misspelt_module_to_save_gets_a_did_you_mean(tmp_path):
    found = problems(tmp_path, "peft=lora", "peft.modules_to_save=[lm_haed]")
    assert len(found) == 1 and found[0].startswith("peft.modules_to_save"), found
    assert "did you mean lm_head?" in found[0]


@pytest.mark.parametrize("key, target", [
    ("model.layers.0.self_attn.q_proj", "q_proj"), ("model.layers.0.self_attn.q_proj", "self_attn.q_proj"),
    ("model.layers.0.self_attn.q_proj", "proj"), ("model.layers.0.self_attn.q_proj", "layers.0.self_attn.q_proj"),
    ("lm_head", "lm_head"), ("model.layers.0.mlp.up_proj", "p_proj"), ("model.norm", "model.norm")])
def test_the_name_rule_is_peft_own(key, target):
    """plan matches without importing peft (seconds); the rule must stay the one peft applies to a list."""
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    config = SimpleNamespace(target_modules=[target], exclude_modules=None, modules_to_save=None,
                             target_parameters=None, layers_to_transform=None, layers_pattern=None)
    assert memory.target_matches(key, target) == bool(check_target_module_exists(config, key))


def test_without_a_local_config_the_names_are_checked_when_the_model_loads(tmp_path, monkeypatch):
    from launcher.planning import make_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", "model.name_or_path=org/not-here",
                         "peft=lora", "peft.target_modules=[q_prj]"])
    assert any("target_modules q_prj will be checked against the model's modules when it loads" in n
               for n in p.notes), p.notes


def fake_hub_cache(root, repo: str, config: dict):
    """The layout huggingface_hub leaves after a download: refs/main names the snapshot holding the files."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_a_model_in_the_hub_cache_is_checked_offline_from_the_cli(tmp_path):
    from launcher.embedded import build_tiny_llama

    config = json.loads((build_tiny_llama() / "config.json").read_text())
    fake_hub_cache(tmp_path / "hub", "someorg/cached-llama", config)
    done = run_cli("plan", "recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}",
                   "model.name_or_path=someorg/cached-llama", "peft=lora", "peft.target_modules='q_prj,v_proj'",
                   cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "peft.target_modules" in done.stderr and "did you mean q_proj?" in done.stderr, done.stderr


def test_plan_refuses_a_misspelt_target_from_the_cli(tmp_path):
    done = run_cli("plan", "recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", "peft=lora",
                   "peft.target_modules='q_prj,v_proj'", cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'q_prj' matches no module" in done.stderr and "did you mean q_proj?" in done.stderr
    assert "'v_proj'" not in done.stderr
