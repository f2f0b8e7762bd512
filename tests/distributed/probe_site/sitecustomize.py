"""Test-only: puts the probe of tunelaunch_probe.py into the worker processes of a run.

tests/distributed/conftest.py puts this folder first on PYTHONPATH of the `tunelaunch train` it starts, so every
Python process of the job imports this file at startup: the CLI, `accelerate launch` / `torchrun` and their
workers. It does nothing (reads two environment variables and returns) unless TUNELAUNCH_PROBE_DIR or
TUNELAUNCH_PROBE_FAIL_RANK is set, and then only in processes started as `python [-u] -m launcher.worker CONFIG`
(what both launchers start): the launcher processes never import the probe, torch or transformers because of it.
A sitecustomize found further down sys.path still runs.
"""
import os
import sys

from tunelaunch_worker_argv import worker_config


def _chain():
    """Run the sitecustomize this one shadows, if the interpreter has one."""
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    here = os.path.dirname(os.path.abspath(__file__))
    spec = PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(module_from_spec(spec))


if any(os.environ.get(f"TUNELAUNCH_PROBE_{k}") for k in ("DIR", "FAIL_RANK", "STEP_SLEEP", "SAVE_SLEEP")):
    _config = worker_config()
    if _config is not None:
        import tunelaunch_probe

        tunelaunch_probe.install(_config)
_chain()
