"""Logging for workers: the console for every rank, plus `<run>/train.log` for rank 0."""
from __future__ import annotations

import logging
from pathlib import Path


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
