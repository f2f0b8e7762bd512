"""`logger=mlflow` and `logger=trackio` end to end, offline: a tiny `tunelaunch train`, then the tracker's store read
back with the tracker's own client (mlflow's MlflowClient, trackio's SQLiteStorage): the parameters under our names
and AutoTrain's, the loss of every step, the loss curve and eval results as files, and no hub token anywhere."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli

PLANTED = "hf_PLANTEDtokenNEVERwrite1234567890"
SECRET = {"HF_TOKEN": PLANTED}


def trainer_losses(run: Path) -> dict[int, float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_no_token(store: Path) -> None:
    files = [f for f in store.rglob("*") if f.is_file()]
    assert files, store
    for f in files:
        assert PLANTED.encode() not in f.read_bytes(), f


def python(code: str, **env: str) -> str:
    """Python code run in a fresh process of this checkout (trackio reads TRACKIO_DIR once, at import)."""
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(**env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def eval_result(run: Path) -> Path:
    """An eval result as `tunelaunch eval` leaves it (lm-eval's output for one task)."""
    out = run / "eval" / "arc_easy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.25}}}))
    return out


LOG_EVAL = ("from pathlib import Path\n"
            "from launcher.run_dir import read_config\n"
            "from launcher.trackers import log_files\n"
            "run = Path({run!r})\n"
            "log_files(run, read_config(run), [run / 'eval' / 'arc_easy.json'])\n")


def test_mlflow_keeps_params_metrics_and_files_in_mlruns_beside_the_run(tmp_path):
    run = tmp_path / "runs" / "m1"
    result = run_cli("train", "recipe=sft/chat_tiny", "logger=mlflow", "training.max_steps=4",
                     f"project_name={run}", f"hub.token={PLANTED}", cwd=tmp_path, env={**SECRET,
                                                                                       "MLFLOW_TRACKING_URI": None})
    assert result.returncode == 0, result.stderr[-3000:]
    import mlflow

    from launcher.run_dir import read_config
    from launcher.trackers import log_files

    log_files(run, read_config(run), [eval_result(run)])  # what `tunelaunch eval` does after scoring

    store = tmp_path / "runs" / "mlruns"
    recorded = json.loads((run / "tracker.json").read_text())["mlflow"]
    assert recorded["tracking_uri"] == f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(recorded["tracking_uri"])
    [experiment] = [e for e in client.search_experiments() if e.name == "runs"]  # the run's parent folder
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == recorded["run_id"] and found.info.status == "FINISHED"
    assert found.info.run_name == "m1"

    params = found.data.params
    assert params["training.lr"] == params["lr"] == "0.001"  # ours and AutoTrain's names
    assert params["training.max_steps"] == "4" and params["batch_size"] == params["training.batch_size"]
    assert params["model.name_or_path"] == params["model"]
    assert params["hub.token"] == params["token"] == "<redacted>"
    assert "per_device_train_batch_size" not in params  # not transformers' TrainingArguments

    history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "loss")}
    assert history == pytest.approx(trainer_losses(run)) and sorted(history) == [1, 2, 3, 4]
    assert client.get_metric_history(found.info.run_id, "eval_loss")

    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"loss_curve.png", "config.yaml", "training_params.json", "eval"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "eval")] == ["eval/arc_easy.json"]
    local = Path(client.download_artifacts(found.info.run_id, "loss_curve.png", str(tmp_path / "down")))
    assert local.read_bytes() == (run / "loss_curve.png").read_bytes()
    assert (store / "artifacts").is_dir() and not (tmp_path / "mlruns").exists()  # not where the command ran

    assert_no_token(store)


READ_TRACKIO = """
import json
from trackio.sqlite_storage import SQLiteStorage as S
project, name = {project!r}, {name!r}
logs = S.get_logs(project, name)
print(json.dumps({{
    "runs": S.get_runs(project),
    "losses": {{str(l["train/global_step"]): l["train/loss"] for l in logs if "train/loss" in l}},
    "config": S.get_run_config(project, name),
    "artifacts": sorted(a["name"] for a in S.list_artifacts(project)),
    "images": sorted(k for l in logs for k in l if k.startswith("files/")),
}}, default=str))
"""


@pytest.mark.slow
def test_trackio_keeps_params_metrics_and_files_in_its_local_store(tmp_path):
    store = tmp_path / "trackio"
    env = {**SECRET, "TRACKIO_DIR": str(store), "TRACKIO_SPACE_ID": None}
    run = tmp_path / "sweep" / "t1"
    result = run_cli("train", "recipe=sft/chat_tiny", "logger=trackio", "training.max_steps=4",
                     f"project_name={run}", f"hub.token={PLANTED}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    eval_result(run)
    python(LOG_EVAL.format(run=str(run)), **env)

    recorded = json.loads((run / "tracker.json").read_text())["trackio"]
    assert recorded["project"] == "sweep" and recorded["run"].startswith("t1-")
    assert recorded["dir"] == str(store)
    read = json.loads(python(READ_TRACKIO.format(project="sweep", name=recorded["run"]), **env))
    assert read["runs"] == [recorded["run"]]
    assert {int(k): v for k, v in read["losses"].items()} == pytest.approx(trainer_losses(run))
    config = read["config"]
    assert config["training.lr"] == config["lr"] == "0.001" and config["token"] == "<redacted>"
    stem = recorded["run"]
    assert {f"{stem}-loss_curve.png", f"{stem}-config.yaml", f"{stem}-eval-arc_easy.json"} <= set(read["artifacts"])
    assert "files/loss_curve" in read["images"]
    assert not (tmp_path / "sweep" / "mlruns").exists()
    assert_no_token(store)


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    run = tmp_path / "run"
    base = ("train", "recipe=sft/chat_tiny", "logger=mlflow", "training.save_strategy=steps",
            "training.save_steps=2", "training.eval_strategy=no", "logging.steps=1", f"project_name={run}")
    first = run_cli(*base, "training.max_steps=4", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    assert first.returncode == 0, first.stderr[-3000:]
    (run / "run_state.json").write_text(json.dumps({"status": "running"}))  # killed after checkpoint-4
    again = run_cli(*base, "training.max_steps=6", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": None})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint-4" in (run / "train.log").read_text()

    import mlflow

    recorded = json.loads((run / "tracker.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(recorded["tracking_uri"])
    [found] = client.search_runs([recorded["experiment_id"]])  # the same run, not a second one
    assert found.info.run_id == recorded["run_id"]
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert found.data.params["training.max_steps"] == "4"  # mlflow keeps a parameter's first value
    assert found.data.tags["changed_on_resume.training.max_steps"] == "6"


@pytest.mark.slow
def test_only_rank_0_logs_to_mlflow(tmp_path):
    run = tmp_path / "ddp"
    result = run_cli("train", "recipe=sft/chat_tiny", "logger=mlflow", "distributed.num_processes=2",
                     "training.max_steps=2", "training.eval_strategy=no", f"project_name={run}", cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": None})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2" in (run / "train.log").read_text()

    import mlflow

    recorded = json.loads((run / "tracker.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(recorded["tracking_uri"])
    [found] = client.search_runs([recorded["experiment_id"]])
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "loss")]
    assert sorted(steps) == sorted(set(steps)) and steps  # each step once: one process logged
