"""Composition (conf/ groups, recipes, --config file, CLI overrides), cross-field validation, resolution of
`auto` values for a given machine, and the launch plan."""
from pathlib import Path

import pytest
import yaml

from launcher.config.compose import compose, group_options, recipe_names
from launcher.config.errors import ConfigError
from launcher.config.resolve import resolve
from launcher.config.schema import RunConfig
from launcher.config.validate import validate
from launcher.distributed.hardware import Hardware
from launcher.distributed.launch import accelerate_config, launch_command, plan_launch
from launcher.planning import make_plan

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CPU = Hardware(gpus=0)
H100x8 = Hardware(gpus=8, gpu_name="H100", gpu_memory_gib=80, bf16=True, flash_attn=True)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("HF_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def problems_of(err: ConfigError) -> dict:
    return {p.key: p.message for p in err.problems}


# Composition ---------------------------------------------------------------------------------------------

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
    cfg = compose(path, [override]).config
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected


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
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        assert value == expected, key


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
    assert group_options("trainer") == ["default", "dpo", "orpo", "reward", "sft"]
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


# Cross-field rules ---------------------------------------------------------------------------------------

def valid_cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = "org/model"
    return cfg


def keys_of(cfg: RunConfig) -> dict:
    return {p.key: p.message for p in validate(cfg)}


def test_a_valid_config_has_no_problems():
    assert validate(valid_cfg()) == []


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


def test_max_prompt_length_above_block_size():
    cfg = valid_cfg()
    cfg.data.block_size, cfg.data.max_prompt_length = 256, 300
    problems = keys_of(cfg)
    assert list(problems) == ["data.max_prompt_length / data.block_size"]
    assert "300" in problems["data.max_prompt_length / data.block_size"]


def test_max_prompt_length_above_automatic_block_size():
    cfg = valid_cfg()  # block_size -1: min(1024, 2048) = 1024
    cfg.data.max_prompt_length = 1500
    assert list(keys_of(cfg)) == ["data.max_prompt_length / data.block_size"]


def test_max_completion_length_above_model_max_length():
    cfg = valid_cfg()
    cfg.data.max_completion_length = 4096
    assert list(keys_of(cfg)) == ["data.max_completion_length / model.max_length"]


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


def test_merge_adapter_without_peft():
    cfg = valid_cfg()
    cfg.peft.merge_adapter = True
    assert list(keys_of(cfg)) == ["peft.merge_adapter"]
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


def test_every_rule_reports_together():
    cfg = valid_cfg()
    cfg.data.block_size, cfg.model.max_length = 4096, 1024
    cfg.training.lr = 0
    cfg.quantization.mode = "int8"
    cfg.training.optimizer = "sgdd"
    cfg.data.chat_template = "no-such-template"
    assert set(keys_of(cfg)) == {"data.block_size / model.max_length", "training.lr",
                                 "quantization.mode / peft.enabled", "training.optimizer", "data.chat_template"}


# make_plan: everything together, speaking the user's key names --------------------------------------------

def autotrain_file(tmp_path, **params) -> Path:
    return write_yaml(tmp_path / "config.yaml", {
        "task": "llm-sft", "base_model": "org/model", "project_name": "at-run", "backend": "local",
        "data": {"path": str(SAMPLES / "text"), "train_split": "train", "valid_split": None},
        "params": params,
    })


def test_make_plan_accepts_a_valid_autotrain_file(tmp_path):
    plan = make_plan(str(autotrain_file(tmp_path, block_size=512, model_max_length=1024)), [], CPU)
    assert plan.cfg.data.block_size == 512 and plan.cfg.model.max_length == 1024
    assert plan.launch.backend == "none"
    assert not (tmp_path / "at-run").exists()  # planning creates no run folder


def test_make_plan_names_the_autotrain_keys(tmp_path):
    path = autotrain_file(tmp_path, block_size=4096, model_max_length=1024)
    with pytest.raises(ConfigError) as err:
        make_plan(str(path), [], CPU)
    report = err.value.report()
    assert "params.block_size" in report and "params.model_max_length" in report
    assert "data.block_size (params.block_size) / model.max_length (params.model_max_length)" in report
    assert str(path) in report
    assert not (tmp_path / "at-run").exists()


def test_make_plan_reports_problems_from_every_stage(tmp_path):
    path = autotrain_file(tmp_path, block_size=4096, model_max_length=1024, lrr=1)
    with pytest.raises(ConfigError) as err:
        make_plan(str(path), ["distributed=fsdp", "data.train_split=nosuch"], CPU)
    keys = [p.key for p in err.value.problems]
    assert "params.lrr" in keys  # translation
    assert "data.block_size / model.max_length" in keys  # cross-field rule
    assert "distributed.backend" in keys  # launch plan: fsdp on CPU
    assert any(k.startswith("data.path") for k in keys)  # data check: split not found


def test_make_plan_reports_rule_problems_next_to_type_problems_in_the_same_section(tmp_path):
    """A bad value must not hide the other values of its section from the cross-field rules."""
    with pytest.raises(ConfigError) as err:
        make_plan(None, ["model.name_or_path=org/model", f"data.path={SAMPLES / 'text'}",
                         "training.epochs=three", "training.lr=0"], CPU)
    keys = [p.key for p in err.value.problems]
    assert "training.epochs" in keys
    assert "training.lr" in keys


# Resolution of `auto` for a machine -----------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_cpu_precision_becomes_fp32_with_a_note(precision):
    cfg = valid_cfg()
    cfg.precision.mixed_precision = precision
    problems, notes = resolve(cfg, CPU)
    assert problems == []
    assert cfg.precision.mixed_precision == "fp32"
    assert any(n.startswith("precision:") and precision in n and "fp32" in n for n in notes)


def test_cpu_flash_attention_falls_back_to_sdpa_with_a_note():
    cfg = valid_cfg()
    cfg.model.attn_implementation = "flash_attention_2"
    _, notes = resolve(cfg, CPU)
    assert cfg.model.attn_implementation == "sdpa"
    assert any("flash_attention_2" in n and "sdpa" in n for n in notes)


def test_cpu_auto_values():
    cfg = valid_cfg()
    _, notes = resolve(cfg, CPU)
    assert cfg.model.attn_implementation == "sdpa"
    assert cfg.training.gradient_checkpointing is False
    assert cfg.data.block_size == 1024  # -1 -> min(1024, 2048)
    assert any("gradient checkpointing" in n for n in notes)


def test_explicit_gradient_checkpointing_is_kept():
    cfg = valid_cfg()
    cfg.training.gradient_checkpointing = True
    resolve(cfg, CPU)
    assert cfg.training.gradient_checkpointing is True


def test_eight_h100_auto_values():
    cfg = valid_cfg()
    problems, notes = resolve(cfg, H100x8)
    assert problems == []
    assert cfg.precision.mixed_precision == "bf16"
    assert cfg.model.attn_implementation == "flash_attention_2"
    assert cfg.training.gradient_checkpointing is True
    assert any("bf16" in n and "H100" in n for n in notes)


def test_gpu_without_bf16_gets_fp16():
    cfg = valid_cfg()
    cfg.precision.mixed_precision = "bf16"
    _, notes = resolve(cfg, Hardware(gpus=1, gpu_name="T4", gpu_memory_gib=16, bf16=False, flash_attn=False))
    assert cfg.precision.mixed_precision == "fp16"
    assert cfg.model.attn_implementation == "sdpa"
    assert any("T4" in n for n in notes)


def test_block_size_capped_by_local_model_positions(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"max_position_embeddings": 256}')
    cfg = valid_cfg()
    cfg.model.name_or_path = str(tmp_path / "m")
    problems, _ = resolve(cfg, CPU)
    assert problems == [] and cfg.data.block_size == 256
    cfg = valid_cfg()
    cfg.model.name_or_path = str(tmp_path / "m")
    cfg.data.block_size = 512
    problems, _ = resolve(cfg, CPU)
    assert [p.key for p in problems] == ["data.block_size"]


# Launch plan -----------------------------------------------------------------------------------------------

def test_one_process_has_no_backend():
    plan = plan_launch(valid_cfg(), CPU)
    assert (plan.backend, plan.processes_per_node, plan.world_size, plan.problems) == ("none", 1, 1, [])


def test_two_processes_use_ddp():
    cfg = valid_cfg()
    cfg.distributed.num_processes = 2
    plan = plan_launch(cfg, CPU)
    assert (plan.backend, plan.world_size, plan.problems) == ("ddp", 2, [])


def test_eight_gpus_default_to_eight_ddp_processes():
    plan = plan_launch(valid_cfg(), H100x8)
    assert (plan.backend, plan.processes_per_node, plan.problems) == ("ddp", 8, [])


def test_fsdp_on_cpu_is_a_problem():
    cfg = valid_cfg()
    cfg.distributed.backend = "fsdp"
    cfg.distributed.num_processes = 2
    plan = plan_launch(cfg, CPU)
    assert [p.key for p in plan.problems] == ["distributed.backend"]
    assert "needs GPUs" in plan.problems[0].message
    assert plan_launch(cfg, H100x8).problems == []


def test_backend_none_with_two_processes_is_a_problem():
    cfg = valid_cfg()
    cfg.distributed.backend = "none"
    cfg.distributed.num_processes = 2
    plan = plan_launch(cfg, CPU)
    assert [p.key for p in plan.problems] == ["distributed.backend"]
    assert "2" in plan.problems[0].message


def test_node_rank_out_of_range():
    cfg = valid_cfg()
    cfg.distributed.num_nodes, cfg.distributed.node_rank = 2, 2
    assert [p.key for p in plan_launch(cfg, H100x8).problems] == ["distributed.node_rank"]


def test_torchrun_multi_node_command(tmp_path):
    cfg = valid_cfg()
    d = cfg.distributed
    d.launcher, d.num_nodes, d.node_rank = "torchrun", 2, 1
    d.main_process_ip, d.main_process_port = "10.1.2.3", 29555
    plan = plan_launch(cfg, H100x8)
    assert plan.problems == [] and plan.world_size == 16
    cmd = launch_command(cfg, plan, tmp_path / "run")
    assert Path(cmd[0]).name == "torchrun"
    assert cmd[cmd.index("--nproc_per_node") + 1] == "8"
    assert cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--rdzv_backend") + 1] == "c10d"
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "10.1.2.3:29555"
    assert "--standalone" not in cmd
    assert cmd[-3:] == ["-m", "launcher.worker", str(tmp_path / "run" / "config.yaml")]
    # each node gets its own rank
    assert launch_command(cfg, plan, tmp_path / "run", node_rank=0)[cmd.index("--node_rank") + 1] == "0"


def test_torchrun_single_node_is_standalone(tmp_path):
    cfg = valid_cfg()
    cfg.distributed.launcher = "torchrun"
    cmd = launch_command(cfg, plan_launch(cfg, CPU), tmp_path)
    assert "--standalone" in cmd and "--node_rank" not in cmd


def test_accelerate_command_uses_the_run_folder_config(tmp_path):
    cfg = valid_cfg()
    cmd = launch_command(cfg, plan_launch(cfg, CPU), tmp_path)
    assert cmd[1:4] == ["launch", "--config_file", str(tmp_path / "accelerate_config.yaml")]
    assert cmd[-3:] == ["-m", "launcher.worker", str(tmp_path / "config.yaml")]


def test_accelerate_config_ddp_on_cpu():
    cfg = valid_cfg()
    cfg.distributed.num_processes = 2
    resolve(cfg, CPU)
    plan = plan_launch(cfg, CPU)
    out = accelerate_config(cfg, plan, CPU)
    assert out["distributed_type"] == "MULTI_GPU"
    assert out["num_processes"] == 2
    assert out["num_machines"] == 1 and out["machine_rank"] == 0
    assert out["mixed_precision"] == "no"
    assert out["rdzv_backend"] == "static"
    assert "auto" not in yaml.safe_dump(out)


def test_accelerate_config_single_process_on_cpu():
    cfg = valid_cfg()
    resolve(cfg, CPU)
    out = accelerate_config(cfg, plan_launch(cfg, CPU), CPU)
    assert out["distributed_type"] == "NO" and out["num_processes"] == 1 and out["use_cpu"] is True


def test_accelerate_config_multi_node_bf16():
    cfg = valid_cfg()
    cfg.distributed.num_nodes = 2
    resolve(cfg, H100x8)
    out = accelerate_config(cfg, plan_launch(cfg, H100x8), H100x8)
    assert out["num_processes"] == 16 and out["num_machines"] == 2
    assert out["rdzv_backend"] == "c10d" and out["mixed_precision"] == "bf16"
