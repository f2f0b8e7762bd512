"""make_plan (launcher/planning.py): compose, validate, check the data, resolve, check the launch and the run
folder; every problem of every stage in one report speaking the user's key names, and nothing created.

A key the run does not read never refuses it: `plan` notes it and goes on."""
from pathlib import Path

import pytest

from launcher.config.errors import ConfigError
from launcher.planning import Plan, make_plan
from tests.unit.helpers import CPU, SAMPLES, plan, write_yaml


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("HF_TOKEN", "HF_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def autotrain_file(tmp_path, task="llm-sft", data="text", **params) -> Path:
    return write_yaml(tmp_path / "config.yaml", {
        "task": task, "base_model": "org/model", "project_name": "at-run", "backend": "local",
        "data": {"path": str(SAMPLES / data), "train_split": "train", "valid_split": None},
        "params": params,
    })


def test_make_plan_accepts_a_valid_autotrain_file(tmp_path):
    p = make_plan(str(autotrain_file(tmp_path, block_size=512, model_max_length=1024)), [], CPU)
    assert isinstance(p, Plan)
    assert p.cfg.data.block_size == 512 and p.cfg.model.max_length == 1024
    assert p.cfg.distributed.backend == "none" and p.world_size == 1
    assert p.resolution.backend_reason == "one process: no distributed wrapper"
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
        make_plan(str(path), ["distributed=fsdp", "distributed.offload=optimizer", "data.train_split=nosuch"], CPU)
    keys = [p.key for p in err.value.problems]
    assert "params.lrr" in keys  # translation
    assert "data.block_size / model.max_length" in keys  # cross-field rule
    assert "distributed.offload" in keys  # launch check: an offload FSDP does not have
    assert any(k.startswith("data.path") for k in keys)  # data check: split not found


def test_make_plan_reports_rule_problems_next_to_type_problems_in_the_same_section(tmp_path):
    """A bad value must not hide the other values of its section from the cross-field rules."""
    with pytest.raises(ConfigError) as err:
        make_plan(None, ["model.name_or_path=org/model", f"data.path={SAMPLES / 'text'}",
                         "training.epochs=three", "training.lr=0"], CPU)
    keys = [p.key for p in err.value.problems]
    assert "training.epochs" in keys
    assert "training.lr" in keys


def test_a_finished_run_folder_is_refused_and_overwrite_is_stated(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_state.json").write_text('{"status": "finished"}')
    with pytest.raises(ConfigError) as err:
        plan(tmp_path)
    assert [p.key for p in err.value.problems] == ["project_name"]
    p = plan(tmp_path, "overwrite=true")
    assert any("holds a finished run; it will be moved aside" in n for n in p.notes)


def test_push_without_a_token_or_username_blocks_train_but_not_plan(tmp_path):
    p = plan(tmp_path, "hub.push_to_hub=true")
    assert sorted(b.key for b in p.blockers) == ["hub.token", "hub.username"]
    p = plan(tmp_path, "hub.push_to_hub=true", "hub.username=me", "hub.token=hf_x")
    assert p.blockers == [] and p.hub_token() == "hf_x"


# ---- scoped rules through the whole plan: the run goes on, the unread key is a note

def test_sft_with_max_prompt_length_above_block_size_plans(tmp_path):
    p = make_plan(str(autotrain_file(tmp_path, block_size=32, max_prompt_length=300)), [], CPU)
    assert p.cfg.trainer.name == "sft" and p.cfg.data.block_size == 32
    assert any(n.startswith("data.max_prompt_length: 300 is not used by the sft trainer (read by dpo, orpo")
               for n in p.notes), p.notes


def test_default_trainer_with_autotrains_default_max_prompt_length_above_block_size_plans(tmp_path):
    """AutoTrain's `task: llm` (the default trainer) with block_size 32 and nothing about prompts: the prompt
    limit keeps its default 128 > 32, which the default trainer never reads."""
    p = make_plan(str(autotrain_file(tmp_path, task="llm", block_size=32)), [], CPU)
    assert p.cfg.trainer.name == "default" and p.cfg.data.max_prompt_length == 128 > p.cfg.data.block_size


def test_dpo_with_max_prompt_length_above_block_size_is_refused_in_the_files_words(tmp_path):
    path = autotrain_file(tmp_path, task="llm-dpo", data="preference", block_size=32, max_prompt_length=128)
    with pytest.raises(ConfigError) as err:
        make_plan(str(path), [], CPU)
    assert [p.key for p in err.value.problems] == ["data.max_prompt_length / data.block_size"]
    assert ("data.max_prompt_length (params.max_prompt_length) / data.block_size (params.block_size): "
            "max_prompt_length 128 exceeds block_size 32") in err.value.report()


@pytest.mark.parametrize("override,note", [
    ("trainer.model_ref=org/reference", "trainer.model_ref: org/reference is not used by the sft trainer"),
    ("peft.merge_adapter=true", "peft.merge_adapter: ignored, there is no adapter to merge"),
    ("distributed.offload=optimizer", "distributed.offload: optimizer is ignored with none"),
    ("data.chunk_size=100000", "data: chunk_size is ignored because data.packing is off"),
    ("trainer.beta=0.5", "trainer.beta: 0.5 is not used by the sft trainer (read by dpo, orpo"),
])
def test_a_key_this_run_does_not_read_is_a_note_not_a_problem(tmp_path, override, note):
    p = plan(tmp_path, override)
    assert any(n.startswith(note) for n in p.notes), p.notes


def test_notes_come_in_stage_order(tmp_path):
    p = plan(tmp_path, "trainer.model_ref=org/reference", "distributed.num_processes=2")
    first = {stage: next(i for i, n in enumerate(p.notes) if n.startswith(prefix)) for stage, prefix in (
        ("unused", "trainer.model_ref:"), ("resolve", "precision:"), ("output", "output:"))}
    assert first["unused"] < first["resolve"] < first["output"]


@pytest.mark.parametrize("recipe", ["sft/chat_tiny", "dpo/preference_tiny", "kto/unpaired_tiny", "reward/pairs_tiny"])
def test_plan_states_what_packing_saves_on_the_data(recipe):
    """Estimated from the rows' characters (plan tokenises nothing): padded computed tokens per real token, and
    the ceiling packing gives; only with packing on, for the methods that pack."""
    import re

    from launcher.planning import make_plan

    plan = make_plan(None, [f"recipe={recipe}", "data.packing=true", "project_name=/nonexistent/run"])
    [note] = [n for n in plan.notes if n.startswith("data: packing efficiency")]
    padded, ceiling = map(float, re.search(r"compute ([\d.]+) tokens per real token.*up to ([\d.]+)x", note).groups())
    assert padded == ceiling and padded >= 1.0
    plan = make_plan(None, [f"recipe={recipe}", "project_name=/nonexistent/run"])
    assert not [n for n in plan.notes if n.startswith("data: packing efficiency")]
