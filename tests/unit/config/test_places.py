"""Each problem named with the layer that set its key (launcher/config/places.py, errors.py, compose.py): the
command line, a line of the --config file, or the recipe."""
import pytest
import yaml

from launcher.config import places
from launcher.config.compose import compose
from launcher.config.errors import ConfigError, Problem, placed


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("HF_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def test_yaml_key_lines_gives_each_dotted_key_its_line():
    text = "task: llm-sft\n\nparams:\n  lr: 1e-4\n  # a comment\n  bogus: 3\n"
    assert places.yaml_key_lines(text) == {"task": 1, "params": 3, "params.lr": 4, "params.bogus": 6}
    assert places.yaml_key_lines("- a list\n") == {} and places.yaml_key_lines("a: [\n") == {}


def test_file_places_name_our_keys_through_the_origin(tmp_path):
    path = tmp_path / "at.yaml"
    path.write_text("task: llm-sft\nparams:\n  block_size: 7\n")
    found = places.file_places(path, "at.yaml", {"data.block_size": "params.block_size"})
    assert found["params.block_size"] == found["data.block_size"] == "at.yaml line 3"


def test_recipe_and_override_places(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "mine.yaml").write_text("training:\n  lr: 1e-4\n")
    assert places.recipe_places("sft/mine", tmp_path)["training.lr"] == "recipe sft/mine"
    assert places.override_places(["training.lr=1", "+peft.x=2", "~data.y", "recipe=sft/mine"]) == {
        "training.lr": "command line", "peft.x": "command line", "data.y": "command line",
        "recipe": "command line"}


def test_a_list_item_is_placed_where_its_list_is():
    assert places.place_of("peft.target_modules[1]", {"peft.target_modules": "c.yaml line 4"}) == "c.yaml line 4"


def test_the_report_names_each_problems_layer_and_no_single_file():
    err = ConfigError([Problem("training.learning_rate", "one"), Problem("data.block_size", "two"),
                       Problem("training.seed", "three")], "at.yaml", {"data.block_size": "params.block_size"},
                      {"training.learning_rate": "command line", "data.block_size": "at.yaml line 7"})
    assert err.report().splitlines() == [
        "3 problems in the configuration:",
        "  - [command line] training.learning_rate: one",
        "  - [at.yaml line 7] data.block_size (params.block_size): two",
        "  - training.seed: three",  # set by no layer the user wrote: nothing to point at
        "Nothing was started."]


def test_each_key_of_a_cross_field_problem_gives_its_own_layer_once():
    problem = Problem("data.block_size / model.max_length / training.lr", "m")
    places = {"data.block_size": "command line", "model.max_length": "c.yaml line 2", "training.lr": "command line"}
    assert placed(problem, places) == "[command line, c.yaml line 2] "
    assert placed(problem, {}) == ""


def compose_error(tmp_path, doc: dict | str, overrides=()) -> ConfigError:
    path = tmp_path / "at.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        compose("at.yaml", list(overrides))  # as the user types it: the report shows it so
    return info.value


def test_a_bad_override_is_not_reported_in_the_config_file(tmp_path):
    err = compose_error(tmp_path, {"task": "llm-sft", "base_model": "org/model", "params": {"lr": 1e-4}},
                        ["training.learning_rate=1e-4"])
    report = err.report()
    assert "in at.yaml" not in report
    assert "  - [command line] training.learning_rate: unknown key. Did you mean 'training.lr'?" in report


def test_a_bad_override_of_a_file_key_is_not_named_by_the_file(tmp_path):
    # params.lr sets training.lr, but the bad value is the command line's: the file's name would mislead.
    err = compose_error(tmp_path, {"task": "llm-sft", "base_model": "org/model", "params": {"lr": 1e-4}},
                        ["training.lr=abc"])
    assert "  - [command line] training.lr: got str 'abc'" in err.report()
    assert "params.lr" not in err.report()


def test_an_autotrain_problem_names_its_line(tmp_path):
    err = compose_error(tmp_path, "task: llm-sft\nbase_model: org/model\nparams:\n  lr: 1e-4\n  bogus: 3\n"
                                  "  block_size: abc\n")
    report = err.report()
    assert "  - [at.yaml line 5] params.bogus: unknown" in report
    assert "  - [at.yaml line 6] data.block_size (params.block_size): got str 'abc'" in report


def test_a_bad_value_in_our_own_file_names_its_line(tmp_path):
    err = compose_error(tmp_path, "project_name: p\ntraining:\n  lr: abc\n")
    assert "  - [at.yaml line 3] training.lr: got str 'abc', expected a number" in err.report()
