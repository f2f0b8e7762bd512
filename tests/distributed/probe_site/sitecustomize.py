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


def _worker_config():
    """CONFIG when this process is `python ... -m launcher.worker CONFIG`, else None."""
    argv = list(getattr(sys, "orig_argv", []))[1:]  # the interpreter's own arguments, then the program's
    while argv:
        arg = argv.pop(0)
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            argv[:1] = []  # an option's value
        elif arg.startswith("-m"):
            module = arg[2:] or (argv.pop(0) if argv else "")
            return argv[0] if module == "launcher.worker" and argv else None
        elif arg in ("-c", "-") or not arg.startswith("-"):
            return None  # the program is something else: -c, a script, stdin
    return None


def _chain():
    """Run the sitecustomize this one shadows, if the interpreter has one."""
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    here = os.path.dirname(os.path.abspath(__file__))
    spec = PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(module_from_spec(spec))


if any(os.environ.get(f"TUNELAUNCH_PROBE_{k}") for k in ("DIR", "FAIL_RANK", "STEP_SLEEP", "SAVE_SLEEP")):
    _config = _worker_config()
    if _config is not None:
        import tunelaunch_probe

        tunelaunch_probe.install(_config)
_chain()
