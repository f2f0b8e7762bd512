"""The typed schema (launcher/config/schema.py): every section reachable, every leaf documented (what `tunelaunch
explain` prints), defaults that parse back, and choices that come from the tables they name."""
import dataclasses
import typing

import pytest

from launcher.config.parse import from_dict, walk_fields
from launcher.config.schema import DistributedConfig, RunConfig, TrainerName
from launcher.distributed.backends import BACKENDS
from launcher.methods import NAMES


def leaves():
    return list(walk_fields(RunConfig))


def test_walk_fields_reaches_every_section():
    keys = [key for key, *_ in leaves()]
    # Every section of RunConfig contributes leaves, and the well-known ones are there.
    sections = {key.split(".")[0] for key in keys if "." in key}
    hints = typing.get_type_hints(RunConfig)
    assert sections == {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    assert sections >= {"model", "data", "trainer", "training", "peft", "quantization", "precision",
                        "distributed", "logging", "hub"}
    for key in ("project_name", "model.name_or_path", "training.lr", "data.column_mapping.text_column",
                "distributed.zero_stage", "hub.token", "quantization.mode"):
        assert key in keys
    assert len(keys) == len(set(keys))
    assert len(keys) >= 60


@pytest.mark.parametrize("key,doc", [(key, doc) for key, _, _, doc in walk_fields(RunConfig)],
                         ids=[key for key, *_ in walk_fields(RunConfig)])
def test_every_leaf_field_is_documented(key, doc):
    assert isinstance(doc, str)
    assert doc.strip(), f"{key} has no docstring: `tunelaunch explain {key}` would print nothing"


def test_defaults_parse_back_without_problems():
    cfg, problems = from_dict(RunConfig, dataclasses.asdict(RunConfig()))
    assert problems == []
    assert cfg == RunConfig()

def test_trainer_choices_are_the_methods():
    assert typing.get_args(TrainerName) == NAMES
    assert RunConfig().trainer.name in NAMES


def test_backend_choices_are_auto_and_the_backend_rows():
    hints = typing.get_type_hints(DistributedConfig)
    assert set(typing.get_args(hints["backend"])) == {"auto", *BACKENDS}
