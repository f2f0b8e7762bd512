"""What every test folder shares: the repository's path, the environment of the subprocesses tests start, and the
one way a test runs the `tunelaunch` command line.

Plain functions and constants; import them (`from tests.conftest import REPO, cli_env, run_cli, tunelaunch`):
    REPO                                          the checkout under test (its samples/, recipes/, README.md...)
    tunelaunch(*args) -> list[str]                the command line of `tunelaunch ARGS` (for Popen or a launcher)
    cli_env(*first_on_path, **variables) -> dict  this process's environment, set up to run this checkout's code
    run_cli(*args, cwd, env=None, timeout=600, input="", check=None) -> CompletedProcess
                                                  `tunelaunch ARGS` run to the end, as a user runs it
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

REPO = Path(__file__).resolve().parents[1]
# the console script of the environment running the tests; the bin folder goes first on PATH so that a README
# line run through bash (`tunelaunch train ...`) finds this one, as in an activated venv
BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = BIN / "tunelaunch"


def tunelaunch(*args: str | os.PathLike) -> list[str]:
    """The command line of `tunelaunch ARGS`: the installed console script, as a user types it, or
    `python -m launcher.cli` where the environment has no console script (a venv made without installing the
    project). Either runs this checkout's code once cli_env() is its environment."""
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "launcher.cli"]
    return [*command, *map(str, args)]


def cli_env(*first_on_path: str | os.PathLike, **variables: str | None) -> dict[str, str]:
    """This process's environment for a subprocess that runs this checkout:

    - PYTHONPATH: `first_on_path` (e.g. a folder with a sitecustomize.py that instruments the workers), then REPO,
      then what was there: the subprocess imports the code under test whichever checkout the venv was installed
      from, and the CLI passes PYTHONPATH on to its launchers and workers;
    - PATH: the venv's bin first (`tunelaunch`, `torchrun`, `accelerate` of this environment);
    - PYTHONUNBUFFERED=1: output arrives as printed, for tests that read a running process;
    - then `variables`; a None value removes the variable (e.g. HF_TOKEN=None: a user without a token)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*map(str, first_on_path), str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN), env.get("PATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None, env: Mapping[str, str | None] | None = None,
            timeout: float = 600, input: str = "", check: int | None = None) -> subprocess.CompletedProcess:
    """`tunelaunch ARGS` in a subprocess, run to its end in `cwd` (None: this process's), with cli_env(**env), text
    output captured; it fails the test after `timeout` seconds.

    input: what it reads on stdin; by default an empty stdin, so that a command that reads it never waits on the
    terminal running the tests. check: the exit code it must end with; another one fails the test showing the
    command and the tail of its output (without check, the test reads returncode itself)."""
    command = tunelaunch(*args)
    done = subprocess.run(command, cwd=cwd, env=cli_env(**(env or {})), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check is not None and done.returncode != check:
        raise AssertionError(f"`{' '.join(command)}` in {cwd} exited {done.returncode}, not {check}:\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return done


def readme_bash_block(heading: str) -> str:
    """The first ```bash block under a README heading (`## Your own data`), up to the next heading of any level:
    the README tests run it as written."""
    import re

    text = (REPO / "README.md").read_text()
    level = heading.split(" ", 1)[0]
    section = re.search(rf"^{re.escape(heading)}\n(.*?)^#{{2,{len(level)}}} ", text, re.S | re.M).group(1)
    return re.search(r"^```bash\n(.*?)^```", section, re.S | re.M).group(1)


def run_readme_block(heading: str, folder: Path, timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    """The README's bash block under `heading`, run as written (`set -euo pipefail` first) in `folder` with the
    repository's samples/ beside it, as in a checkout, and `tunelaunch` on the PATH as an activated venv has it.
    Returns the finished process and its stdout + stderr."""
    (folder / "samples").symlink_to(REPO / "samples")
    script = folder / "readme_block.sh"
    script.write_text("set -euo pipefail\n" + readme_bash_block(heading))
    done = subprocess.run(["bash", str(script)], cwd=folder, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    return done, done.stdout + done.stderr

