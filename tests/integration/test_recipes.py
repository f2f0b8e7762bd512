"""Every shipped recipe composes, validates and plans as shipped, and carries the command that runs it."""
import pytest

from launcher import RECIPES_DIR
from launcher.config.compose import recipe_names
from launcher.hardware import Hardware
from launcher.embedded import smollm2_folder
from launcher.planning import make_plan

RECIPES = recipe_names()


def test_recipes_are_shipped():
    assert {"sft/chat_tiny", "sft/quickstart"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_plans_as_shipped(name, tmp_path, monkeypatch):
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    assert text.splitlines()[1].startswith("# Run: "), "the second line holds the command that runs the recipe"
    if "${embedded:smollm2}" in text:
        smollm2_folder()  # converted once and cached (~25 s the first time)
    monkeypatch.chdir(tmp_path)
    plan = make_plan(None, [f"recipe={name}"], Hardware())
    assert plan.cfg.trainer.name == name.split("/")[0]
    assert plan.data.train is not None and plan.data.train.rows
    assert not plan.blockers
