"""launcher.trackers without training: where mlflow's store goes, the parameters under our names and AutoTrain's,
which tracker run a run folder continues, and mlflow's run reopened on a resume (a real local store)."""
import json
import logging
from pathlib import Path

import pytest

from launcher import trackers
from launcher.config.autotrain import PARAMS
from launcher.logs import tracker_environment
from tests.unit.helpers import valid_cfg

PLANTED = "hf_PLANTEDtokenNEVERwrite1234567890"


def test_params_carry_our_names_and_autotrains_and_never_the_token():
    cfg = valid_cfg()
    cfg.hub.token = PLANTED
    cfg.training.lr = 3e-4
    params = trackers.run_params(cfg)

    assert params["training.lr"] == params["lr"] == "0.0003"
    assert params["model.name_or_path"] == params["model"] == "org/model"
    assert params["hub.token"] == params["token"] == "<redacted>"
    assert not any(PLANTED in value for value in params.values())
    autotrain = {p.name for p in PARAMS}
    assert autotrain <= set(params)
    # neither set overwrites the other with another value: ours are dotted but the top-level project_name and
    # overwrite; AutoTrain's are never dotted, and its project_name is ours
    assert not any("." in name for name in autotrain)
    assert {key for key in params if "." not in key} - autotrain == {"overwrite"}
    assert autotrain & {"project_name", "overwrite"} == {"project_name"}
    assert params["project_name"] == cfg.project_name
    assert all(isinstance(value, str) for value in params.values())


def test_mlflow_store_is_beside_the_run_unless_the_user_names_one(tmp_path):
    run = tmp_path / "sweep" / "trial-1"
    env = tracker_environment("mlflow", run, str(run), {})
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'sweep' / 'mlruns' / 'mlflow.db'}"
    assert env["MLFLOW_MAX_LOG_PARAMS"] == "0"  # transformers' TrainingArguments are not logged as params
    assert trackers.group_name(run) == "sweep"

    users = {"MLFLOW_TRACKING_URI": "http://tracking:5000", "MLFLOW_MAX_LOG_PARAMS": "50"}
    env = tracker_environment("mlflow", run, str(run), users)
    assert env == {"MLFLOW_TRACKING_URI": "http://tracking:5000"}
    assert tracker_environment("trackio", run, str(run), {}) == {}


def test_a_tracking_uri_is_recorded_without_its_password():
    assert trackers.without_password("https://me:s3cret@host:5000/x") == "https://me@host:5000/x"
    assert trackers.without_password("sqlite:////a/mlruns/mlflow.db") == "sqlite:////a/mlruns/mlflow.db"


def checkpoint(run: Path, step: int) -> None:
    (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")


def test_a_trackio_run_is_continued_only_by_a_resume_from_a_checkpoint(tmp_path):
    cfg = valid_cfg()
    cfg.logging.report_to = "trackio"
    run = tmp_path / "group" / "run"
    run.mkdir(parents=True)
    trackers.record(run, "trackio", project="group", run="run-abc123", dir=str(tmp_path))

    fresh = trackers.trainer_arguments(cfg, run)  # no checkpoint: a start over is a new trackio run
    assert fresh["report_to"] == ["trackio"] and fresh["project"] == "group"
    assert fresh["run_name"].startswith("run-") and fresh["run_name"] != "run-abc123"

    checkpoint(run, 2)
    assert trackers.trainer_arguments(cfg, run)["run_name"] == "run-abc123"
    cfg.training.resume_from = "none"
    assert trackers.trainer_arguments(cfg, run)["run_name"] != "run-abc123"

    cfg.logging.report_to = "none"
    assert trackers.trainer_arguments(cfg, run) == {"report_to": []}


def test_log_files_without_a_recorded_run_warns_and_writes_nothing(tmp_path, caplog):
    cfg = valid_cfg()
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss_curve.png").write_bytes(b"png")
    trackers.log_files(run, cfg, [run / "loss_curve.png"])  # report_to none: nothing to do
    cfg.logging.report_to = "mlflow"
    with caplog.at_level(logging.WARNING):
        trackers.log_files(run, cfg, [run / "loss_curve.png"])
    assert "no mlflow run recorded" in caplog.text
    assert not (tmp_path / "mlruns").exists() and not (run / trackers.TRACKER_FILE).exists()


def test_mlflow_run_reopened_on_resume_keeps_first_params_and_takes_files(tmp_path, monkeypatch):
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    cfg = valid_cfg()
    cfg.logging.report_to = "mlflow"
    cfg.training.max_steps = 4
    run = tmp_path / "exp" / "run"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    first = trackers.start_mlflow_run(cfg, run)
    mlflow.end_run()
    checkpoint(run, 4)
    cfg.training.max_steps = 6
    second = trackers.start_mlflow_run(cfg, run)
    mlflow.end_run()
    assert second == first

    record = json.loads((run / trackers.TRACKER_FILE).read_text())["mlflow"]
    assert record["run_id"] == first
    client = mlflow.MlflowClient(record["tracking_uri"])
    found = client.get_run(first)
    assert found.data.params["training.max_steps"] == "4"
    assert found.data.tags["changed_on_resume.training.max_steps"] == "6"
    assert client.get_experiment(found.info.experiment_id).name == "exp"

    (run / "eval").mkdir()
    (run / "eval" / "arc_easy.json").write_text('{"results": {}}')
    trackers.log_files(run, cfg, [run / "eval" / "arc_easy.json", run / "missing.png"])
    assert [a.path for a in client.list_artifacts(first, "eval")] == ["eval/arc_easy.json"]
    assert (tmp_path / "exp" / "mlruns" / "artifacts").is_dir() and not (tmp_path / "mlruns").exists()

    checkpoint_free = tmp_path / "exp" / "other"
    checkpoint_free.mkdir()
    assert trackers.start_mlflow_run(cfg, checkpoint_free) != first
    mlflow.end_run()
    assert len(client.search_runs([found.info.experiment_id])) == 2


@pytest.mark.parametrize("tracker", ["mlflow", "trackio"])
def test_autotrain_log_key_chooses_the_tracker(tracker):
    from launcher.config.autotrain import translate

    doc = {"task": "llm-sft", "base_model": "org/model", "project_name": "p", "log": tracker,
           "data": {"path": "d"}, "params": {}}
    translation = translate(doc)
    assert not translation.problems and translation.values["logging"]["report_to"] == tracker
