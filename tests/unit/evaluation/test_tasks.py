"""Task files are checked before any model loads (`check_tasks`), and a task file's data is found from any working
folder (`task_spec`): the shipped samples/eval/pirate.yaml and broken copies of it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from launcher.evaluation.tasks import check_tasks, read_task_yaml, task_name, task_spec
from tests.unit.helpers import SAMPLES

PIRATE = SAMPLES / "eval" / "pirate.yaml"


def pirate_copy(folder: Path, **changes) -> Path:
    """samples/eval/pirate.yaml in `folder`, with keys changed (None removes one), its data file beside it."""
    cfg = yaml.safe_load(PIRATE.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "pirate.json").write_bytes((PIRATE.parent / "pirate.json").read_bytes())
    path = folder / "copy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_shipped_task_passes_from_its_relative_and_absolute_names(tmp_path):
    assert check_tasks(["samples/eval/pirate.yaml"], SAMPLES.parent) == []
    assert check_tasks([str(PIRATE)], tmp_path) == []
    assert task_name(str(PIRATE), tmp_path) == "pirate"


def test_a_task_file_that_is_not_there_names_the_path_and_the_closest_file(tmp_path):
    [problem] = check_tasks(["eval/pirat.yaml"], SAMPLES)
    assert "eval/pirat.yaml: no such task file" in problem and "Did you mean 'pirate.yaml'?" in problem


def test_a_task_file_that_does_not_parse_names_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: broken\ndataset_path: json\n  doc_to_text: [\n")
    [problem] = check_tasks([str(bad)], tmp_path)
    assert str(bad) in problem and "line 3" in problem and "not valid YAML" in problem


@pytest.mark.parametrize("changes, words", [
    ({"dataset_path": None}, "no `dataset_path:`"),
    ({"test_split": None}, "no `test_split:`"),
    ({"doc_to_choice": None}, "needs `doc_to_choice:`"),
    ({"output_type": "multiple_choise"}, "Did you mean 'multiple_choice'?"),
    ({"test_split": "tset"}, "split 'tset' is not among dataset_kwargs.data_files (test). Did you mean 'test'?"),
    ({"dataset_kwargs": {"data_files": {"test": "questions.json"}}}, "data file 'questions.json' is missing"),
])
def test_a_task_file_lacking_what_lm_eval_needs_says_which_key(tmp_path, changes, words):
    path = pirate_copy(tmp_path, **changes)
    problems = check_tasks([str(path)], tmp_path)
    assert len(problems) == 1 and words in problems[0] and str(path) in problems[0], problems


def test_included_files_are_merged_and_function_tags_read_as_text(tmp_path):
    pirate_copy(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("include: copy.yaml\ntask: pirate_two\nprocess_docs: !function utils.keep\n")
    cfg = read_task_yaml(child)
    assert cfg["task"] == "pirate_two" and cfg["dataset_path"] == "json" and cfg["process_docs"].endswith("utils.keep")
    assert check_tasks([str(child)], tmp_path) == [] and task_name(str(child), tmp_path) == "pirate_two"


def test_a_task_files_data_is_read_relative_to_the_file_from_any_working_folder(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)  # no pirate.json here: a path relative to the working folder would not load
    spec = task_spec(os.path.relpath(PIRATE, tmp_path), tmp_path)  # ../../work/main/samples/...
    assert Path(spec["dataset_kwargs"]["data_files"]["test"][0]).is_absolute()
    task = TaskManager(include_defaults=False).load([spec])["tasks"]["pirate"]
    docs = list(task.test_docs())
    assert len(docs) == 24 and all(len(d["choices"]) == 2 and d["answer"] == 0 for d in docs)
