"""The experiment trackers that keep a run's history outside its folder: mlflow and trackio (`logger=mlflow`,
`logger=trackio`).

transformers' own callbacks (MLflowCallback, TrackioCallback, chosen by `report_to`) log the metrics of every
logging step. What they lack is added here:

- where the history goes. mlflow: MLFLOW_TRACKING_URI when set, else a local store `mlruns/` beside the run folder
  (`<run parent>/mlruns/mlflow.db` and `mlruns/artifacts/`), so the trials of a sweep land in one store; it is a
  SQLite store because mlflow 3 refuses its old file store unless told to (MLFLOW_ALLOW_FILE_STORE). trackio: its
  own local store (TRACKIO_DIR, else ~/.cache/huggingface/trackio); a Space only when the user names one
  (TRACKIO_SPACE_ID). The experiment (mlflow) or project (trackio) is the name of the folder holding the run
  folder: a sweep's folder for its trials;
- the parameters under our key names (`training.lr`, the flattened resolved configuration) and AutoTrain's (`lr`,
  the run's training_params.json), secrets redacted;
- which tracker run belongs to the run folder (TRACKER_FILE), so that a run resumed from a checkpoint continues
  the same tracker run, and files made after training (the loss curve, eval results) join it: log_files().

Only rank 0 logs: transformers' callbacks check it, and so does everything here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from launcher import atomic
from launcher.config.schema import RunConfig
from launcher.distributed import runtime

log = logging.getLogger(__name__)

TRACKER_FILE = "tracker.json"
"""In the run folder: per tracker, where its run is ({"mlflow": {tracking_uri, experiment_id, run_id},
"trackio": {project, run, dir}})."""
TRACKERS = ("mlflow", "trackio")
"""The trackers this module serves (tensorboard writes into the run folder, wandb keeps its own run ids). Light
to import (the CLI computes the workers' environment here); mlflow and trackio are imported where used."""
MLFLOW_STORE = "mlruns"
"""The local mlflow store's folder, beside the run folders."""
_MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in mlflow 3; longer values are cut
_PARAMS_PER_BATCH = 100  # mlflow's limit on params in one log_batch call


# ---- where the history goes ----

def group_name(run_dir: Path) -> str:
    """The mlflow experiment and trackio project of a run: the name of the folder that holds the run folder."""
    return Path(run_dir).resolve().parent.name or "tunelaunch"


def mlflow_store(run_dir: Path) -> Path:
    return Path(run_dir).resolve().parent / MLFLOW_STORE


def mlflow_tracking_uri(run_dir: Path, environ) -> str:
    """MLFLOW_TRACKING_URI when set, else the local store beside the run folder."""
    return environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_store(run_dir) / 'mlflow.db'}"


def mlflow_environment(run_dir: Path, environ) -> dict:
    """The workers' mlflow variables (each kept when the user set it)."""
    env = {"MLFLOW_TRACKING_URI": mlflow_tracking_uri(run_dir, environ)}
    # The parameters are logged by start_mlflow_run under our names and AutoTrain's. transformers' callback would
    # add ~200 TrainingArguments and model-config entries, some under AutoTrain's names with another meaning
    # (warmup_ratio), and mlflow refuses a parameter logged twice with different values.
    if "MLFLOW_MAX_LOG_PARAMS" not in environ:
        env["MLFLOW_MAX_LOG_PARAMS"] = "0"
    return env


def trainer_arguments(cfg: RunConfig, run_dir: Path) -> dict:
    """The TrainingArguments that choose the tracker and name its run (every rank computes them; rank 0 logs).
    trackio resumes a run by name, so a run continued from a checkpoint reuses the recorded name and a fresh start
    gets a new one (the folder's name and a random suffix: a folder started over is a new trackio run)."""
    report_to = cfg.logging.report_to
    arguments: dict = dict(report_to=[] if report_to == "none" else [report_to])
    if report_to == "trackio":
        recorded = continued_record(cfg, run_dir, "trackio")
        arguments["run_name"] = recorded["run"] if recorded else f"{Path(run_dir).name}-{secrets.token_hex(3)}"
        arguments["project"] = recorded["project"] if recorded else group_name(run_dir)
    return arguments


# ---- the tracker run of a run folder ----

def read_records(run_dir: Path) -> dict:
    path = Path(run_dir) / TRACKER_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record(run_dir: Path, tracker: str, **where) -> None:
    records = read_records(run_dir)
    records[tracker] = where
    atomic.write_text(Path(run_dir) / TRACKER_FILE, json.dumps(records, indent=2))


def continued_record(cfg: RunConfig, run_dir: Path, tracker: str) -> dict | None:
    """The recorded tracker run when this start continues the run from a checkpoint; None for a fresh start (a
    start over in the same folder is a new tracker run, not more steps of the old one)."""
    from launcher.run_dir import resume_checkpoint

    if resume_checkpoint(Path(run_dir), cfg.training.resume_from) is None:
        return None
    return read_records(run_dir).get(tracker)


def without_password(uri: str) -> str:
    """A tracking URI as it may be written into the run folder (credentials belong in MLFLOW_TRACKING_PASSWORD)."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}"
                                            + (f":{parts.port}" if parts.port else "")))


# ---- the parameters ----

def run_params(cfg: RunConfig) -> dict[str, str]:
    """The run's parameters as text: the resolved configuration flattened (`training.lr`) and AutoTrain's names
    (`lr`), secrets redacted. Neither overwrites the other with another value: ours are dotted but the top-level
    project_name and overwrite, AutoTrain's are never dotted, and its project_name is ours."""
    from launcher.config.autotrain import training_params
    from launcher.run_dir import redacted_dict

    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = _text(value)

    walk("", redacted_dict(cfg))
    flat.update({name: _text(value) for name, value in training_params(cfg).items()})
    return flat


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_LENGTH]


# ---- mlflow ----

def start_mlflow_run(cfg: RunConfig, run_dir: Path) -> str:
    """Start (or, continuing from a checkpoint, reopen) the run folder's mlflow run as the active run, so that
    transformers' MLflowCallback logs into it; log the parameters and record the run. Returns its id."""
    import mlflow

    uri = mlflow_tracking_uri(run_dir, os.environ)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    recorded = continued_record(cfg, run_dir, "mlflow")
    # The user's MLFLOW_RUN_ID wins, as in transformers' callback; taken out of this process's environment, or that
    # callback would start the same run a second time over the active one.
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id is None and recorded and recorded.get("tracking_uri") == without_password(uri):
        run_id = recorded["run_id"]
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(experiment_id=_experiment_id(client, run_dir, uri), run_name=Path(run_dir).name,
                               tags={"tunelaunch.run_dir": str(Path(run_dir).resolve())})
    _log_new_params(client, run.info.run_id, run_params(cfg))
    record(run_dir, "mlflow", tracking_uri=without_password(uri), experiment_id=run.info.experiment_id,
           run_id=run.info.run_id)
    log.info("mlflow: run %s in experiment %s of %s", run.info.run_id, run.info.experiment_id, without_password(uri))
    return run.info.run_id


def _experiment_id(client, run_dir: Path, uri: str) -> str:
    """MLFLOW_EXPERIMENT_NAME, else the run's group; created when missing. In the local store its artifacts go to
    `mlruns/artifacts/` (mlflow's default would be `./mlruns` of whatever folder the worker started in). A lock:
    the trials of a sweep may create the store at the same moment."""
    from filelock import FileLock

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or group_name(run_dir)
    local = uri == mlflow_tracking_uri(run_dir, {})
    if local:
        mlflow_store(run_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(mlflow_store(run_dir) / ".lock")) if local else nullcontext():
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = str(mlflow_store(run_dir) / "artifacts") if local else None
        return client.create_experiment(name, artifact_location=artifacts)


def _log_new_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log the parameters the run has not got yet. mlflow keeps a parameter's first value: a resume that changed
    one (a longer training.max_steps) records the new value as the tag `changed_on_resume.<key>`."""
    from mlflow.entities import Param, RunTag

    logged = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"changed_on_resume.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
    for start in range(0, len(new), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[start:start + _PARAMS_PER_BATCH])
    if changed:
        client.log_batch(run_id, tags=changed)


def _log_mlflow_files(where: dict, cfg: RunConfig, run_dir: Path, files: list[Path]) -> None:
    import mlflow

    current = os.environ.get("MLFLOW_TRACKING_URI")  # the recorded store, with the credentials of this shell's URI
    client = mlflow.MlflowClient(current if current and without_password(current) == where["tracking_uri"]
                                 else where["tracking_uri"])
    for file in files:
        client.log_artifact(where["run_id"], str(file), artifact_path=_artifact_folder(run_dir, file))


# ---- trackio ----

def _record_trackio_run(cfg: RunConfig, run_dir: Path) -> None:
    """After TrackioCallback opened the run: add our parameters to its config and record where it is."""
    import trackio
    from trackio.utils import TRACKIO_DIR

    run = trackio.context_vars.current_run.get()
    if run is None:
        log.warning("trackio: no run is open; the parameters and %s are not recorded", TRACKER_FILE)
        return
    # The run's own config, sent with its first logged step. (TrackioCallback updates the module-level
    # `trackio.config`, a plain dict in trackio 0.43 that no run reads: its parameters never reach the store.)
    run.config.update(run_params(cfg))
    record(run_dir, "trackio", project=run.project, run=run.name, dir=str(TRACKIO_DIR))


def _log_trackio_files(where: dict, cfg: RunConfig, run_dir: Path, files: list[Path]) -> None:
    """Each file as an artifact of the run (trackio keeps its bytes in its store); images also as media, which
    the dashboard shows beside the metrics. The reopened run is given the parameters again: trackio stores the
    config of a run's latest opening."""
    os.environ.setdefault("TRACKIO_DIR", where["dir"])  # before trackio is imported: it reads the folder then
    import trackio

    trackio.init(project=where["project"], name=where["run"], resume="must", config=run_params(cfg), embed=False,
                 auto_log_cpu=False, auto_log_gpu=False)
    try:
        images = {}
        for file in files:
            relative = _relative(run_dir, file)
            name = re.sub(r"[^A-Za-z0-9._-]", "-", f"{where['run']}-{relative}")
            trackio.log_artifact(str(file), name=name, type="eval" if relative.startswith("eval/") else "run-file")
            if file.suffix.lower() == ".png":
                images[f"files/{Path(relative).stem}"] = trackio.Image(str(file))
        if images:
            trackio.log(images)
    finally:
        trackio.finish()


# ---- both ----

def on_trainer_built(cfg: RunConfig, run_dir: Path) -> str | None:
    """mlflow: start the run at the end of the Trainer's construction, before MLflowCallback's first event, which
    then logs into it instead of starting its own (launcher.callbacks.TrackerRunCallback ends it). Rank 0 only."""
    if cfg.logging.report_to == "mlflow" and runtime.is_main():
        return start_mlflow_run(cfg, run_dir)
    return None


def on_train_begin(cfg: RunConfig, run_dir: Path) -> None:
    """trackio: TrackioCallback has opened the run; add the parameters and record it. Rank 0 only."""
    if cfg.logging.report_to == "trackio" and runtime.is_main():
        _record_trackio_run(cfg, run_dir)


def end_mlflow_run() -> None:
    import mlflow

    mlflow.end_run()  # also flushes the metrics MLflowCallback logged asynchronously


def log_files(run_dir: Path, cfg: RunConfig, files: list[Path]) -> None:
    """Attach files to the run folder's tracker run, reopened from TRACKER_FILE (after training: the loss curve;
    after `eval`: `<run>/eval/<task>.json`). Files under the run folder keep their sub-folder (eval/...). Does
    nothing without a tracker, on ranks other than 0, or without files; warns when training never opened a run."""
    files = [Path(f) for f in files if Path(f).is_file()]
    tracker = cfg.logging.report_to
    if tracker not in TRACKERS or not files or not runtime.is_main():
        return
    where = read_records(run_dir).get(tracker)
    if where is None:
        log.warning("%s has no %s run recorded in %s: %s not logged", run_dir, tracker, TRACKER_FILE,
                    ", ".join(f.name for f in files))
        return
    (_log_mlflow_files if tracker == "mlflow" else _log_trackio_files)(where, cfg, Path(run_dir), files)
    log.info("%s: logged %s", tracker, ", ".join(_relative(run_dir, f) for f in files))


RUN_FILES = ("loss_curve.png", "reward_curve.png", "config.yaml", "training_params.json", "manifest.json")
"""What a finished run attaches to its tracker run (all written by rank 0 after training, secrets redacted)."""


def log_run_files(run_dir: Path, cfg: RunConfig) -> None:
    """The worker's call after a run finished: its plots, configurations and manifest, and any eval results. A
    tracker that cannot take them (a tracking server gone) is reported, not raised: the trained run stands."""
    run_dir = Path(run_dir)
    try:
        log_files(run_dir, cfg, [run_dir / name for name in RUN_FILES] + sorted((run_dir / "eval").glob("*.json")))
    except Exception as err:
        log.error("the run is saved, but its files could not be attached to the %s run: %s: %s",
                  cfg.logging.report_to, type(err).__name__, err)


def _relative(run_dir: Path, file: Path) -> str:
    try:
        return Path(file).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return Path(file).name


def _artifact_folder(run_dir: Path, file: Path) -> str | None:
    parent = Path(_relative(run_dir, file)).parent.as_posix()
    return None if parent == "." else parent
