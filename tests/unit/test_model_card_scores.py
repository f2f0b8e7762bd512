"""Scores where users look (launcher.model_card.record_scores): a scored run's model card lists each eval score with
the harness version and the task's version, shots and samples, and its manifest.json records them; both are
refreshed from the run's eval/*.json, which here are lm-evaluation-harness's real output on the embedded tiny
model for two tiny local tasks (one scored higher-is-better, one lower-is-better).

`lm_eval_results(model_dir)` and `write_eval(run, results)` are imported by tests/unit/test_runs_scores.py too."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
import yaml

from launcher import manifest, model_card, run_dir as runs
from launcher.embedded import build_tiny_llama
from launcher.evaluation.scores import read_scores
from tests.unit.helpers import SAMPLES, plan

# Two local tasks lm-eval reads like its own (no download): a multiple-choice quiz (acc: higher is better) and the
# perplexity of the sample texts (word_perplexity: lower is better).
CHOICE_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs: {{data_files: {{test: {rows}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
"""
TEXT_TASK = f"""task: tiny_text
dataset_path: json
dataset_kwargs: {{data_files: {{test: {SAMPLES / 'text' / 'valid.jsonl'}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
metadata: {{version: 2.0}}
"""
LIMIT = 6


@functools.lru_cache(maxsize=None)
def lm_eval_results(model_dir: str) -> dict[str, dict]:
    """{task: what lm_eval.simple_evaluate returns for that task alone, less the per-sample logs} for the model
    folder, as `tunelaunch eval` keeps it in `<run>/eval/<task>.json`; computed once per model and test process."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tasks:
        rows = Path(tasks) / "quiz.jsonl"
        rows.write_text("".join(json.dumps({"question": f"What is {n} plus {n}?", "choices": [str(2 * n), str(n + 1),
                                                                                              str(n)], "answer": 0})
                                + "\n" for n in range(1, 9)))
        (Path(tasks) / "tiny_choice.yaml").write_text(CHOICE_TASK.format(rows=rows))
        (Path(tasks) / "tiny_text.yaml").write_text(TEXT_TASK)
        manager = TaskManager(include_path=tasks, include_defaults=False)
        lm = HFLM(pretrained=model_dir, device="cpu", batch_size=8)
        out = {}
        for task in ("tiny_choice", "tiny_text"):
            result = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=LIMIT)
            result.pop("samples", None)
            out[task] = json.loads(json.dumps(result, default=str))
    return out


def write_eval(run: Path, results: dict[str, dict]) -> None:
    (run / "eval").mkdir(parents=True, exist_ok=True)
    for task, doc in results.items():
        (run / "eval" / f"{task}.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return lm_eval_results(str(build_tiny_llama()))


def finished_run(tmp_path: Path) -> Path:
    """A finished run's folder as the worker leaves it: config.yaml, manifest.json and model card from the real
    writers (the weights are not needed: neither file reads them)."""
    cfg = plan(tmp_path).cfg
    folder = Path(cfg.project_name)
    folder.mkdir(parents=True)
    runs.write_config(folder, cfg)
    metrics = {"global_step": 4, "train_loss": 3.25, "saved": "full", "data_format": "messages", "train_rows": 40}
    manifest.write(folder, cfg, metrics)
    model_card.write(folder, cfg, metrics)
    runs.write_state(folder, runs.Status.FINISHED, **metrics)
    return folder


def test_record_scores_puts_every_score_with_its_versions_in_the_card_and_the_manifest(tmp_path, results):
    run = finished_run(tmp_path)
    card_before = (run / "README.md").read_text()
    assert "## Evaluation" not in card_before
    write_eval(run, results)
    model_card.record_scores(run)

    scores = read_scores(run)
    assert {"tiny_choice/acc", "tiny_text/word_perplexity", "tiny_text/bits_per_byte"} <= set(scores)
    doc = json.loads((run / "manifest.json").read_text())
    assert doc["eval"]["scores"] == scores
    assert doc["eval"]["higher_is_better"]["tiny_choice/acc"] is True
    assert doc["eval"]["higher_is_better"]["tiny_text/word_perplexity"] is False
    for task in ("tiny_choice", "tiny_text"):
        recorded = doc["eval"]["tasks"][task]
        assert recorded["version"] == results[task]["versions"][task]
        assert recorded["lm_eval_version"] == results[task]["lm_eval_version"]
        assert recorded["samples"] == LIMIT and recorded["file"] == f"eval/{task}.json"
    assert doc["metrics"]["global_step"] == 4 and doc["versions"]["transformers"]  # the rest kept as it was

    card = (run / "README.md").read_text()
    section = card.split("## Evaluation", 1)[1].split("## Use it", 1)[0]
    assert f"lm-evaluation-harness {results['tiny_choice']['lm_eval_version']}" in section
    rows = {line.split("|")[5].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in section.splitlines() if line.startswith("| tiny_")}
    assert rows["acc ↑"] == ["tiny_choice", "1.0", "0", "6 of 8", "acc ↑", f"{scores['tiny_choice/acc']:.4f}"]
    assert rows["word_perplexity ↓"][:3] == ["tiny_text", "2.0", "0"]
    assert rows["word_perplexity ↓"][5] == f"{scores['tiny_text/word_perplexity']:.4f}"
    # the card around the section is the one training wrote
    assert card.replace("## Evaluation" + section, "") == card_before
    assert yaml.safe_load(card.split("---")[1])["base_model"] == runs.read_config(run).model.name_or_path


def test_record_scores_again_drops_a_task_whose_file_is_gone(tmp_path, results):
    run = finished_run(tmp_path)
    write_eval(run, results)
    model_card.record_scores(run)
    (run / "eval" / "tiny_text.json").unlink()
    model_card.record_scores(run)
    doc = json.loads((run / "manifest.json").read_text())
    assert list(doc["eval"]["tasks"]) == ["tiny_choice"]
    assert "tiny_text" not in (run / "README.md").read_text()
    (run / "eval" / "tiny_choice.json").unlink()
    model_card.record_scores(run)
    assert "eval" not in json.loads((run / "manifest.json").read_text())
    assert "## Evaluation" not in (run / "README.md").read_text()


def test_record_scores_leaves_a_folder_that_is_not_a_finished_run_alone(tmp_path, results):
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("someone else's card\n")
    write_eval(model, results)
    model_card.record_scores(model)
    assert (model / "README.md").read_text() == "someone else's card\n"
    assert not (model / "manifest.json").exists()
