"""`tunelaunch compare A B --prompts FILE`: each prompt answered by every run, each answer the one `generate` gives
(its own template, greedy); a bad prompts file or target refused (exit 2) before any weights load. With a real
two-trial sweep (slow): `runs --plot` draws both runs' curves in one PNG, and `compare` puts them side by side."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from launcher import generate
from launcher.compare import read_prompts
from launcher.embedded import build_tiny_llama
from launcher.runs import collect, curves
from tests.conftest import run_cli
from tests.unit.test_runs_scores import reseeded_tiny

PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow and say why the sky is blue."]


def blocks(stdout: str, targets: list) -> list[dict[str, str]]:
    """compare's output as [{"prompt": ..., TARGET: answer, ...}] per block; answers without their whitespace (the
    wrapping breaks lines, inside a long word too)."""
    labels = "|".join(re.escape(str(t)) for t in targets)
    out = []
    for block in re.split(r"^── prompt \d+/\d+ \([^)]*\) ─*\n", stdout, flags=re.M)[1:]:
        parts = re.split(rf"^\[({labels})\]\n", block, flags=re.M)
        entry = {"prompt": parts[0].strip()}
        for target, answer in zip(parts[1::2], parts[2::2]):
            entry[target] = "".join(answer.split())
        out.append(entry)
    return out


def as_shown(answer: str) -> str:
    return "".join(answer.split()) or "(emptyanswer)"


def weightless_copy(tmp_path: Path) -> Path:
    """The tiny model's folder without its weights: a command that loads them fails, one that reads the
    tokenizer alone does not."""
    folder = tmp_path / "no-weights"
    shutil.copytree(build_tiny_llama(), folder)
    (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("name,content,expected", [
    ("p.jsonl", '{"prompt": "hi"}\n\n{"prompt": "a", "messages": []}\n',
     'line 3: expected an object with either "prompt" or "messages"'),
    ("p.jsonl", '{"prompt": "hi"}\nnot json\n', "line 2: not JSON"),
    ("p.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
     "line 1: the last turn is the assistant's"),
    ("p.json", '[{"prompt": "hi"}, {"prompt": ""}]', 'item 2: "prompt" must be a non-empty string'),
    ("p.txt", "\n\n", "no prompts in it"),
])
def test_a_bad_prompts_file_is_refused_naming_the_line_before_weights_load(tmp_path, name, content, expected):
    prompts = tmp_path / name
    prompts.write_text(content)
    model = weightless_copy(tmp_path)
    done = run_cli("compare", model, model, "--prompts", prompts, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().startswith(f"--prompts {prompts}") and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not done.stdout


def test_a_target_that_is_neither_a_run_nor_a_model_is_refused(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    done = run_cli("compare", build_tiny_llama(), tmp_path, "--prompts", prompts, cwd=tmp_path)
    assert done.returncode == 2 and f"{tmp_path} is neither a run folder" in done.stderr, done.stderr
    done = run_cli("compare", build_tiny_llama(), "--prompts", prompts, cwd=tmp_path)
    assert done.returncode == 2 and "two or more" in done.stderr


def test_every_target_answers_every_prompt_as_generate_would(tmp_path):
    other = reseeded_tiny(tmp_path / "reseeded", seed=4)
    tiny = build_tiny_llama()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    done = run_cli("compare", tiny, other, "--prompts", prompts, "--max-new-tokens", "16", cwd=tmp_path, check=0)
    shown = blocks(done.stdout, [tiny, other])
    assert [b["prompt"] for b in shown] == PROMPTS
    assert max(map(len, done.stdout.splitlines())) <= 100  # wrapped for a terminal
    for target in (tiny, other):
        gen = generate.load(target)
        expected = [gen.complete(text=p, max_new_tokens=16) for p in PROMPTS]
        assert [b[str(target)] for b in shown] == [as_shown(e) for e in expected]
    assert [b[str(tiny)] for b in shown] != [b[str(other)] for b in shown]  # two models, two sets of answers


@pytest.mark.slow
def test_a_sweep_plotted_and_compared(tmp_path):
    """A real two-trial sweep (`train -m`): `runs --plot` draws both trials' training and eval loss in one PNG each;
    `compare` answers a conversation and a plain prompt with each trial through its chat template."""
    import matplotlib.image

    sweep = tmp_path / "sweep"
    run_cli("train", "-m", "recipe=sft/chat_tiny", f"project_name={sweep}", "training.max_steps=4", "logging.steps=1",
            "training.eval_strategy=steps", "training.eval_steps=2", "training.lr=1e-3,1e-2", cwd=tmp_path, check=0)
    rows = collect(sweep)
    assert len(rows) == 2
    for metric, key in (("train_loss", "loss"), ("eval_loss", "eval_loss")):
        drawn = dict(curves(rows, metric))
        for row in rows:
            history = json.loads((row.folder / "trainer_state.json").read_text())["log_history"]
            assert drawn[row.run] == [(h["step"], h[key]) for h in history if key in h] and len(drawn[row.run]) >= 2
    done = run_cli("runs", sweep, "--plot", "train_loss", cwd=tmp_path, check=0)
    assert done.stdout.strip() == str(sweep / "runs_train_loss.png")
    out = tmp_path / "plots" / "eval.png"
    done = run_cli("runs", sweep, "--plot", "eval_loss", "--output", out, cwd=tmp_path, check=0)
    assert done.stdout.strip() == str(out)
    for png in (sweep / "runs_train_loss.png", out):
        assert matplotlib.image.imread(png).shape[:2] == (450, 800)
    done = run_cli("runs", sweep, "--plot", "rewards", cwd=tmp_path)
    assert done.returncode == 2 and "train_loss" in done.stderr and "eval_loss" in done.stderr

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": PROMPTS[0]}]}) + "\n"
                       + json.dumps({"prompt": PROMPTS[1]}) + "\n")
    trials = [row.folder for row in rows]
    done = run_cli("compare", *trials, "--prompts", prompts, "--max-new-tokens", "24", cwd=tmp_path, check=0)
    shown = blocks(done.stdout, trials)
    assert shown[0]["prompt"] == f"system: Be brief.\nuser: {PROMPTS[0]}" and shown[1]["prompt"] == PROMPTS[1]
    parsed = read_prompts(prompts)
    for trial in trials:
        gen = generate.load(trial)
        assert gen.chat  # prompted through chatml, the template it was trained with
        expected = [gen.complete(messages=p.messages, text=p.text, max_new_tokens=24) for p in parsed]
        assert [b[str(trial)] for b in shown] == [as_shown(e) for e in expected]
