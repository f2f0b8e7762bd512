"""Which lm-evaluation-harness tasks a run is scored on, checked before any weights load.

A task is either a name from lm-eval's registry (`arc_easy`, `hellaswag`, a group such as `mmlu`) or a task YAML
file (`samples/eval/pirate.yaml`) whose data may be local files. `check_tasks` finds a misspelt name, a YAML that
does not parse or lacks what lm-eval needs, and data files that are not there, without importing lm-eval's task
machinery (it pulls in `datasets`, and `plan` stays free of the training stack); `task_spec` turns a YAML file into
the config lm-eval loads, its data paths taken relative to the YAML file so it works from any working folder.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

from launcher import atomic
from launcher.config.errors import did_you_mean

YAML_SUFFIXES = (".yaml", ".yml")
OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")


def is_task_file(task: str) -> bool:
    return str(task).endswith(YAML_SUFFIXES)


def task_file(task: str, base: Path) -> Path:
    path = Path(task).expanduser()
    return path if path.is_absolute() else Path(base) / path


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval's own YAML dialect: `!function utils.process_docs` names a Python function beside the file; the
    check only needs to know the file parses, so the tag is read as its text."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path, _seen: frozenset = frozenset()) -> dict:
    """The YAML's mapping with its `include:` files merged under it (its own keys win), as lm-eval reads it.
    ValueError with the file and what is wrong."""
    path = path.resolve()
    if path in _seen:
        raise ValueError(f"{path}: includes itself (through {', '.join(p.name for p in _seen)})")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ValueError(f"{path}{where}: not valid YAML: {what}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a task file holds a mapping (`task: name`, `dataset_path: ...`), "
                         f"not {type(cfg).__name__}")
    includes = cfg.pop("include", None)
    merged: dict = {}
    for include in [includes] if isinstance(includes, str) else includes or []:
        included = task_file(include, path.parent)
        if not included.is_file():
            raise ValueError(f"{path}: include {include!r}: no such file {included}")
        merged.update({k: v for k, v in read_task_yaml(included, _seen | {path}).items() if k != "task_list"})
    return merged | cfg


def data_files(cfg: dict) -> dict[str, list[str]]:
    """`dataset_kwargs.data_files` by split (a bare string or list is lm-eval's `train` split, as in datasets)."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return {}
    if isinstance(files, (str, list)):
        files = {"train": files}
    return {split: [f] if isinstance(f, str) else list(f) for split, f in dict(files).items()}


def _local(entry: str, folder: Path) -> Path | None:
    """The local file a data path names, relative to the YAML's folder; None for a URL or a hub path."""
    if "://" in entry or entry.startswith("hf:"):
        return None
    return task_file(entry, folder)


def check_task_file(task: str, base: Path) -> list[str]:
    """What stops lm-eval from loading this task YAML, each with its fix; [] when it will load."""
    path = task_file(task, base)
    if not path.is_file():
        siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        return [f"{task}: no such task file ({path}).{did_you_mean(path.name, siblings, cutoff=0.8)}"]
    try:
        cfg = read_task_yaml(path)
    except ValueError as err:
        return [str(err)]
    if "group" in cfg and "task" not in cfg or isinstance(cfg.get("task"), list):
        return []  # a group lists other tasks (names or files): lm-eval checks each one as it loads them
    if "class" in cfg:
        return []  # a task written in Python: lm-eval builds it
    problems = []
    if not isinstance(cfg.get("task"), str):
        problems.append(f"{path}: no `task:` name; lm-eval files each task under one (`task: my_task`)")
    if not cfg.get("dataset_path") and not cfg.get("custom_dataset"):
        problems.append(f"{path}: no `dataset_path:`: `json` (or csv, parquet) with `dataset_kwargs.data_files`, "
                        "or a dataset on the Hub")
    output_type = cfg.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        problems.append(f"{path}: output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}."
                        f"{did_you_mean(output_type, OUTPUT_TYPES)}")
    if output_type == "multiple_choice" and "doc_to_choice" not in cfg:
        problems.append(f"{path}: a multiple_choice task needs `doc_to_choice:` (a column holding the choices, or "
                        "a list)")
    splits = [cfg[k] for k in ("test_split", "validation_split") if cfg.get(k)]
    if not splits:
        problems.append(f"{path}: no `test_split:` (or `validation_split:`): lm-eval scores the examples of one "
                        "of them")
    files = data_files(cfg)
    for split in splits if files and cfg.get("dataset_path") in ("json", "csv", "parquet", "text") else []:
        if split not in files:
            problems.append(f"{path}: split {split!r} is not among dataset_kwargs.data_files "
                            f"({', '.join(files)}).{did_you_mean(split, files)}")
    for entries in files.values():
        for entry in entries:
            local = _local(entry, path.parent)
            if local is not None and not any(local.parent.glob(local.name)):  # data_files may be a glob
                problems.append(f"{path}: data file {entry!r} is missing ({local}); paths are relative to the "
                                "task file")
    return problems


def check_tasks(tasks: list[str], base: Path) -> list[str]:
    """Every problem with these tasks, one message each naming the task and the fix ([] when all will load):
    unknown registry names (with the closest names), task files that are missing, do not parse, lack keys or
    name data files that are missing. Task files are read relative to `base`. No model and no lm-eval task
    machinery is loaded; registry names come from a list cached once per lm-eval version (`registry_names`)."""
    problems = []
    if not tasks:
        return ["no task given: name lm-eval tasks (arc_easy,hellaswag) or task YAML files"]
    for task in tasks:
        if is_task_file(task):
            problems += check_task_file(task, base)
        else:
            names = registry_names()
            if task not in names:
                problems.append(f"{task}: not an lm-eval task, group or tag.{did_you_mean(task, names, cutoff=0.8)}"
                                " (`tunelaunch eval --list-tasks` prints them all; a task file needs its .yaml "
                                "suffix)")
    return problems


def _cache_file() -> Path:
    from importlib.metadata import version

    from launcher.embedded import cache_root

    return cache_root() / "lm-eval" / f"tasks-{version('lm_eval')}.json"


@functools.cache
def registry_names() -> frozenset[str]:
    """Every task, group and tag name lm-eval knows. Building lm-eval's TaskManager indexes ~14,700 task YAML
    files (11 s on 2 CPU cores, and it imports `datasets`), so the names are kept in the cache folder, once per
    lm-eval version: a plan or a misspelt --tasks answers in well under a second after the first time."""
    cache = _cache_file()
    try:
        return frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    names = task_manager(registry=True).all_tasks
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cache, json.dumps(sorted(names)))
    return frozenset(names)


@functools.cache
def task_manager(registry: bool):
    """lm-eval's TaskManager, built once per process: with its registry (seconds) only when a task is named from
    it; task files alone need none."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=registry)


def task_spec(task: str, base: Path) -> str | dict:
    """What lm-eval's TaskManager.load takes for this task: a registry name as it is; a task file as its config,
    read by lm-eval's own YAML loader (its `!function`s imported from beside the file), with the local data
    files and dataset folder made absolute, because datasets would read them relative to the working folder."""
    if not is_task_file(task):
        return task
    from lm_eval.tasks._yaml_loader import load_yaml

    path = task_file(task, base).resolve()
    cfg = load_yaml(path)
    if not isinstance(cfg.get("task"), str):
        return str(path)  # a group: lm-eval reads its members itself
    files = data_files(cfg)
    if files:
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": {
            split: [str(_local(e, path.parent) or e) for e in entries] for split, entries in files.items()}}
    local_dataset = _local(str(cfg.get("dataset_path", "")), path.parent)
    if local_dataset is not None and cfg.get("dataset_path") and local_dataset.exists():
        cfg["dataset_path"] = str(local_dataset)
    return cfg


def task_name(task: str, base: Path) -> str:
    """The name lm-eval files a task's results under: a registry name, or the `task:` (or `group:`) of its file."""
    if not is_task_file(task):
        return task
    cfg = read_task_yaml(task_file(task, base))
    name = cfg.get("task") if isinstance(cfg.get("task"), str) else cfg.get("group")
    return str(name or Path(task).stem)
