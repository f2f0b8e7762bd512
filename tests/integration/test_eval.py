"""`tunelaunch eval` on lm-evaluation-harness: a trained run scored on the shipped local task, input refused before
any weights load, and (slow) SmolLM2 before and after the quickstart's pirate fine-tune."""
from __future__ import annotations

import json
import shutil

import pytest

from launcher.evaluation.scores import read_scores
from tests.conftest import REPO, run_cli

PIRATE = REPO / "samples" / "eval" / "pirate.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step SFT of the tiny chat recipe that scores itself on the pirate task when training ends (eval.tasks)."""
    folder = tmp_path_factory.mktemp("eval")
    run = folder / "run"
    run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=4",
            f"eval.tasks=[{PIRATE}]", "eval.limit=4", cwd=folder, check=0)
    return run


def console_scores(stdout: str) -> dict[str, float]:
    """The summary table's rows (task, metric, value, ...) as {"task/metric": value}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["task", "metric", "value"])
    rows = [line.split() for line in lines[start + 1:]]
    # up to the line after the table ("pirate: 2 s, written to ...")
    rows = rows[:next((i for i, row in enumerate(rows) if len(row) != 6 or row[0].endswith(":")), len(rows))]
    return {f"{row[0]}/{row[1]}": float(row[2]) for row in rows}


def test_a_run_is_scored_when_training_ends_and_again_by_tunelaunch_eval(tiny_run, tmp_path):
    at_the_end = json.loads((tiny_run / "eval" / "pirate.json").read_text())  # eval.tasks, eval.limit=4
    assert at_the_end["n-samples"]["pirate"] == {"original": 24, "effective": 4}
    assert at_the_end["fewshot_as_multiturn"] is True and "<|im_start|>" in at_the_end["chat_template"]  # chatml run

    done = run_cli("eval", tiny_run, "--tasks", PIRATE, "--limit", "8", cwd=tmp_path, check=0)
    assert "chat template: on (trained under the chatml template" in done.stdout
    output = json.loads((tiny_run / "eval" / "pirate.json").read_text())
    assert "samples" not in output and output["n-samples"]["pirate"]["effective"] == 8
    assert output["config"]["limit"] == 8 and output["config"]["batch_size"] == 8
    metrics = output["results"]["pirate"]
    assert 0 <= metrics["acc,none"] <= 1 and 0 <= metrics["acc_norm,none"] <= 1
    scores = read_scores(tiny_run)
    assert scores == {"pirate/acc": metrics["acc,none"], "pirate/acc_norm": metrics["acc_norm,none"]}
    assert console_scores(done.stdout) == pytest.approx(scores, abs=5e-5)


def test_a_misspelt_task_is_refused_with_the_closest_name_before_any_weights_load(tiny_run, tmp_path):
    broken = tmp_path / "broken-run"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("checkpoint-*", "eval"))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    done = run_cli("eval", broken, "--tasks", "arc_easyy", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--tasks: arc_easyy: not an lm-eval task" in done.stderr and "Did you mean 'arc_easy'?" in done.stderr
    assert "Traceback" not in done.stderr
    # the same folder with a task that is fine reaches the weights, and they are garbage: the check came first
    loads = run_cli("eval", broken, "--tasks", PIRATE, "--limit", "1", cwd=tmp_path)
    assert loads.returncode not in (0, 2) and "safetensors" in loads.stderr.lower(), loads.stderr[-2000:]


def test_a_task_file_that_does_not_parse_is_refused(tiny_run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\ndataset_path: json\n  test_split: [\n")
    done = run_cli("eval", tiny_run, "--tasks", f"{bad},{tmp_path / 'missing.yaml'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{bad}, line 3" in done.stderr and "not valid YAML" in done.stderr
    assert "missing.yaml: no such task file" in done.stderr


@pytest.mark.slow
def test_the_quickstart_fine_tune_turns_smollm2_towards_the_pirate_answers(tmp_path):
    """SmolLM2-135M-Instruct scored on samples/eval/pirate.yaml before and after the quickstart's LoRA run: it
    prefers the plain answer before and the pirate one after."""
    from launcher.embedded import smollm2_folder

    limit = ("--limit", "12")  # half the questions: the two scorings cost ~20 s each instead of ~40
    before = tmp_path / "before"
    run_cli("eval", smollm2_folder(), "--tasks", "samples/eval/pirate.yaml", *limit, "--output", before, cwd=REPO,
            check=0)
    run = tmp_path / "quickstart"
    run_cli("train", "recipe=sft/quickstart", f"project_name={run}", cwd=tmp_path, timeout=1800, check=0)
    done = run_cli("eval", run, "--tasks", "samples/eval/pirate.yaml", *limit, cwd=REPO, check=0)
    assert "chat template: on (trained under the chatml template" in done.stdout
    acc_before = json.loads((before / "pirate.json").read_text())["results"]["pirate"]["acc,none"]
    acc_after = read_scores(run)["pirate/acc"]
    assert acc_before <= 0.25 and acc_after >= acc_before + 0.5, (acc_before, acc_after)
