"""The probe reaches the workers from the tests alone (probe_site/ first on PYTHONPATH), and nowhere else.

Quick checks, in the default suite: the shipped package holds no test hook; the sitecustomize is a no-op in any
process that is not `-m launcher.worker` (the CLI, accelerate launch and torchrun start Python with the same
PYTHONPATH) and without the probe's variables; in a worker it installs the probe before the worker's code runs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.distributed.conftest import probe_env

SHOW = "import sys; print(sorted(m for m in ('tunelaunch_probe', 'torch', 'transformers') if m in sys.modules))"
RANK_1 = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "GROUP_RANK": "1"}


def _python(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _worker(cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`python -u -m launcher.worker CONFIG` as both launchers start it (-X importtime lists the imports on
    stderr); the extra argument makes the worker stop at once on its usage line."""
    return _python("-X", "importtime", "-u", "-m", "launcher.worker", str(cwd / "run" / "config.yaml"), "extra",
                   env=env, cwd=cwd)


def test_the_shipped_launcher_has_no_probe():
    assert not (REPO / "launcher" / "distributed" / "probe.py").exists()
    for path in (REPO / "launcher").rglob("*.py"):
        text = path.read_text()
        assert "TUNELAUNCH_PROBE" not in text and "tunelaunch_probe" not in text, path


def test_other_processes_do_not_load_the_probe(tmp_path):
    env = probe_env(tmp_path / "probe", {"TUNELAUNCH_PROBE_FAIL_RANK": "1", **RANK_1})
    for args in (["-c", SHOW], ["-u", "-c", SHOW], ["-X", "utf8", "-c", SHOW]):
        out = _python(*args, env=env, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "[]", (args, out.stdout, out.stderr)
    script = tmp_path / "launcher_like.py"  # a console script such as accelerate or torchrun
    script.write_text(SHOW)
    out = _python(str(script), "-m", "launcher.worker", "x.yaml", env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    assert not (tmp_path / "probe").exists()


def test_a_worker_without_the_variables_is_left_alone(tmp_path):
    out = _worker(tmp_path, probe_env(None, RANK_1))
    assert out.returncode == 2 and "usage" in out.stderr, out.stderr
    assert "sitecustomize" in out.stderr and "tunelaunch_probe" not in out.stderr


def test_a_worker_process_gets_the_probe_before_its_own_code(tmp_path):
    """The probe is installed at startup; its exit hook writes what it knew (no Trainer ran here)."""
    probe_dir = tmp_path / "probe"
    out = _worker(tmp_path, probe_env(probe_dir, RANK_1))
    assert out.returncode == 2 and "tunelaunch_probe" in out.stderr, out.stderr
    record = json.loads((probe_dir / "rank1.json").read_text())
    assert (record["rank_env"], record["world_size_env"], record["local_rank_env"], record["node_rank_env"]) == (
        1, 2, 1, 1)
    assert record["writes"] == [] and "rank" not in record
