"""The tests share one repository path, one subprocess environment and one CLI runner, all in tests/conftest.py:
a test module that defines its own again (a second REPO, a `run_cli` of its own) is refused here, naming the file
and line, so that the copies do not drift apart again."""
import ast
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli, tunelaunch

TESTS = REPO / "tests"
SHARED = TESTS / "conftest.py"
# what tests/conftest.py alone defines: import these names from it instead
SHARED_NAMES = frozenset({"REPO", "run_cli", "cli_env", "tunelaunch"})


def _from_file(node: ast.AST) -> bool:
    """Whether an expression is built on `__file__` (Path(__file__).resolve().parents[2] and the like)."""
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def redefinitions(source: str, name: str) -> list[str]:
    """'file:line: what' for each shared name a module defines itself, and each path to the checkout it derives
    from its own location (`Path(__file__)...parents[N]`); a folder beside the module (`.parent / "x"`) is fine."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in SHARED_NAMES:
            found.append(f"{name}:{node.lineno}: defines {node.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in SHARED_NAMES:
                    found.append(f"{name}:{node.lineno}: assigns {target.id}")
        elif isinstance(node, ast.Attribute) and node.attr == "parents" and _from_file(node.value):
            found.append(f"{name}:{node.lineno}: derives the checkout from __file__")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_the_checker_finds_each_kind_of_copy():
    copies = ("REPO = Path(__file__).resolve().parents[2]\n"
              "SAMPLES = Path(__file__).resolve().parents[2] / 'samples'\n"
              "def run_cli(*args):\n    pass\n"
              "PROBE_SITE = Path(__file__).resolve().parent / 'probe_site'\n")
    assert redefinitions(copies, "t.py") == ["t.py:1: assigns REPO", "t.py:1: derives the checkout from __file__",
                                             "t.py:2: derives the checkout from __file__", "t.py:3: defines run_cli"]


def test_no_test_module_defines_the_shared_helpers_again():
    files = sorted(p for p in TESTS.rglob("*.py") if p != SHARED)
    assert len(files) > 50  # the whole tests tree was read
    found = [line for p in files for line in redefinitions(p.read_text(), str(p.relative_to(REPO)))]
    assert not found, ("import REPO, cli_env, run_cli and tunelaunch from tests/conftest.py instead of defining "
                       "them again:\n  " + "\n  ".join(found))


def test_the_shared_environment_runs_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    env = cli_env("/probe", HF_TOKEN=None, EXTRA="1")
    assert env["PYTHONPATH"].split(":") == ["/probe", str(REPO), "/elsewhere"]
    assert env["PATH"].split(":")[0] == str(Path(tunelaunch()[0]).parent) and env["PYTHONUNBUFFERED"] == "1"
    assert "HF_TOKEN" not in env and env["EXTRA"] == "1"


def test_run_cli_shows_the_output_of_an_unexpected_exit(tmp_path):
    assert run_cli("explain", "training.lr", cwd=tmp_path, timeout=120, check=0).stdout.startswith("training.lr")
    with pytest.raises(AssertionError, match=r"exited 2, not 0:(.|\n)*training\.nosuch"):
        run_cli("explain", "training.nosuch", cwd=tmp_path, timeout=120, check=0)
