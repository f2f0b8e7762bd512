"""The methods table (launcher/methods.py) is the one list of trainers: the schema's choices, AutoTrain's tasks,
the formats each takes and the keys each reads derive from it, and every row has its trainer file. These tests
read the files (ast) instead of importing the trainers, which would import torch and trl."""
import ast
import importlib.util
import subprocess
import sys
import typing

import pytest

from launcher import RECIPES_DIR, methods
from launcher.config.parse import walk_fields
from launcher.config.schema import RunConfig, TrainerName
from launcher.data import formats
from launcher.methods import AUTOTRAIN_TASKS, METHODS, NAMES
from tests.conftest import REPO


def test_names_are_the_rows():
    assert NAMES == tuple(METHODS) and len(set(NAMES)) == len(NAMES)
    assert all(name == row.name for name, row in METHODS.items())
    assert set(NAMES) == {"sft", "default", "reward", "dpo", "orpo", "cpo", "simpo", "kto", "grpo", "rloo", "distill"}


def test_the_schemas_trainer_choices_are_the_methods():
    assert typing.get_args(TrainerName) == NAMES
    assert typing.get_type_hints(type(RunConfig().trainer))["name"] == TrainerName


def test_autotrain_tasks_cover_every_method():
    assert AUTOTRAIN_TASKS["llm"] is None  # task llm leaves the choice to params.trainer
    assert {t: AUTOTRAIN_TASKS[t] for t in ("llm-sft", "llm-dpo", "llm-orpo", "llm-reward", "llm-generic")} == {
        "llm-sft": "sft", "llm-dpo": "dpo", "llm-orpo": "orpo", "llm-reward": "reward", "llm-generic": "default"}
    assert set(AUTOTRAIN_TASKS.values()) - {None} <= set(NAMES)  # methods AutoTrain lacks (kto, cpo, simpo) have none
    for name, row in METHODS.items():
        assert all(AUTOTRAIN_TASKS[task] == name for task in row.autotrain_tasks)


def test_each_formats_trainers_derive_from_the_methods():
    known = {f.name for f in formats.FORMATS}
    for row in METHODS.values():
        assert row.formats and set(row.formats) <= known, row.name
    for fmt in formats.FORMATS:
        assert fmt.trainers == tuple(m.name for m in METHODS.values() if fmt.name in m.formats), fmt.name
    assert formats.BY_NAME["preference"].trainers == ("reward", "dpo", "orpo", "cpo", "simpo")
    assert formats.BY_NAME["unpaired"].trainers == formats.BY_NAME["unpaired_messages"].trainers == ("kto",)
    assert formats.BY_NAME["text"].trainers == ("sft", "default")
    assert formats.BY_NAME["prompt_only"].trainers == ("grpo", "rloo", "distill")
    assert not hasattr(formats, "PREFERENCE_TRAINERS")


def test_pairs_methods_take_pairs():
    for row in METHODS.values():
        pair_formats = {"preference", "reward_pair"} & set(row.formats)
        assert bool(pair_formats) == row.pairs, row.name
        assert row.needs
    assert [m.name for m in METHODS.values() if m.score_head] == ["reward"]
    assert [m.name for m in METHODS.values() if m.online] == ["grpo", "rloo", "distill"]


def test_the_keys_methods_read_are_schema_keys():
    keys = {key for key, *_ in walk_fields(RunConfig)}
    for row in METHODS.values():
        assert set(row.reads) <= keys, row.name
    assert methods.reads("dpo", "trainer.model_ref") and not methods.reads("orpo", "trainer.model_ref")
    assert methods.readers("data.max_prompt_length") == ["dpo", "orpo", "cpo", "simpo", "kto", "grpo", "rloo",
                                                         "distill"]
    assert methods.readers("trainer.rewards") == ["grpo", "rloo"]
    assert methods.readers("trainer.tools") == ["grpo", "distill"]  # trl's RLOOTrainer takes no tools
    assert methods.readers("trainer.train_on") == ["sft"]
    assert methods.readers("data.block_size") == []  # read by every method: not a method-specific key


@pytest.mark.parametrize("name", NAMES)
def test_every_method_has_a_trainer_file_with_train(name):
    spec = importlib.util.find_spec(f"launcher.trainers.{name}")
    assert spec is not None and spec.origin == str(REPO / "launcher" / "trainers" / f"{name}.py")
    tree = ast.parse(open(spec.origin).read())
    train = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert len(train) == 1, f"launcher/trainers/{name}.py has no top-level train()"
    assert [a.arg for a in train[0].args.args] == ["cfg", "run_dir", "resume_from"]
    assert ast.get_docstring(tree), f"launcher/trainers/{name}.py says what it trains in its docstring"


def test_no_trainer_file_without_a_method():
    # shared builders; sft's trainer class; online methods'; the pairwise trainers' padding-free packing
    support = {"__init__", "common", "sft_step", "online", "packed_pairs"}
    files = {p.stem for p in (REPO / "launcher" / "trainers").glob("*.py")} - support
    assert files == set(NAMES)


def test_every_recipe_folder_names_a_method_and_its_recipes_train_it():
    """Read from the recipe files (composing the quickstart's would convert the SmolLM2 GGUF): each recipe under
    recipes/<method>/ selects that trainer (the conf/config.yaml default, sft, when it names none)."""
    import yaml

    folders = {p.name for p in RECIPES_DIR.iterdir() if p.is_dir()}
    assert folders and folders <= set(NAMES)
    for recipe in RECIPES_DIR.glob("*/*.yaml"):
        doc = yaml.safe_load(recipe.read_text())
        chosen = [d["override /trainer"] for d in doc.get("defaults", []) if isinstance(d, dict)
                  and "override /trainer" in d]
        assert (chosen or ["sft"]) == [recipe.parent.name], recipe


def test_the_table_is_pure_data():
    """Importing the table (the plan does) imports no trainer and no torch; a row's module is imported on demand."""
    code = ("import sys, launcher.methods as m; assert 'torch' not in sys.modules, 'torch'; "
            "assert not [k for k in sys.modules if k.startswith('launcher.trainers.')], 'a trainer'")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
