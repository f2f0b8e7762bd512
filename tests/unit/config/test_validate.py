"""Cross-field rules (launcher/config/validate.py): every problem at once, each naming its keys; and the scoping
of the rules: a rule about a method-specific key binds only the methods that read it (launcher.methods), and a key
set for a method that does not read it is a note from `unused_keys`, never a reason to refuse the run."""
import importlib.util

import pytest

from launcher import methods
from launcher.config.schema import RunConfig
from launcher.config.validate import unused_keys, validate
from launcher.data.templates import NAMES as TEMPLATE_NAMES
from tests.unit.helpers import valid_cfg


def keys_of(cfg: RunConfig) -> dict:
    return {p.key: p.message for p in validate(cfg)}


def test_a_valid_config_has_no_problems():
    assert validate(valid_cfg()) == []
    assert unused_keys(valid_cfg()) == []


def test_no_model_is_a_problem():
    assert "model.name_or_path" in keys_of(RunConfig())


def test_block_size_above_model_max_length_names_both_keys():
    cfg = valid_cfg()
    cfg.data.block_size, cfg.model.max_length = 4096, 1024
    problems = keys_of(cfg)
    assert list(problems) == ["data.block_size / model.max_length"]
    assert "4096" in problems["data.block_size / model.max_length"]
    assert "1024" in problems["data.block_size / model.max_length"]


def test_block_size_equal_to_max_length_is_fine():
    cfg = valid_cfg()
    cfg.data.block_size = cfg.model.max_length = 1024
    assert validate(cfg) == []


# ---- the prompt/completion limits: read by dpo and orpo only

PROMPT_READERS = methods.readers("data.max_prompt_length")


def test_the_prompt_limits_are_read_by_the_preference_and_online_methods_only():
    assert sorted(PROMPT_READERS) == sorted(methods.readers("data.max_completion_length")) == sorted(
        ["dpo", "orpo", "cpo", "simpo", "kto", "grpo", "rloo", "distill"])


@pytest.mark.parametrize("trainer", methods.NAMES)
def test_max_prompt_length_above_block_size(trainer):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    cfg.data.block_size, cfg.data.max_prompt_length = 256, 300
    problems = keys_of(cfg)
    if trainer in PROMPT_READERS:
        assert list(problems) == ["data.max_prompt_length / data.block_size"]
        assert "300" in problems["data.max_prompt_length / data.block_size"]
        assert unused_keys(cfg) == []
    else:  # the trainer does not read the key: not refused, noted
        assert problems == {}
        assert any(n.startswith("data.max_prompt_length: 300 is not used by the " + trainer) for n in unused_keys(cfg))


@pytest.mark.parametrize("trainer", ["dpo", "orpo"])
def test_max_prompt_length_above_automatic_block_size(trainer):
    cfg = valid_cfg()  # block_size -1: min(1024, 2048) = 1024
    cfg.trainer.name = trainer
    cfg.data.max_prompt_length = 1500
    assert list(keys_of(cfg)) == ["data.max_prompt_length / data.block_size"]


@pytest.mark.parametrize("trainer", methods.NAMES)
def test_max_completion_length_above_model_max_length(trainer):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    cfg.data.max_completion_length = 4096
    expected = ["data.max_completion_length / model.max_length"] if trainer in PROMPT_READERS else []
    assert list(keys_of(cfg)) == expected


@pytest.mark.parametrize("key", ["max_prompt_length", "max_completion_length"])
def test_a_non_positive_prompt_limit_is_refused_for_dpo_only(key):
    cfg = valid_cfg()
    setattr(cfg.data, key, 0)
    assert keys_of(cfg) == {}  # sft
    cfg.trainer.name = "dpo"
    assert list(keys_of(cfg)) == [f"data.{key}"]


# ---- every method-specific key, for every method that does not read it

# A value for each key every rule about it would refuse, were the rule not scoped.
UNREAD_VALUES = {"data.max_prompt_length": 100_000, "data.max_completion_length": 100_000,
                 "trainer.beta": -1.0, "trainer.model_ref": "org/reference", "trainer.train_on": "all",
                 "trainer.desirable_weight": -1.0, "trainer.undesirable_weight": -1.0,
                 "trainer.loss_type": "sigmod", "trainer.loss_weights": [1.0, 2.0], "trainer.label_smoothing": 0.7,
                 "trainer.simpo_gamma": -1.0, "trainer.cpo_alpha": -1.0, "training.neftune_noise_alpha": -1.0,
                 # the online methods' keys (the rewards' and tools' own checks run in plan: launcher/rl)
                 "trainer.num_generations": 1, "trainer.temperature": 0.0, "trainer.top_p": 2.0,
                 "trainer.epsilon": 0.0, "trainer.epsilon_high": 0.01, "trainer.importance_sampling_level": "sequence",
                 "trainer.scale_rewards": "none", "trainer.num_iterations": 0, "trainer.steps_per_generation": 0,
                 "trainer.mask_truncated_completions": True, "trainer.rewards": ["formt"],
                 "trainer.reward_weights": [1.0, 2.0], "trainer.format_pattern": "(", "trainer.length_target": -1,
                 "trainer.length_tolerance": -1, "trainer.answer_column": "", "trainer.answer_pattern": "(",
                 "trainer.json_schema": "/nonexistent.json", "trainer.tools": ["x:y"], "trainer.max_tool_calls": 0,
                 "trainer.teacher": "org/teacher", "trainer.generation": "vllm", "trainer.vllm_mode": "server",
                 "trainer.vllm_gpu_memory_utilization": 2.0, "logging.samples_steps": -1,
                 # packing: the method table's `packs` rows read it (and sft alone wraps)
                 "data.packing": True, "data.chunk_size": 64, "data.wrap_packed_sequences": True,
                 # sft's own: reasoning traces, the streamed packing buffer
                 "trainer.train_on_reasoning": False, "data.packing_buffer": 0}
UNREAD_CASES = [(key, m) for key in sorted({k for row in methods.METHODS.values() for k in row.reads})
                for m in methods.NAMES if not methods.reads(m, key)]


def test_every_method_specific_key_has_a_case():
    assert set(UNREAD_VALUES) == {k for row in methods.METHODS.values() for k in row.reads}


@pytest.mark.parametrize("key,trainer", UNREAD_CASES, ids=[f"{k}-{m}" for k, m in UNREAD_CASES])
def test_a_key_the_trainer_does_not_read_is_noted_never_refused(key, trainer):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    section, leaf = key.split(".")
    setattr(getattr(cfg, section), leaf, UNREAD_VALUES[key])
    assert not any(key in p.key for p in validate(cfg)), validate(cfg)
    notes = unused_keys(cfg)
    assert len(notes) == 1 and notes[0].startswith(f"{key}: ") and f"not used by the {trainer} trainer" in notes[0]
    assert f"(read by {', '.join(methods.readers(key))})" in notes[0]


def test_model_ref_on_sft_is_a_note_and_on_dpo_is_read():
    cfg = valid_cfg()
    cfg.trainer.model_ref = "org/reference"
    assert validate(cfg) == []
    assert unused_keys(cfg) == [
        "trainer.model_ref: org/reference is not used by the sft trainer (read by dpo, kto)"]
    cfg.trainer.name = "dpo"
    assert validate(cfg) == [] and unused_keys(cfg) == []


def test_merge_adapter_without_peft_is_a_note():
    cfg = valid_cfg()
    cfg.peft.merge_adapter = True
    assert validate(cfg) == []
    assert unused_keys(cfg) == ["peft.merge_adapter: ignored, there is no adapter to merge without peft.enabled=true"]
    cfg.peft.enabled = True
    assert validate(cfg) == [] and unused_keys(cfg) == []


# ---- the other rules

@pytest.mark.parametrize("lr", [0.0, -1e-5])
def test_lr_must_be_positive(lr):
    cfg = valid_cfg()
    cfg.training.lr = lr
    problems = keys_of(cfg)
    assert list(problems) == ["training.lr"]
    assert "greater than 0" in problems["training.lr"]


def test_quantization_without_peft():
    cfg = valid_cfg()
    cfg.quantization.mode = "int4"
    problems = keys_of(cfg)
    assert list(problems) == ["quantization.mode / peft.enabled"]
    assert "peft.enabled=true" in problems["quantization.mode / peft.enabled"]
    cfg.peft.enabled = True
    assert validate(cfg) == []


def test_bad_optimizer_name_with_suggestion():
    cfg = valid_cfg()
    cfg.training.optimizer = "adamw_torh"
    problems = keys_of(cfg)
    assert list(problems) == ["training.optimizer"]
    assert "Did you mean 'adamw_torch'?" in problems["training.optimizer"]


def test_bad_scheduler_name_with_suggestion():
    cfg = valid_cfg()
    cfg.training.scheduler = "cosin"
    problems = keys_of(cfg)
    assert list(problems) == ["training.scheduler"]
    assert "Did you mean 'cosine'?" in problems["training.scheduler"]


def test_chat_template_names_come_from_the_templates_module(tmp_path):
    for name in TEMPLATE_NAMES:
        cfg = valid_cfg()
        cfg.data.chat_template = name
        assert validate(cfg) == [], name
    cfg = valid_cfg()
    cfg.data.chat_template = "chatmll"
    problems = keys_of(cfg)
    assert list(problems) == ["data.chat_template"] and ", ".join(TEMPLATE_NAMES) in problems["data.chat_template"]
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{{ messages }}")
    cfg.data.chat_template = str(jinja)
    assert validate(cfg) == []


@pytest.mark.parametrize("setting,package,key", [
    (("quantization", "mode", "int4"), "bitsandbytes", "quantization.mode"),
    (("logging", "report_to", "tensorboard"), "tensorboard", "logging.report_to"),
    (("logging", "report_to", "wandb"), "wandb", "logging.report_to"),
    (("model", "gguf_file", "model.gguf"), "gguf", "model.gguf_file"),
])
def test_an_optional_package_is_needed_only_by_the_option_that_uses_it(monkeypatch, setting, package, key):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    cfg = valid_cfg()
    cfg.peft.enabled = True
    assert validate(cfg) == []  # the package is missing, but nothing here uses it
    section, leaf, value = setting
    setattr(getattr(cfg, section), leaf, value)
    found = [p for p in validate(cfg) if p.key == key]
    assert len(found) == 1 and f"pip install {package}" in found[0].message


def test_every_rule_reports_together():
    cfg = valid_cfg()
    cfg.data.block_size, cfg.model.max_length = 4096, 1024
    cfg.training.lr = 0
    cfg.quantization.mode = "int8"
    cfg.training.optimizer = "sgdd"
    cfg.data.chat_template = "no-such-template"
    assert set(keys_of(cfg)) == {"data.block_size / model.max_length", "training.lr",
                                 "quantization.mode / peft.enabled", "training.optimizer", "data.chat_template"}
