"""The command line's small promises, run as a user runs them (the console script in a subprocess): `--version` and
`--verbose` before or after the subcommand, no traceback when a pipe closes early (`plan | head`), `runs` on a
folder that does not exist, and help text for every positional argument."""
import subprocess

import pytest

from launcher import __version__
from launcher.cli import build_parser
from tests.conftest import REPO, cli_env, run_cli, tunelaunch


def test_version():
    out = run_cli("--version", cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"tunelaunch {__version__}"


@pytest.mark.parametrize("args", [("--verbose", "recipes"), ("recipes", "--verbose")])
def test_verbose_before_or_after_the_subcommand(args):
    out = run_cli(*args, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sft/chat_tiny" in out.stdout


def test_verbose_before_the_subcommand_reaches_it():
    assert build_parser().parse_args(["--verbose", "recipes"]).verbose is True
    assert build_parser().parse_args(["recipes"]).verbose is False


def test_a_pipe_closed_early_ends_without_a_traceback():
    """`tunelaunch plan ... | head -1`: the reader is gone before the plan is printed (closed at once here, so that
    every write meets the closed pipe, whatever the pipe's buffer would have held)."""
    proc = subprocess.Popen(tunelaunch("plan", "recipe=sft/chat_tiny"), cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as head does once it has its lines
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_runs_on_a_missing_folder_says_so(tmp_path):
    out = run_cli("runs", str(tmp_path / "nope"), cwd=REPO, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{tmp_path / 'nope'}: no such folder"


def test_every_positional_argument_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not a.option_strings and not a.help]
    assert not missing


def test_plan_prints_the_decisions_and_the_whole_configuration_only_when_asked():
    short = run_cli("plan", "recipe=sft/chat_tiny", cwd=REPO, timeout=300)
    full = run_cli("plan", "--show-config", "recipe=sft/chat_tiny", cwd=REPO, timeout=300)
    assert short.returncode == full.returncode == 0, short.stderr + full.stderr
    for out in (short.stdout, full.stdout):
        assert "Plan (valid):" in out and "Launch command:" in out
    assert "Resolved configuration" not in short.stdout and "--show-config" in short.stdout
    assert "Resolved configuration (secrets redacted):" in full.stdout and "  training:" in full.stdout
    assert len(full.stdout.splitlines()) > len(short.stdout.splitlines()) + 80


def test_evaluation_every_save_steps_is_stated_and_eval_steps_sets_it():
    stated = run_cli("plan", "recipe=sft/chat_tiny", "training.eval_strategy=steps", "training.save_steps=7",
                     cwd=REPO, timeout=300)
    assert stated.returncode == 0, stated.stderr
    assert "evaluation: every 7 steps (training.eval_steps null -> training.save_steps" in stated.stdout
    own = run_cli("plan", "recipe=sft/chat_tiny", "training.eval_strategy=steps", "training.eval_steps=3",
                  cwd=REPO, timeout=300)
    assert own.returncode == 0 and "evaluation: every" not in own.stdout
    bad = run_cli("plan", "recipe=sft/chat_tiny", "training.eval_strategy=steps", "training.eval_steps=0",
                  cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "training.eval_steps" in bad.stderr and "must be greater than 0, got 0" in bad.stderr
