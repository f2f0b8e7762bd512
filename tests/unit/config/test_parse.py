"""The parser (launcher/config/parse.py): a dict to the typed schema, every problem at once, each with its key and
a did-you-mean; bad values left at their defaults so that checking goes on."""
import pytest

from launcher.config.parse import from_dict
from launcher.config.schema import RunConfig
from launcher.methods import NAMES


def test_all_problems_are_reported_together():
    data = {
        "training": {"lrr": 1e-4, "epochs": "three", "batch_size": 2.5},
        "data": {"block_size": True},
        "bogus_section": {"x": 1},
        "peft": {"enabled": "yes"},
    }
    cfg, problems = from_dict(RunConfig, data)
    keys = sorted(p.key for p in problems)
    assert keys == sorted(["training.lrr", "training.epochs", "training.batch_size", "data.block_size",
                           "bogus_section", "peft.enabled"])
    # Bad values are left at their defaults so that checking can go on.
    assert cfg.training.epochs == 1 and cfg.training.batch_size == 2
    assert cfg.data.block_size == -1 and cfg.peft.enabled is False


def test_good_values_next_to_bad_ones_are_kept():
    cfg, problems = from_dict(RunConfig, {"training": {"lr": 1e-4, "epochs": "x", "seed": 7}})
    assert [p.key for p in problems] == ["training.epochs"]
    assert cfg.training.lr == 1e-4 and cfg.training.seed == 7


@pytest.mark.parametrize("data,key,suggestion", [
    ({"training": {"lrr": 1e-4}}, "training.lrr", "training.lr"),
    ({"data": {"blok_size": 128}}, "data.blok_size", "data.block_size"),
    ({"projct_name": "x"}, "projct_name", "project_name"),
    ({"data": {"column_mapping": {"text_colum": "t"}}}, "data.column_mapping.text_colum",
     "data.column_mapping.text_column"),
])
def test_unknown_key_suggests_the_close_one(data, key, suggestion):
    _, problems = from_dict(RunConfig, data)
    assert len(problems) == 1
    assert problems[0].key == key
    assert "unknown key" in problems[0].message
    assert f"Did you mean '{suggestion}'?" in problems[0].message


def test_unknown_key_with_nothing_close_lists_the_known_keys():
    _, problems = from_dict(RunConfig, {"peft": {"zzzzzz": 1}})
    assert len(problems) == 1
    assert "Did you mean" not in problems[0].message
    for known in ("alpha", "dropout", "enabled", "r", "target_modules"):
        assert known in problems[0].message


def test_literal_rejected_with_allowed_values_and_suggestion():
    cfg, problems = from_dict(RunConfig, {"trainer": {"name": "dpp"}})
    assert len(problems) == 1
    p = problems[0]
    assert p.key == "trainer.name"
    assert ", ".join(NAMES) in p.message  # every method, in the order of launcher.methods
    assert "Did you mean 'dpo'?" in p.message
    assert cfg.trainer.name == "sft"


def test_literal_accepts_an_allowed_value():
    cfg, problems = from_dict(RunConfig, {"trainer": {"name": "orpo"}, "data": {"padding_side": "left"}})
    assert problems == []
    assert cfg.trainer.name == "orpo" and cfg.data.padding_side == "left"


def test_integer_literal_rejects_bool_and_string():
    _, problems = from_dict(RunConfig, {"distributed": {"zero_stage": True}})
    assert [p.key for p in problems] == ["distributed.zero_stage"]
    assert "1, 2, 3" in problems[0].message
    _, problems = from_dict(RunConfig, {"distributed": {"zero_stage": "3"}})
    assert [p.key for p in problems] == ["distributed.zero_stage"]
    cfg, problems = from_dict(RunConfig, {"distributed": {"zero_stage": 3}})
    assert problems == [] and cfg.distributed.zero_stage == 3


@pytest.mark.parametrize("key,section", [("epochs", "training"), ("batch_size", "training"),
                                          ("block_size", "data"), ("r", "peft")])
def test_bool_is_not_an_int(key, section):
    _, problems = from_dict(RunConfig, {section: {key: True}})
    assert [p.key for p in problems] == [f"{section}.{key}"]
    assert "whole number" in problems[0].message


def test_bool_is_not_a_float():
    _, problems = from_dict(RunConfig, {"training": {"lr": False}})
    assert [p.key for p in problems] == ["training.lr"]


def test_optional_int_rejects_bool_but_takes_null_and_int():
    _, problems = from_dict(RunConfig, {"data": {"max_completion_length": True}})
    assert [p.key for p in problems] == ["data.max_completion_length"]
    cfg, problems = from_dict(RunConfig, {"data": {"max_completion_length": None}})
    assert problems == [] and cfg.data.max_completion_length is None
    cfg, problems = from_dict(RunConfig, {"data": {"max_completion_length": 64}})
    assert problems == [] and cfg.data.max_completion_length == 64


@pytest.mark.parametrize("raw,expected", [("3e-5", 3e-5), ("1.0e-3", 1e-3), (2, 2.0), (5e-4, 5e-4)])
def test_float_accepts_yaml_1_1_strings_and_ints(raw, expected):
    cfg, problems = from_dict(RunConfig, {"training": {"lr": raw}})
    assert problems == []
    assert isinstance(cfg.training.lr, float)
    assert cfg.training.lr == pytest.approx(expected)


def test_float_rejects_non_numeric_string():
    _, problems = from_dict(RunConfig, {"training": {"lr": "fast"}})
    assert [p.key for p in problems] == ["training.lr"]
    assert "expected a number" in problems[0].message


@pytest.mark.parametrize("raw", [True, False, "auto"])
def test_union_bool_or_auto_accepts_both(raw):
    cfg, problems = from_dict(RunConfig, {"training": {"gradient_checkpointing": raw}})
    assert problems == []
    assert cfg.training.gradient_checkpointing == raw
    assert type(cfg.training.gradient_checkpointing) is type(raw)


@pytest.mark.parametrize("raw", ["yes", 1, "Auto", None])
def test_union_bool_or_auto_rejects_others(raw):
    _, problems = from_dict(RunConfig, {"training": {"gradient_checkpointing": raw}})
    assert [p.key for p in problems] == ["training.gradient_checkpointing"]
    assert "true/false" in problems[0].message and "auto" in problems[0].message


def test_section_that_is_not_a_mapping():
    _, problems = from_dict(RunConfig, {"training": 5, "peft": ["enabled"]})
    assert sorted(p.key for p in problems) == ["peft", "training"]
    assert all("expected a mapping" in p.message for p in problems)


def test_str_field_takes_numbers_as_text_but_not_bools():
    cfg, problems = from_dict(RunConfig, {"project_name": 2024})
    assert problems == [] and cfg.project_name == "2024"
    _, problems = from_dict(RunConfig, {"project_name": True})
    assert [p.key for p in problems] == ["project_name"]
