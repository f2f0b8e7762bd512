"""The run folder (launcher/run_dir.py): the resolved configuration written for the workers and read back, the
hub token kept out of every file, the folder's state, and the newest complete checkpoint."""
import json

import pytest

from launcher.config.schema import REDACTED
from launcher.resolve import resolve
from launcher.run_dir import (
    RunState, check_run_dir, latest_checkpoint, open_run_dir, read_config, run_state, write_config,
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
