"""Logging for workers: the console for every rank, plus `<run>/train.log` for rank 0."""
from __future__ import annotations

import logging
from pathlib import Path


def tracker_environment(report_to: str, run_dir: Path, project: str, environ: dict) -> dict:
    """Environment for the experiment tracker, so its files land in the run folder. wandb without an API key
    runs offline (nothing is sent; `wandb sync` uploads later) instead of prompting or failing."""
    env = {}
    if report_to == "tensorboard":
        env["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if report_to == "wandb":
        env["WANDB_DIR"] = str(run_dir)
        env.setdefault("WANDB_PROJECT", environ.get("WANDB_PROJECT", Path(project).name))
        if not environ.get("WANDB_API_KEY") and not environ.get("WANDB_MODE"):
            env["WANDB_MODE"] = "offline"
    return env


def setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    import transformers

    transformers.logging.set_verbosity_warning()
    if log_file is not None:
        transformers.logging.add_handler(handlers[-1])
