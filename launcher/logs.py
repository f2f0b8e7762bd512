"""Logging for workers: the console for every rank, plus `<run>/train.log` for rank 0."""
from __future__ import annotations

import logging
from pathlib import Path

# bitsandbytes' CPU backend warns at import that an optional kernel package is missing; it falls back to its own
# kernel, so the line only alarms users (it was the first thing `prepare` printed).
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def quiet_noisy_imports() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


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
    quiet_noisy_imports()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    import transformers

    transformers.logging.set_verbosity_warning()
    if log_file is not None:
        transformers.logging.add_handler(handlers[-1])
