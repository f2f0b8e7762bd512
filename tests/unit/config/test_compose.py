"""Composition (launcher/config/compose.py): schema defaults, conf/ groups, recipes, the --config file and
command-line overrides, lowest first; and every mistyped key, option or recipe named at once."""
from pathlib import Path

import pytest

from launcher.config.compose import compose, group_options, recipe_names
from launcher.config.errors import ConfigError
from launcher.methods import NAMES
from tests.unit.helpers import get, write_yaml


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("HF_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def problems_of(err: ConfigError) -> dict:
    return {p.key: p.message for p in err.problems}


def test_conf_defaults():
    cfg = compose(None, []).config
    assert cfg.trainer.name == "sft"  # conf/config.yaml: trainer: sft (the schema's default too)
    assert cfg.peft.enabled is False and cfg.quantization.mode == "none"
    assert cfg.precision.mixed_precision == "auto" and cfg.distributed.backend == "auto"
    assert cfg.logging.report_to == "none"
    assert cfg.training.lr == 3e-5 and cfg.training.max_steps == -1 and cfg.data.chat_template == "none"


@pytest.fixture
def native_file(tmp_path):
    return write_yaml(tmp_path / "native.yaml", {
        "project_name": "from-file",
        "training": {"lr": 5.0e-4, "batch_size": 4},
        "data": {"chat_template": "zephyr"},
    })


def test_precedence_defaults_recipe_file_cli(native_file):
    recipe = "recipe=sft/chat_tiny"
    base = compose(None, []).config
    with_recipe = compose(None, [recipe]).config
    with_file = compose(native_file, [recipe]).config
    with_cli = compose(native_file, [recipe, "training.lr=2e-4", "project_name=from-cli"]).config

    # the recipe beats the defaults
    assert (base.training.lr, base.training.max_steps, base.data.chat_template) == (3e-5, -1, "none")
    assert (with_recipe.training.lr, with_recipe.training.max_steps, with_recipe.data.chat_template) == (
        1e-3, 10, "chatml")
    assert with_recipe.project_name == "runs/sft-chat-tiny"
    assert Path(with_recipe.model.name_or_path, "config.json").is_file()  # ${embedded:tiny}
    # the file beats the recipe; what the file does not set stays the recipe's
    assert (with_file.training.lr, with_file.data.chat_template, with_file.project_name) == (
        5e-4, "zephyr", "from-file")
    assert with_file.training.max_steps == 10 and with_file.data.valid_split == "valid"
    assert with_file.training.batch_size == 4
    # the command line beats the file; the rest of the file stays
    assert (with_cli.training.lr, with_cli.project_name) == (2e-4, "from-cli")
    assert with_cli.data.chat_template == "zephyr" and with_cli.training.batch_size == 4
    assert with_cli.training.max_steps == 10
    # untouched everywhere: the schema default
    assert base.training.seed == with_recipe.training.seed == with_file.training.seed == with_cli.training.seed == 42


def test_cli_override_beats_autotrain_file(tmp_path):
    path = write_yaml(tmp_path / "at.yaml", {"task": "llm-sft", "base_model": "org/model",
                                             "params": {"lr": 5e-4, "epochs": 3}})
    cfg = compose(path, ["training.lr=2e-4"]).config
    assert cfg.training.lr == 2e-4 and cfg.training.epochs == 3


@pytest.mark.parametrize("override,key,expected", [
    ("trainer=dpo", "trainer.name", "dpo"),
    ("precision=bf16", "precision.mixed_precision", "bf16"),
    ("peft=lora", "peft.enabled", True),
])
def test_cli_group_override_beats_native_config_file(override, key, expected, tmp_path):
    """The CLI is the last layer: a group chosen there wins over the same setting in the --config file."""
    path = write_yaml(tmp_path / "native.yaml", {"trainer": {"name": "sft"},
                                                 "precision": {"mixed_precision": "fp16"},
                                                 "peft": {"enabled": False}})
    assert get(compose(path, [override]).config, key) == expected


def test_cli_qlora_override_beats_autotrain_file(tmp_path):
    """peft=qlora on the command line must give QLoRA, not LoRA with the file's implicit quantization none."""
    path = write_yaml(tmp_path / "at.yaml", {"task": "llm-sft", "base_model": "org/model"})
    cfg = compose(path, ["peft=qlora"]).config
    assert cfg.peft.enabled is True
    assert cfg.quantization.mode == "int4"


@pytest.mark.parametrize("override,checks", [
    ("trainer=dpo", {"trainer.name": "dpo"}),
    ("trainer=orpo", {"trainer.name": "orpo"}),
    ("peft=qlora", {"peft.enabled": True, "quantization.mode": "int4"}),
    ("peft=lora", {"peft.enabled": True, "quantization.mode": "none"}),
    ("distributed=zero3", {"distributed.backend": "deepspeed", "distributed.zero_stage": 3}),
    ("distributed=none", {"distributed.backend": "none", "distributed.num_processes": 1}),
    ("precision=fp16", {"precision.mixed_precision": "fp16"}),
    ("logger=tensorboard", {"logging.report_to": "tensorboard"}),
])
def test_group_overrides(override, checks):
    cfg = compose(None, [override]).config
    for key, expected in checks.items():
        assert get(cfg, key) == expected, key


def test_native_file_problems_are_named_by_key(tmp_path):
    path = write_yaml(tmp_path / "native.yaml", {"trainng": {"lr": 1}, "training": {"epochs": "x"}})
    with pytest.raises(ConfigError) as err:
        compose(path, [])
    problems = problems_of(err.value)
    assert set(problems) == {"trainng", "training.epochs"}
    assert "Did you mean 'training'?" in problems["trainng"]


@pytest.mark.parametrize("value", [5, "fast", ["lr", "epochs"]])
def test_native_file_section_that_is_not_a_mapping_is_named(value, tmp_path):
    """`training: 5` (or a list) must be reported against `training`, with the reason, like every other problem."""
    path = write_yaml(tmp_path / "native.yaml", {"training": value})
    with pytest.raises(ConfigError) as err:
        compose(path, [])
    keys = [p.key.rstrip(".") for p in err.value.problems]
    assert keys == ["training"]
    assert "mapping" in err.value.problems[0].message


def test_native_file_trainer_name_selects_the_group(tmp_path):
    path = write_yaml(tmp_path / "native.yaml", {"trainer": {"name": "dpo", "beta": 0.3}})
    cfg = compose(path, []).config
    assert cfg.trainer.name == "dpo" and cfg.trainer.beta == 0.3


def test_group_and_recipe_listings():
    assert group_options("trainer") == sorted(NAMES)  # one conf/trainer/ option per method
    assert group_options("trainer") == ["cpo", "default", "distill", "dpo", "grpo", "kto", "orpo", "reward", "rloo",
                                        "sft", "simpo"]
    assert "sft/chat_tiny" in recipe_names()


def test_unknown_group_option_has_did_you_mean():
    with pytest.raises(ConfigError) as err:
        compose(None, ["trainer=dpp"])
    problems = problems_of(err.value)
    assert list(problems) == ["trainer"]
    assert "dpp" in problems["trainer"] and "Did you mean 'dpo'?" in problems["trainer"]


def test_unknown_recipe_has_did_you_mean():
    with pytest.raises(ConfigError) as err:
        compose(None, ["recipe=sft/chat_tinny"])
    problems = problems_of(err.value)
    assert list(problems) == ["recipe"]
    assert "Did you mean 'sft/chat_tiny'?" in problems["recipe"]


def test_unknown_override_keys_have_did_you_mean():
    with pytest.raises(ConfigError) as err:
        compose(None, ["training.lrr=1e-4", "trainning.epochs=2"])
    problems = problems_of(err.value)
    assert "Did you mean 'training.lr'?" in problems["training.lrr"]
    assert "Did you mean 'training.epochs'?" in problems["trainning.epochs"]


def test_several_bad_overrides_give_all_problems_at_once():
    with pytest.raises(ConfigError) as err:
        compose(None, ["training.lrr=1e-4", "data.blok_size=128", "trainer=dpp", "recipe=nope/none",
                       "training.epochs=three", "peft.enabled=maybe", "training.batch_size=4"])
    problems = problems_of(err.value)
    assert set(problems) == {"training.lrr", "data.blok_size", "trainer", "recipe", "training.epochs",
                             "peft.enabled"}
    report = err.value.report()
    assert report.startswith("6 problems in the configuration")
    assert report.rstrip().endswith("Nothing was started.")


def test_collect_returns_the_problems_instead_of_raising():
    composed = compose(None, ["training.epochs=three"], collect=True)
    assert [p.key for p in composed.problems] == ["training.epochs"]
    assert composed.config.training.epochs == 1  # the bad value left at its default so checking goes on
