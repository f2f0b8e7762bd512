"""The run folder (launcher/run_dir.py): the resolved configuration written for the workers and read back, the
hub token kept out of every file, the folder's state, and the newest complete checkpoint."""
import copy
import dataclasses
import json

import pytest

from launcher import run_dir as runs
from launcher.config.schema import REDACTED
from launcher.resolve import resolve
from launcher.run_dir import (
    PENDING_CONFIG, RESUME_IGNORES, RESUME_MAY_CHANGE, RESUME_REFUSES, RunState, check_run_dir, config_changes,
    drop_pending_config, flat_config, latest_checkpoint, open_run_dir, promote_pending_config, read_config,
    read_run_config, resume_checkpoint, resume_rule, run_state, write_config, write_run_config,
)
from tests.unit.helpers import H100x8, valid_cfg

SECRET = "hf_runDIRsecret0123456789"


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)


def resolved_cfg():
    cfg = valid_cfg()
    cfg.training.lr, cfg.data.chat_template, cfg.trainer.name = 2e-4, "chatml", "dpo"
    cfg.distributed.backend, cfg.distributed.zero_stage = "deepspeed", 3
    resolve(cfg, H100x8)
    return cfg


def test_read_config_round_trips_write_config(tmp_path):
    cfg = resolved_cfg()
    path = write_config(tmp_path, cfg)
    assert path == tmp_path / "config.yaml"
    assert path.read_text().startswith("# Resolved by tunelaunch")
    assert read_config(tmp_path) == cfg
    assert "auto" not in (cfg.precision.mixed_precision, cfg.distributed.backend, cfg.model.attn_implementation)


def test_the_hub_token_is_read_from_hf_token_never_from_the_file(tmp_path, monkeypatch):
    cfg = resolved_cfg()
    cfg.hub.token = SECRET
    write_config(tmp_path, cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert SECRET not in text and f"token: {REDACTED}" in text
    assert cfg.hub.token == SECRET  # writing did not change the run's config
    assert read_config(tmp_path).hub.token is None  # not in the environment: no token, never "<redacted>"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert read_config(tmp_path).hub.token == "hf_from_env"


@pytest.mark.parametrize("env_token", [None, "hf_from_env"])
def test_a_token_planted_in_the_file_is_never_used(tmp_path, monkeypatch, env_token):
    """write_config never writes the secret; a token found in the file anyway (an edited or foreign file) is not
    used: the token is HF_TOKEN's, or none."""
    cfg = resolved_cfg()
    cfg.hub.token = SECRET
    write_config(tmp_path, cfg)
    path = tmp_path / "config.yaml"
    assert f"token: {REDACTED}" in path.read_text()
    path.write_text(path.read_text().replace(f"token: {REDACTED}", "token: hf_planted_in_file"))
    if env_token:
        monkeypatch.setenv("HF_TOKEN", env_token)
    assert read_config(tmp_path).hub.token == env_token


def test_read_config_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        read_config(tmp_path)
    (tmp_path / "config.yaml").write_text("training:\n  lrr: 1\n")
    with pytest.raises(ValueError, match="training.lrr"):
        read_config(tmp_path)


def test_run_states(tmp_path):
    run = tmp_path / "run"
    assert run_state(run) is RunState.NEW
    run.mkdir()
    assert run_state(run) is RunState.NEW  # empty
    (run / "notes.txt").write_text("mine")
    assert run_state(run) is RunState.FOREIGN
    (run / "run_state.json").write_text(json.dumps({"status": "running"}))
    assert run_state(run) is RunState.UNFINISHED
    (run / "run_state.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(run) is RunState.FINISHED


def test_check_and_open_a_finished_run(tmp_path):
    cfg = valid_cfg()
    cfg.project_name = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_state.json").write_text(json.dumps({"status": "finished"}))
    problems, _ = check_run_dir(cfg)
    assert [p.key for p in problems] == ["project_name"] and "overwrite=true" in problems[0].message
    cfg.overwrite = True
    problems, notes = check_run_dir(cfg)
    assert problems == [] and "moved aside" in notes[0]
    folder = open_run_dir(cfg)
    assert folder == tmp_path / "run" and run_state(folder) is RunState.UNFINISHED  # a new run, planned
    assert [p.name.split(".old-")[0] for p in tmp_path.glob("run.old-*")] == ["run"]  # the old one kept


def test_the_newest_complete_checkpoint(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 15 was cut short by a crash
    (tmp_path / "run_state.json").write_text(json.dumps({"status": "running"}))
    cfg = valid_cfg()
    cfg.project_name = str(tmp_path)
    assert check_run_dir(cfg) == ([], [f"output: {tmp_path} holds an unfinished run; training resumes from "
                                        "checkpoint-10"])


def test_a_run_is_read_as_resolved_whatever_machine_reads_it(tmp_path):
    """Workers, generate, merge and push read the resolved file: nothing is resolved again for the machine that
    reads it (this one has no GPU; the run was resolved for 8)."""
    write_config(tmp_path, resolved_cfg())
    again = read_config(tmp_path)
    assert (again.precision.mixed_precision, again.model.attn_implementation) == ("bf16", "flash_attention_2")
    assert (again.distributed.num_processes, again.training.gradient_checkpointing) == (8, True)


# --- resuming an unfinished run: what may change, and which checkpoint ---------------------------------------

def unfinished_run(tmp_path, steps=(3,)):
    """A run folder as a killed run leaves it: config.yaml, run_state running, complete checkpoints at `steps`.
    Returns a copy of its configuration to change."""
    cfg = valid_cfg()
    cfg.project_name = str(tmp_path / "run")
    cfg.training.max_steps = 6
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, cfg)
    (run / "run_state.json").write_text(json.dumps({"status": "running"}))
    for step in steps:
        (run / f"checkpoint-{step}").mkdir()
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return copy.deepcopy(cfg)


def test_every_configuration_key_is_sorted_into_one_resume_list():
    """A new schema key must be decided on: may a resume change it or not (an unsorted one is refused)."""
    entries = RESUME_REFUSES + RESUME_MAY_CHANGE + RESUME_IGNORES
    assert len(set(entries)) == len(entries)
    for key in flat_config(valid_cfg()):
        assert any(key == e or (e.endswith(".") and key.startswith(e)) for e in entries), key


@pytest.mark.parametrize("key, rule", [
    ("model.name_or_path", "refuse"), ("data.path", "refuse"), ("data.column_mapping.text_column", "refuse"),
    ("data.chat_template", "refuse"), ("data.packing", "refuse"), ("data.block_size", "refuse"),
    ("trainer.name", "refuse"), ("trainer.beta", "refuse"), ("peft.r", "refuse"), ("peft.target_modules", "refuse"),
    ("quantization.mode", "refuse"), ("precision.mixed_precision", "refuse"), ("training.lr", "refuse"),
    ("training.scheduler", "refuse"), ("training.seed", "refuse"), ("training.batch_size", "refuse"),
    ("training.gradient_accumulation", "refuse"), ("distributed.num_processes", "refuse"),
    ("distributed.num_nodes", "refuse"), ("cluster.nodes", "refuse"),
    ("training.max_steps", "note"), ("training.epochs", "note"), ("logging.steps", "note"),
    ("training.save_steps", "note"), ("training.eval_strategy", "note"), ("training.eval_steps", "note"),
    ("cluster.time", "note"),
    ("cluster.partition", "note"), ("hub.push_to_hub", "note"), ("data.cache_dir", "note"),
    ("peft.merge_adapter", "note"),
    ("hub.token", "ignore"), ("training.resume_from", "ignore"), ("project_name", "ignore"),
    ("a.key.nobody.sorted", "refuse"),
])
def test_the_resume_rule_of_a_key(key, rule):
    assert resume_rule(key) == rule


def test_a_resume_that_changes_what_training_computes_is_one_problem_listing_every_change(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.training.lr, cfg.data.path, cfg.peft.r, cfg.trainer.name = 1e-3, "other-data", 8, "dpo"
    cfg.training.max_steps = 10  # allowed, and not listed among the refused
    problems, notes = check_run_dir(cfg)
    assert len(problems) == 1 and notes == []
    message = problems[0].message
    for change in ("training.lr 3e-05 -> 0.001", "data.path 'data' -> 'other-data'", "peft.r 16 -> 8",
                   "trainer.name 'sft' -> 'dpo'"):
        assert change in message, message
    assert "max_steps" not in message and "checkpoint-3" in message
    assert "project_name=" in message and "overwrite=true" in message


def test_a_resume_that_extends_the_run_is_stated_as_notes(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.training.max_steps, cfg.logging.steps, cfg.cluster.time = 10, 1, "1:00:00"
    problems, notes = check_run_dir(cfg)
    assert problems == []
    assert notes[0] == f"output: {tmp_path / 'run'} holds an unfinished run; training resumes from checkpoint-3"
    assert "resume: training.max_steps 6 -> 10 (the learning-rate schedule now spans the new length)" in notes
    assert "resume: logging.steps -1 -> 1" in notes and "resume: cluster.time None -> '1:00:00'" in notes


def test_a_max_steps_the_checkpoint_has_reached_is_refused(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.training.max_steps = 3
    problems, _ = check_run_dir(cfg)
    assert [p.key for p in problems] == ["training.max_steps"] and "step 3" in problems[0].message


def test_edited_data_is_refused_when_its_hash_was_recorded(tmp_path):
    cfg = unfinished_run(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "a"}\n')
    cfg.data.path = str(data)
    write_config(tmp_path / "run", cfg)
    from launcher.manifest import data_hash

    (tmp_path / "run" / "data_hash.json").write_text(json.dumps(data_hash(cfg)))
    assert config_changes(cfg, tmp_path / "run") == ([], [])
    (data / "train.jsonl").write_text('{"text": "b"}\n')
    problems, _ = check_run_dir(cfg)
    assert len(problems) == 1 and f"data content of {data / 'train.jsonl'}" in problems[0].message


def test_overwrite_starts_an_unfinished_run_over_only_when_it_cannot_be_resumed(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.overwrite = True
    assert check_run_dir(cfg)[1][0].endswith("training resumes from checkpoint-3")  # same config: it resumes
    open_run_dir(cfg)
    assert (tmp_path / "run" / "checkpoint-3").is_dir() and not list(tmp_path.glob("run.old-*"))

    cfg.training.lr = 1e-3
    problems, notes = check_run_dir(cfg)
    assert problems == [] and "configuration changed and overwrite=true" in notes[0] and "moved aside" in notes[0]
    open_run_dir(cfg)
    assert not (tmp_path / "run" / "checkpoint-3").exists()
    assert [(p / "checkpoint-3").is_dir() for p in tmp_path.glob("run.old-*")] == [True]


def test_resume_from_none_on_an_unfinished_run_needs_overwrite(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.training.resume_from = "none"
    problems, _ = check_run_dir(cfg)
    assert [p.key for p in problems] == ["training.resume_from"] and "overwrite=true" in problems[0].message
    cfg.overwrite = True
    problems, notes = check_run_dir(cfg)
    assert problems == [] and "resume_from=none and overwrite=true" in notes[0]


def test_resume_from_a_chosen_checkpoint(tmp_path):
    cfg = unfinished_run(tmp_path, steps=(3, 5))
    run = tmp_path / "run"
    assert resume_checkpoint(run, "latest") == run / "checkpoint-5" and resume_checkpoint(run, "none") is None
    for choice in ("checkpoint-3", str(run / "checkpoint-3")):
        cfg.training.resume_from = choice
        assert check_run_dir(cfg) == ([], [f"output: {run} holds an unfinished run; training resumes from "
                                           "checkpoint-3"])
        assert resume_checkpoint(run, choice) == run / "checkpoint-3"
    cfg.training.resume_from = "checkpoint-7"
    problems, _ = check_run_dir(cfg)
    assert [p.key for p in problems] == ["training.resume_from"]
    assert "it has: checkpoint-3, checkpoint-5" in problems[0].message
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        resume_checkpoint(run, "checkpoint-7")
    cfg.training.resume_from = str(tmp_path / "elsewhere" / "checkpoint-3")  # not inside the run folder
    assert [p.key for p in check_run_dir(cfg)[0]] == ["training.resume_from"]


def test_resume_from_a_checkpoint_of_a_new_or_finished_folder_is_refused(tmp_path):
    cfg = valid_cfg()
    cfg.project_name, cfg.training.resume_from = str(tmp_path / "new"), "checkpoint-3"
    assert [p.key for p in check_run_dir(cfg)[0]] == ["training.resume_from"]
    unfinished_run(tmp_path)
    (tmp_path / "run" / "run_state.json").write_text(json.dumps({"status": "finished"}))
    cfg.project_name, cfg.overwrite = str(tmp_path / "run"), True
    assert [p.key for p in check_run_dir(cfg)[0]] == ["training.resume_from"]


def test_a_resume_replaces_config_yaml_only_when_promoted(tmp_path):
    cfg = unfinished_run(tmp_path)
    run = tmp_path / "run"
    before = (run / "config.yaml").read_bytes()
    cfg.training.max_steps = 10
    write_run_config(run, cfg)
    assert (run / "config.yaml").read_bytes() == before and not (run / "training_params.json").exists()
    assert read_run_config(run).training.max_steps == 10  # what the worker trains with
    assert read_config(run).training.max_steps == 6
    assert drop_pending_config(run) and (run / "config.yaml").read_bytes() == before  # a failed resume
    assert not (run / PENDING_CONFIG).exists() and not drop_pending_config(run)

    cfg.training.resume_from = "checkpoint-3"
    write_run_config(run, cfg)
    assert read_run_config(run).training.resume_from == "checkpoint-3"
    assert promote_pending_config(run, cfg)
    assert read_config(run).training.max_steps == 10 and not (run / PENDING_CONFIG).exists()
    assert read_config(run).training.resume_from == "latest"  # a restart continues; it does not go back to 3
    assert cfg.training.resume_from == "checkpoint-3"  # the worker's own configuration is left alone
    assert json.loads((run / "training_params.json").read_text())["project_name"] == cfg.project_name
    assert not promote_pending_config(run, cfg)


def test_a_fresh_start_writes_config_yaml_and_the_data_hash(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    cfg = valid_cfg()
    cfg.project_name = str(run)
    (run / PENDING_CONFIG).write_text("left by a failed resume")
    cfg.training.resume_from = "none"
    write_run_config(run, cfg)
    assert not (run / PENDING_CONFIG).exists()
    # resume_from=none was for this start: a restart (a requeue) of the new run continues from its checkpoints
    assert read_config(run) == dataclasses.replace(cfg, training=dataclasses.replace(cfg.training,
                                                                                     resume_from="latest"))
    assert (run / "data_hash.json").is_file() and (run / "training_params.json").is_file()


def test_the_worker_promotes_the_resume_config_only_once_training_began(tmp_path, monkeypatch):
    """PromoteConfigOnResume runs at on_train_begin, after the Trainer loaded the checkpoint; a resume failing
    at that point (the probe) leaves config.yaml as it was."""
    from launcher.trainers.common import PromoteConfigOnResume

    cfg = unfinished_run(tmp_path)
    run = tmp_path / "run"
    before = (run / "config.yaml").read_bytes()
    cfg.training.max_steps = 10
    write_run_config(run, cfg)
    callback = PromoteConfigOnResume(run, cfg)
    state = type("State", (), {"global_step": 3, "max_steps": 10})()
    monkeypatch.setenv("TUNELAUNCH_FAIL_BEFORE_RESUME", "1")
    with pytest.raises(RuntimeError, match="before the resume starts"):
        callback.on_train_begin(None, state, None)
    assert (run / "config.yaml").read_bytes() == before
    monkeypatch.delenv("TUNELAUNCH_FAIL_BEFORE_RESUME")
    callback.on_train_begin(None, state, None)
    assert read_config(run).training.max_steps == 10 and not (run / PENDING_CONFIG).exists()



def test_every_status_the_slurm_batch_step_writes_or_compares_is_a_run_status():
    """The batch step speaks run_state.json's words in bash: each must be a member of run_dir.Status, or `train`,
    `runs` and the supervision would read a status that is not there."""
    import re
    from pathlib import Path

    from launcher.cluster import script

    source = Path(script.__file__).read_text()
    words = (set(re.findall(r"set_status (\w+)", source)) | set(re.findall(r'"\$\(status\)" = (\w+)', source))
             | set(re.findall(r'"\$state" = (\w+)', source)))
    assert {"starting", "finished", "preempted", "running"} <= words
    assert words <= {s.value for s in runs.Status}, words - {s.value for s in runs.Status}


def test_a_status_is_written_as_its_word_and_read_back_as_the_member(tmp_path):
    runs.write_state(tmp_path, runs.Status.PREEMPTED, global_step=3)
    assert json.loads((tmp_path / runs.STATE_FILE).read_text())["status"] == "preempted"
    assert runs.read_status(tmp_path) is runs.Status.PREEMPTED
    (tmp_path / runs.STATE_FILE).write_text('{"status": "something else"}')
    assert runs.read_status(tmp_path) is None
    with pytest.raises(ValueError):
        runs.write_state(tmp_path, "finishd")


def _fsdp_checkpoint(folder, ranks: int):
    (folder / "pytorch_model_fsdp_0").mkdir()
    for rank in range(ranks):
        (folder / f"rng_state_{rank}.pth").write_bytes(b"")
        (folder / "pytorch_model_fsdp_0" / f"__{rank}_0.distcp").write_bytes(b"")


def test_a_sharded_checkpoint_resumes_only_in_the_world_that_wrote_it(tmp_path):
    """The configuration's world size is compared as a refused key; an FSDP checkpoint's own ranks are read too,
    so a world that came from elsewhere (the user's launcher) meets the same refusal, naming both counts."""
    cfg = unfinished_run(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint-3"
    _fsdp_checkpoint(checkpoint, ranks=2)
    problems, _ = check_run_dir(cfg)  # one process planned, two wrote it
    assert [p.key for p in problems] == ["distributed.num_processes / distributed.num_nodes"]
    assert "written by 2 process(es), and this run plans 1" in problems[0].message
    cfg.distributed.num_processes = 2  # the configuration's own change is listed as such
    problems, _ = check_run_dir(cfg)
    assert len(problems) == 1 and "distributed.num_processes None -> 2" in problems[0].message


def test_a_sharded_checkpoint_of_the_same_world_resumes(tmp_path):
    cfg = unfinished_run(tmp_path)
    cfg.distributed.num_processes = 2
    write_config(tmp_path / "run", cfg)
    _fsdp_checkpoint(tmp_path / "run" / "checkpoint-3", ranks=2)
    problems, notes = check_run_dir(cfg)
    assert problems == [] and notes[0].endswith("training resumes from checkpoint-3")
