"""Logging for workers: the console for every rank, plus `<run>/train.log` for rank 0."""
from __future__ import annotations

import logging
from pathlib import Path

def tracker_environment(report_to: str, run_dir: Path, project: str, environ: dict) -> dict:
    """Environment for the experiment tracker, so its files land in the run folder. wandb without an API key
    runs offline (nothing is sent; `wandb sync` uploads later) instead of prompting or failing. mlflow logs to
    MLFLOW_TRACKING_URI, else to the store `mlruns/` beside the run folder; trackio needs nothing here: its own
    local store (TRACKIO_DIR) unless the user names a Space (launcher.trackers)."""
    env = {}
    if report_to == "mlflow":
        from launcher.trackers import mlflow_environment

        env.update(mlflow_environment(run_dir, environ))
    if report_to == "tensorboard":
        env["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if report_to == "wandb":
        env["WANDB_DIR"] = str(run_dir)
        env.setdefault("WANDB_PROJECT", environ.get("WANDB_PROJECT", Path(project).name))
        if not environ.get("WANDB_API_KEY") and not environ.get("WANDB_MODE"):
            env["WANDB_MODE"] = "offline"
    return env


def setup_logging(log_file: Path | None) -> None:
    """Records to the console, less the libraries' noise (launcher.console), and all of them to `log_file`.
    Called before the libraries are imported, so that what they log at import time comes here too; Python's
    warnings and transformers' records take the same way."""
    from launcher import console

    console.quiet()
    shown = logging.StreamHandler()
    shown.addFilter(console.NoiseFilter())
    handlers: list[logging.Handler] = [shown]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logging.captureWarnings(True)
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_default_handler()  # its own stderr handler would print past the filter
    transformers.logging.enable_propagation()
    console.hide_model_file_bars()
