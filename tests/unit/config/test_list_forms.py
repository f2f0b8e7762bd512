"""The forms users type for a list-valued key: Hydra's `key=[a,b]`, a YAML list in a --config file, and the quoted
comma string `key='a,b'`; a bare `key=a,b` (a Hydra sweep) is one clear problem naming the forms that work."""
import pytest

from launcher.config.compose import compose, list_keys
from launcher.config.errors import ConfigError
from launcher.config.parse import field_docs, from_dict
from launcher.config.schema import PeftConfig, RunConfig
from tests.unit.helpers import get, write_yaml

BASE = ["recipe=sft/chat_tiny", "peft=lora"]
# Keys whose items are shell lines or #SBATCH options: a comma there belongs to the item.
LINE_LISTS = {"cluster.setup", "cluster.extra_directives"}


def nested(key: str, value) -> dict:
    """{"a": {"b": value}} for key "a.b"."""
    doc = value
    for part in reversed(key.split(".")):
        doc = {part: doc}
    return doc


def test_the_list_keys_are_the_ones_this_test_knows():
    assert list_keys() == {"peft.target_modules", "peft.modules_to_save", "trainer.loss_type",
                           "trainer.loss_weights", "cluster.container.mounts", "trainer.rewards",
                           "trainer.reward_weights", "trainer.tools", "data.datasets", "eval.tasks", *LINE_LISTS}


NUMBER_LISTS = {"trainer.loss_weights", "trainer.reward_weights"}
MAP_LISTS = {"data.datasets"}  # a list of sources, each a map: no comma form


@pytest.mark.parametrize("key", sorted(list_keys() - LINE_LISTS - NUMBER_LISTS - MAP_LISTS))
def test_every_list_of_names_takes_a_comma_string(key):
    cfg, problems = from_dict(RunConfig, nested(key, "first, second"))
    assert not problems, problems
    assert get(cfg, key) == ["first", "second"]


@pytest.mark.parametrize("key", sorted(LINE_LISTS))
def test_a_comma_inside_a_shell_line_stays(key):
    # (a guard for the comma strings above: it passes before them too, and fails if they split shell lines)
    cfg, problems = from_dict(RunConfig, nested(key, ["echo a,b"]))
    assert not problems and get(cfg, key) == ["echo a,b"]
    _, problems = from_dict(RunConfig, nested(key, "echo a,b"))
    assert [p.key for p in problems] == [key]  # a string is not split into lines


def test_loss_weights_from_a_comma_string_are_numbers():
    cfg, problems = from_dict(RunConfig, {"trainer": {"loss_weights": "0.8, 0.2", "reward_weights": "1, 0.5"}})
    assert not problems and cfg.trainer.loss_weights == [0.8, 0.2] and cfg.trainer.reward_weights == [1.0, 0.5]


def test_a_single_name_stays_text_where_text_is_allowed_and_is_a_list_where_not():
    cfg, problems = from_dict(RunConfig, {"trainer": {"loss_type": "ipo"}, "peft": {"modules_to_save": "lm_head"}})
    assert not problems
    assert cfg.trainer.loss_type == "ipo" and cfg.peft.modules_to_save == ["lm_head"]


@pytest.mark.parametrize("override", ["peft.target_modules=[q_proj,v_proj]", "peft.target_modules='q_proj,v_proj'",
                                      "peft.target_modules=' q_proj , v_proj '"])
def test_target_modules_from_the_command_line(override):
    cfg = compose(None, [*BASE, override]).config
    assert cfg.peft.target_modules == ["q_proj", "v_proj"]
    assert cfg.peft.target_list() == ["q_proj", "v_proj"]


def test_target_modules_as_a_yaml_list_in_a_config_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"peft": {"enabled": True, "target_modules": ["q_proj", "v_proj"]}})
    cfg = compose(path, ["recipe=sft/chat_tiny"]).config  # (a peft= group on the command line beats the file)
    assert cfg.peft.target_list() == ["q_proj", "v_proj"]


@pytest.mark.parametrize("value,peft_takes", [(["all-linear"], "all-linear"), (["q_proj"], ["q_proj"])])
def test_a_list_of_one_target_is_what_peft_takes(value, peft_takes):
    cfg, problems = from_dict(RunConfig, {"peft": {"target_modules": value}})
    assert not problems and cfg.peft.target_list() == peft_takes


def test_loss_type_from_a_quoted_comma_string():
    cfg = compose(None, ["recipe=sft/chat_tiny", "trainer.loss_type='sigmoid,sft'"]).config
    assert cfg.trainer.loss_type == ["sigmoid", "sft"]


def test_a_bare_comma_is_one_problem_that_shows_the_forms_that_work():
    with pytest.raises(ConfigError) as caught:
        compose(None, [*BASE, "peft.target_modules=q_proj,v_proj", "training.lrr=1"])
    problems = {p.key: p.message for p in caught.value.problems}
    assert set(problems) == {"peft.target_modules", "training.lrr"}  # the other problems are still found
    message = problems["peft.target_modules"]
    assert "peft.target_modules=[q_proj,v_proj]" in message
    assert "\"peft.target_modules='q_proj,v_proj'\"" in message
    assert "Ambiguous" not in message and "multirun" not in message


def test_a_bare_comma_in_a_text_key_suggests_only_quoting():
    with pytest.raises(ConfigError) as caught:
        compose(None, ["recipe=sft/chat_tiny", "cluster.container.workdir=a,b"])
    [problem] = caught.value.problems
    assert problem.key == "cluster.container.workdir"
    assert "\"cluster.container.workdir='a,b'\"" in problem.message and "[a,b]" not in problem.message


def test_the_docstring_explain_prints_shows_the_forms():
    doc = field_docs(PeftConfig)["target_modules"]
    assert "peft.target_modules=[q_proj,v_proj]" in doc and "\"peft.target_modules='q_proj,v_proj'\"" in doc
