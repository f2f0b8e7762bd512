"""AutoTrain compatibility (launcher/config/autotrain.py), checked against AutoTrain's own documentation.

The 48 LLMTrainingParams names and defaults below are copied by hand from the AutoTrain docs page
"LLM Finetuning with AutoTrain Advanced" (class autotrain.trainers.clm.params.LLMTrainingParams, "Expand 48
parameters"), NOT read from our PARAMS table: the test would otherwise only compare the table with itself.
"""
import dataclasses

import pytest
import yaml

from launcher.config.autotrain import PARAMS, expand_env, training_params, translate
from launcher.config.compose import compose, load_config_file
from launcher.config.errors import ConfigError
from launcher.config.parse import from_dict
from launcher.config.schema import REDACTED, RunConfig
from launcher.methods import AUTOTRAIN_TASKS
from tests.unit.helpers import SAMPLES, SEED_CONFIG

# (name, documented default), in the documented order.
AUTOTRAIN_DOCUMENTED = [
    ("model", "gpt2"),
    ("project_name", "project-name"),
    ("data_path", "data"),
    ("train_split", "train"),
    ("valid_split", None),
    ("add_eos_token", True),
    ("block_size", -1),
    ("model_max_length", 2048),
    ("padding", "right"),
    ("trainer", "default"),
    ("use_flash_attention_2", False),
    ("log", "none"),
    ("disable_gradient_checkpointing", False),
    ("logging_steps", -1),
    ("eval_strategy", "epoch"),
    ("save_total_limit", 1),
    ("auto_find_batch_size", False),
    ("mixed_precision", None),
    ("lr", 3e-5),
    ("epochs", 1),
    ("batch_size", 2),
    ("warmup_ratio", 0.1),
    ("gradient_accumulation", 4),
    ("optimizer", "adamw_torch"),
    ("scheduler", "linear"),
    ("weight_decay", 0.0),
    ("max_grad_norm", 1.0),
    ("seed", 42),
    ("chat_template", None),
    ("quantization", "int4"),
    ("target_modules", "all-linear"),
    ("merge_adapter", False),
    ("peft", False),
    ("lora_r", 16),
    ("lora_alpha", 32),
    ("lora_dropout", 0.05),
    ("model_ref", None),
    ("dpo_beta", 0.1),
    ("max_prompt_length", 128),
    ("max_completion_length", None),
    ("prompt_text_column", None),
    ("text_column", "text"),
    ("rejected_text_column", None),
    ("push_to_hub", False),
    ("username", None),
    ("token", None),
    ("unsloth", False),
    ("distributed_backend", None),
]
AUTOTRAIN_NAMES = [name for name, _ in AUTOTRAIN_DOCUMENTED]

# The config.yaml example of the same page (ORPO on Llama 3): tests.unit.helpers.SEED_CONFIG.


def write(tmp_path, doc, name="config.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def compose_doc(tmp_path, doc, overrides=()):
    return compose(write(tmp_path, doc), list(overrides))


def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("HF_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(var, raising=False)


# (a) the table against the documentation ------------------------------------------------------------------

def test_documented_list_is_48_unique_names():
    assert len(AUTOTRAIN_DOCUMENTED) == 48
    assert len(set(AUTOTRAIN_NAMES)) == 48


def test_params_table_matches_the_documentation_in_order():
    assert [(p.name, p.default) for p in PARAMS] == AUTOTRAIN_DOCUMENTED


def test_params_table_default_types_match_the_documentation():
    # 3e-5 == 3e-05 either way, but a default documented as 1 must not be True, 0.0 not False, etc.
    for p, (name, default) in zip(PARAMS, AUTOTRAIN_DOCUMENTED):
        assert type(p.default) is type(default), name


# (b) each of the 48 parameters lands on the right native key --------------------------------------------

# name -> (non-default AutoTrain value, native key, expected native value, extra params the case needs)
CASES = {
    "model": ("org/other-model", "model.name_or_path", "org/other-model", {}),
    "project_name": ("my-run", "project_name", "my-run", {}),
    "data_path": ("some/folder", "data.path", "some/folder", {}),
    "train_split": ("training", "data.train_split", "training", {}),
    "valid_split": ("valid", "data.valid_split", "valid", {}),
    "add_eos_token": (False, "data.add_eos_token", False, {}),
    "block_size": (256, "data.block_size", 256, {}),
    "model_max_length": (4096, "model.max_length", 4096, {}),
    "padding": ("left", "data.padding_side", "left", {}),
    "trainer": ("dpo", "trainer.name", "dpo", {}),
    "use_flash_attention_2": (True, "model.attn_implementation", "flash_attention_2", {}),
    "log": ("tensorboard", "logging.report_to", "tensorboard", {}),
    "disable_gradient_checkpointing": (True, "training.gradient_checkpointing", False, {}),
    "logging_steps": (10, "logging.steps", 10, {}),
    "eval_strategy": ("steps", "training.eval_strategy", "steps", {}),
    "save_total_limit": (3, "training.save_total_limit", 3, {}),
    "auto_find_batch_size": (True, "training.auto_find_batch_size", True, {}),
    "mixed_precision": ("none", "precision.mixed_precision", "fp32", {}),
    "lr": (1e-4, "training.lr", 1e-4, {}),
    "epochs": (3, "training.epochs", 3, {}),
    "batch_size": (8, "training.batch_size", 8, {}),
    "warmup_ratio": (0.05, "training.warmup_ratio", 0.05, {}),
    "gradient_accumulation": (2, "training.gradient_accumulation", 2, {}),
    "optimizer": ("adamw_torch_fused", "training.optimizer", "adamw_torch_fused", {}),
    "scheduler": ("cosine", "training.scheduler", "cosine", {}),
    "weight_decay": (0.01, "training.weight_decay", 0.01, {}),
    "max_grad_norm": (0.5, "training.max_grad_norm", 0.5, {}),
    "seed": (7, "training.seed", 7, {}),
    "chat_template": ("chatml", "data.chat_template", "chatml", {}),
    "quantization": ("int8", "quantization.mode", "int8", {"peft": True}),
    "target_modules": ("q_proj,v_proj", "peft.target_modules", ["q_proj", "v_proj"], {}),
    "merge_adapter": (True, "peft.merge_adapter", True, {}),
    "peft": (True, "peft.enabled", True, {}),
    "lora_r": (8, "peft.r", 8, {}),
    "lora_alpha": (64, "peft.alpha", 64, {}),
    "lora_dropout": (0.1, "peft.dropout", 0.1, {}),
    "model_ref": ("org/ref-model", "trainer.model_ref", "org/ref-model", {}),
    "dpo_beta": (0.25, "trainer.beta", 0.25, {}),
    "max_prompt_length": (256, "data.max_prompt_length", 256, {}),
    "max_completion_length": (64, "data.max_completion_length", 64, {}),
    "prompt_text_column": ("prompt", "data.column_mapping.prompt_text_column", "prompt", {}),
    "text_column": ("chosen", "data.column_mapping.text_column", "chosen", {}),
    "rejected_text_column": ("rejected", "data.column_mapping.rejected_text_column", "rejected", {}),
    "push_to_hub": (True, "hub.push_to_hub", True, {}),
    "username": ("alice", "hub.username", "alice", {}),
    "token": ("hf_case_token_value", "hub.token", "hf_case_token_value", {}),
    "unsloth": (True, None, None, {}),  # a note, nothing set
    "distributed_backend": ("deepspeed", "distributed.backend", "deepspeed", {}),
}


def test_cases_cover_all_48_documented_parameters():
    assert sorted(CASES) == sorted(AUTOTRAIN_NAMES)
    for name, default in AUTOTRAIN_DOCUMENTED:
        assert CASES[name][0] != default, f"{name}: the case must use a non-default value"


def typed(doc: dict):
    """translate() then the schema's typing, as compose does (without the Hydra layers, tested below)."""
    t = translate(doc)
    cfg, problems = from_dict(RunConfig, t.values)
    assert t.problems == [] and problems == []
    return cfg, t


# The value training_params writes back for the CASES input, where it differs from the input.
BACK = {"mixed_precision": None, "token": REDACTED, "unsloth": False}


@pytest.mark.parametrize("name", AUTOTRAIN_NAMES)
def test_each_parameter_lands_on_its_native_key(name):
    value, key, expected, extra = CASES[name]
    cfg, t = typed({"backend": "local", "params": {**extra, name: value}})
    baseline, _ = typed({"backend": "local", "params": {}})
    back = training_params(cfg)
    assert list(back) == AUTOTRAIN_NAMES
    assert back[name] == BACK.get(name, value), f"{name} does not round-trip through training_params"
    if key is None:  # unsloth: nothing changes, and the user is told
        assert cfg == baseline
        assert t.values == translate({"params": {}}).values
        assert any("unsloth" in note and "ignored" in note for note in t.notes)
        return
    got = get(cfg, key)
    assert got == expected and type(got) is type(expected), f"{name} -> {key}: {got!r}"
    assert get(baseline, key) != expected  # the value really came from the file
    assert t.origin[key] == f"params.{name}"


def test_all_48_parameters_at_once_through_compose(tmp_path):
    """One file setting every parameter to a non-default value, composed end to end (Hydra included)."""
    params = {name: case[0] for name, case in CASES.items()}
    composed = compose_doc(tmp_path, {"backend": "local", "params": params})
    cfg = composed.config
    for name, (value, key, expected, _) in CASES.items():
        if key is not None:
            got = get(cfg, key)
            assert got == expected and type(got) is type(expected), f"{name} -> {key}: {got!r}"
            if key != "hub.token":
                assert composed.origin[key] == f"params.{name}"
    assert any("unsloth" in note for note in composed.notes)
    back = training_params(cfg)
    assert list(back) == AUTOTRAIN_NAMES
    assert back == {name: BACK.get(name, case[0]) for name, case in CASES.items()}


def test_use_flash_attention_2_false_keeps_auto(tmp_path):
    cfg = compose_doc(tmp_path, {"params": {"use_flash_attention_2": False}}).config
    assert cfg.model.attn_implementation == "auto"


def test_disable_gradient_checkpointing_false_keeps_auto(tmp_path):
    cfg = compose_doc(tmp_path, {"params": {"disable_gradient_checkpointing": False}}).config
    assert cfg.training.gradient_checkpointing == "auto"


@pytest.mark.parametrize("value,expected", [("none", "fp32"), ("no", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"),
                                            (None, "auto")])
def test_mixed_precision_values(value, expected):
    cfg, _ = typed({"params": {"mixed_precision": value}})
    assert cfg.precision.mixed_precision == expected


def test_quantization_needs_peft_true_to_apply(tmp_path):
    cfg = compose_doc(tmp_path, {"params": {"peft": True, "quantization": "int8"}}).config
    assert cfg.peft.enabled is True and cfg.quantization.mode == "int8"


def test_token_becomes_hub_token(tmp_path):
    cfg = compose_doc(tmp_path, {"params": {"token": "hf_param_token"}}).config
    assert cfg.hub.token == "hf_param_token"
    cfg = compose_doc(tmp_path, {"hub": {"token": "hf_hub_token"}, "backend": "local"}).config
    assert cfg.hub.token == "hf_hub_token"


@pytest.mark.parametrize("task,trainer", [("llm-dpo", "dpo"), ("llm-orpo", "orpo"), ("llm-sft", "sft"),
                                          ("llm-reward", "reward"), ("llm-generic", "default"), ("llm", "default")])
def test_task_picks_the_trainer_group(task, trainer, tmp_path):
    path = write(tmp_path, {"task": task, "base_model": "org/model"})
    assert load_config_file(path).groups["trainer"] == trainer
    if task == "llm-dpo":  # one of them end to end
        assert compose(path).config.trainer.name == "dpo"


def test_the_tasks_are_those_of_the_methods_table():
    assert set(AUTOTRAIN_TASKS) == {"llm", "llm-generic", "llm-sft", "llm-reward", "llm-dpo", "llm-orpo"}


def test_task_llm_takes_the_trainer_from_params(tmp_path):
    path = write(tmp_path, {"task": "llm", "base_model": "org/model", "params": {"trainer": "orpo"}})
    assert compose(path).config.trainer.name == "orpo"


def test_unknown_task_is_an_error_with_suggestion(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"task": "llm-dop", "base_model": "org/model"})
    problems = {p.key: p.message for p in err.value.problems}
    assert "task" in problems and "llm-dpo" in problems["task"]


def test_a_misspelt_task_is_a_bad_value_not_an_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"task": "llm-stf", "base_model": "org/model"})
    message = {p.key: p.message for p in err.value.problems}["task"]
    assert "unknown key" not in message
    assert message.startswith("unknown value 'llm-stf'. Allowed values: ")
    assert all(task in message for task in AUTOTRAIN_TASKS) and message.endswith("Did you mean 'llm-sft'?")


def test_another_tools_name_in_params_is_answered_with_autotrains(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"task": "llm-sft", "params": {"learning_rate": 1e-4, "num_train_epochs": 2}})
    problems = {p.key: p.message for p in err.value.problems}
    assert problems["params.learning_rate"] == "unknown key. Did you mean 'lr'?"
    assert problems["params.num_train_epochs"] == "unknown key. Did you mean 'epochs'?"


def test_a_parameter_written_at_the_top_level_is_pointed_under_params(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"task": "llm-sft", "lr": 1e-4, "learning_rate": 1e-4, "tsk": "llm-sft"})
    problems = {p.key: p.message for p in err.value.problems}
    assert problems["lr"] == "unknown at the top level. Did you mean 'params.lr'?"
    assert problems["learning_rate"] == "unknown key. Did you mean 'params.lr'?"
    assert problems["tsk"] == "unknown key. Did you mean 'task'?"  # a misspelt file key stays one


def test_block_size_list_of_one_and_of_several(tmp_path):
    cfg = compose_doc(tmp_path, {"params": {"block_size": [512]}}).config
    assert cfg.data.block_size == 512
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"params": {"block_size": [256, 512]}})
    assert [p.key for p in err.value.problems] == ["params.block_size"]


def test_seed_example_translates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_USERNAME", "alice")
    monkeypatch.setenv("HF_TOKEN", "hf_seed_example_token")
    composed = compose(write(tmp_path, SEED_CONFIG))
    cfg = composed.config
    assert cfg.trainer.name == "orpo"
    assert cfg.model.name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert cfg.project_name == "autotrain-llama3-8b-orpo"
    assert cfg.logging.report_to == "tensorboard"
    assert cfg.data.path == "argilla/distilabel-capybara-dpo-7k-binarized"
    assert cfg.data.valid_split is None and cfg.data.chat_template == "chatml"
    assert dataclasses.asdict(cfg.data.column_mapping) == {
        "text_column": "chosen", "rejected_text_column": "rejected", "prompt_text_column": "prompt",
        "label_column": None, "roles": {}}
    assert (cfg.data.block_size, cfg.model.max_length, cfg.data.max_prompt_length) == (1024, 8192, 512)
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.lr) == (3, 2, 3e-5)
    assert cfg.peft.enabled is True and cfg.quantization.mode == "int4"
    assert cfg.peft.target_modules == "all-linear" and cfg.data.padding_side == "right"
    assert (cfg.training.optimizer, cfg.training.scheduler, cfg.training.gradient_accumulation) == (
        "adamw_torch", "linear", 4)
    assert cfg.precision.mixed_precision == "fp16"
    assert (cfg.hub.username, cfg.hub.token, cfg.hub.push_to_hub) == ("alice", "hf_seed_example_token", True)


# (c) training_params: the run in AutoTrain's names ------------------------------------------------------

def test_training_params_of_default_config_has_exactly_the_48_names():
    cfg = compose(None, []).config
    out = training_params(cfg)
    assert list(out) == AUTOTRAIN_NAMES
    assert out["token"] is None
    assert out["lr"] == 3e-5 and out["epochs"] == 1 and out["seed"] == 42
    assert out["peft"] is False and out["quantization"] is None  # no quantization without peft
    assert out["unsloth"] is False


def test_training_params_redacts_the_token(tmp_path):
    secret = "hf_do_not_write_me_0123456789"
    cfg = compose(None, [f"hub.token={secret}"]).config
    assert cfg.hub.token == secret
    out = training_params(cfg)
    assert out["token"] == REDACTED
    assert secret not in repr(out)
    assert cfg.hub.token == secret  # redacting did not change the run's config


# (d) env expansion, backends, unknown keys, conflicts, quantization/peft ---------------------------------

def test_env_expansion_set_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_TEST_USER", "bob")
    monkeypatch.setenv("TL_TEST_DIR", "/data/x")
    composed = compose_doc(tmp_path, {"backend": "local", "hub": {"username": "${TL_TEST_USER}"},
                                      "data": {"path": "${TL_TEST_DIR}/sub"}})
    assert composed.config.hub.username == "bob"
    assert composed.config.data.path == "/data/x/sub"
    assert not any("TL_TEST_USER" in n for n in composed.notes)


def test_env_expansion_unset_variable_is_null_with_a_note(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_TEST_UNSET_VAR", raising=False)
    composed = compose_doc(tmp_path, {"backend": "local", "hub": {"username": "${TL_TEST_UNSET_VAR}"}})
    assert composed.config.hub.username is None
    assert any("TL_TEST_UNSET_VAR" in n and "hub.username" in n for n in composed.notes)


def test_expand_env_reports_unset_paths(monkeypatch):
    monkeypatch.delenv("TL_NOPE", raising=False)
    monkeypatch.setenv("TL_YES", "1")
    unset = []
    out = expand_env({"a": {"b": "${TL_NOPE}", "c": "${TL_YES}"}, "d": 5}, "", unset)
    assert out == {"a": {"b": None, "c": "1"}, "d": 5}
    assert unset == [("a.b", "TL_NOPE")]


def test_unsupported_backend_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"backend": "spaces-a10g-large", "base_model": "org/model"})
    problems = {p.key: p.message for p in err.value.problems}
    assert list(problems) == ["backend"]
    assert "spaces-a10g-large" in problems["backend"]
    assert "backend: local" in problems["backend"]


@pytest.mark.parametrize("backend", ["local", "local-cli"])
def test_local_backends_are_accepted(backend, tmp_path):
    assert compose_doc(tmp_path, {"backend": backend, "base_model": "org/m"}).config.model.name_or_path == "org/m"


def test_unknown_params_key_gets_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"base_model": "org/model", "params": {"lerning_rate": 1, "epochz": 2}})
    problems = {p.key: p.message for p in err.value.problems}
    assert set(problems) == {"params.lerning_rate", "params.epochz"}
    assert "Did you mean 'epochs'?" in problems["params.epochz"]
    assert "unknown" in problems["params.lerning_rate"]


def test_unknown_top_level_and_section_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"base_model": "org/model", "tsk": "llm-sft",
                               "data": {"pth": "x"}, "hub": {"tokn": "y"}})
    problems = {p.key: p.message for p in err.value.problems}
    assert set(problems) == {"tsk", "data.pth", "hub.tokn"}
    assert "Did you mean 'task'?" in problems["tsk"]
    assert "Did you mean 'path'?" in problems["data.pth"]
    assert "Did you mean 'token'?" in problems["hub.tokn"]


def test_same_value_in_two_places_is_a_conflict(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"base_model": "org/model", "data": {"path": "dir_a"},
                               "params": {"data_path": "dir_b"}})
    assert len(err.value.problems) == 1
    text = str(err.value.problems[0])
    assert "data.path" in text and "params.data_path" in text
    assert "conflict" in text and "dir_a" in text and "dir_b" in text


def test_same_key_twice_with_equal_values_is_fine(tmp_path):
    cfg = compose_doc(tmp_path, {"base_model": "org/model", "data": {"path": "dir_a"},
                                 "params": {"data_path": "dir_a", "model": "org/model"}}).config
    assert cfg.data.path == "dir_a" and cfg.model.name_or_path == "org/model"


def test_base_model_and_params_model_conflict(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"base_model": "org/a", "params": {"model": "org/b"}})
    text = str(err.value.problems[0])
    assert "base_model" in text and "params.model" in text


def test_quantization_without_peft_is_ignored_with_a_note(tmp_path):
    composed = compose_doc(tmp_path, {"base_model": "org/model", "params": {"quantization": "int4", "peft": False}})
    assert composed.config.quantization.mode == "none"
    assert composed.config.peft.enabled is False
    assert any("params.quantization" in n and "ignored" in n for n in composed.notes)


def test_autotrain_default_quantization_without_peft_is_silent(tmp_path):
    composed = compose_doc(tmp_path, {"base_model": "org/model"})
    assert composed.config.quantization.mode == "none"
    assert not any("quantization" in n for n in composed.notes)


def test_peft_without_quantization_gets_autotrain_default_int4(tmp_path):
    composed = compose_doc(tmp_path, {"base_model": "org/model", "params": {"peft": True}})
    assert composed.config.peft.enabled is True
    assert composed.config.quantization.mode == "int4"
    assert any("int4" in n and "quantization" in n for n in composed.notes)


@pytest.mark.parametrize("value", [None, "none"])
def test_peft_with_quantization_off_is_plain_lora(value, tmp_path):
    composed = compose_doc(tmp_path, {"base_model": "org/model", "params": {"peft": True, "quantization": value}})
    assert composed.config.peft.enabled is True
    assert composed.config.quantization.mode == "none"


def test_all_problems_of_a_file_come_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_doc(tmp_path, {"backend": "spaces-a10g-large", "task": "llm-sft", "base_model": "org/model",
                               "params": {"lrr": 1, "epochs": "three", "padding": "middle"}})
    keys = [p.key for p in err.value.problems]
    assert "backend" in keys and "params.lrr" in keys
    assert "training.epochs" in keys and "data.padding_side" in keys
    report = err.value.report()
    # Type errors are named with the key the user wrote.
    assert "training.epochs (params.epochs)" in report
    assert "data.padding_side (params.padding)" in report
    assert report.startswith(f"{len(keys)} problems")


# ---- the hosted API's batch form (003): a global train_batch_size of micro_batch_size per device

def test_hosted_batch_names_give_a_global_batch_and_derive_the_accumulation(tmp_path):
    from launcher.hardware import Hardware
    from launcher.planning import make_plan

    from launcher.embedded import build_tiny_llama

    doc = {"task": "llm-sft", "backend": "local", "base_model": str(build_tiny_llama()),
           "project_name": str(tmp_path / "run"), "data": {"path": str(SAMPLES / "chat"), "chat_template": "chatml"},
           "params": {"train_batch_size": 16, "micro_batch_size": 2}}
    composed = compose_doc(tmp_path, doc)
    assert (composed.config.training.global_batch_size, composed.config.training.batch_size) == (16, 2)
    plan = make_plan(str(write(tmp_path, doc)), ["distributed.num_processes=2", "distributed=ddp"], Hardware())
    assert plan.cfg.training.gradient_accumulation == 4  # 16 = 2 per device x 2 processes x 4


def test_an_indivisible_hosted_batch_is_a_plan_error_in_the_files_words(tmp_path):
    from launcher.hardware import Hardware
    from launcher.planning import make_plan

    doc = {"task": "llm-sft", "backend": "local", "params": {"train_batch_size": 6, "micro_batch_size": 4}}
    with pytest.raises(ConfigError) as err:
        make_plan(str(write(tmp_path, doc)), [], Hardware())
    assert "params.train_batch_size" in str(err.value) and "params.micro_batch_size" in str(err.value)
    assert "not a multiple of batch_size 4" in str(err.value)


def test_micro_batch_size_and_a_different_batch_size_conflict():
    out = translate({"params": {"batch_size": 2, "micro_batch_size": 4}})
    assert [p.key for p in out.problems] == ["params.micro_batch_size"]
    assert "conflicts with params.batch_size" in out.problems[0].message


def test_autotrain_deepspeed_means_zero3_unless_the_command_line_says_otherwise(tmp_path):
    doc = {"task": "llm-sft", "backend": "local", "params": {"distributed_backend": "deepspeed"}}
    composed = compose_doc(tmp_path, doc)
    assert (composed.config.distributed.backend, composed.config.distributed.zero_stage) == ("deepspeed", 3)
    assert any("ZeRO-3, as in AutoTrain" in note for note in composed.notes)
    assert compose_doc(tmp_path, doc, ["distributed.zero_stage=2"]).config.distributed.zero_stage == 2
    assert compose_doc(tmp_path, {**doc, "params": {}}).config.distributed.zero_stage == 2  # our own default
