"""Scoring a trained run (or any model folder) on lm-evaluation-harness tasks, through lm-eval's Python API.

The model is the one we load ourselves, as `generate` prompts it: the run's final model, or its LoRA adapter
merged into the base in memory (the same weights, and lm-eval's HF wrapper takes a plain transformers model), with
the run's saved tokenizer, which carries the chat template used in training. lm-eval's `simple_evaluate` scores it
with that template (`apply_chat_template`), on by default for a run trained under one, and the decision is
printed. Everything that can be checked is checked before the weights load: task names, task files and their data
(see tasks.py), then lm-eval builds the tasks (reads their data) and only then the model loads.

One process scores: lm-eval's data-parallel path needs an `accelerate launch` of the harness around a model it
loads itself, while ours is loaded (and its adapter merged) here; after training, rank 0 scores alone while the
other ranks leave, and on Slurm a one-GPU job does (eval.sbatch).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from launcher import atomic
from launcher.evaluation import tasks as task_checks
from launcher.evaluation.scores import EVAL_FOLDER, score_name


class EvalError(Exception):
    """Bad input found before the weights load: the message names the task, file or folder and the fix."""


class TaskError(EvalError):
    """Tasks that cannot be scored: one line per problem, each naming its task."""


@dataclass
class EvalSettings:
    """What to score and how; a run folder's config.yaml `eval` section gives the defaults, the flags override."""
    tasks: list[str]
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    apply_chat_template: bool | None = None
    """None: on when the model carries a chat template it was trained (or shipped) with."""


@dataclass
class Target:
    """The folder `tunelaunch eval` was given, and where its weights and tokenizer are."""
    folder: Path
    source: Path
    is_run: bool
    chat_template: str | None
    """The template prompts go through when apply_chat_template is on (a name for a run, `tokenizer` for a model
    folder that has one); None: plain text."""


def find_target(folder: Path) -> Target:
    """EvalError unless `folder` is a run folder with a model (final or a complete checkpoint) of a language
    model, or a model folder (config.json). Reads config files only."""
    from launcher.run_dir import model_source, read_config

    folder = Path(folder)
    if (folder / "config.yaml").is_file():
        from launcher.methods import METHODS

        cfg = read_config(folder)
        if METHODS[cfg.trainer.name].score_head:
            raise EvalError(f"{folder} is a {cfg.trainer.name} run: its model scores text with a value head, and "
                            "lm-eval tasks need a language model")
        source = model_source(folder)
        if source is None:
            raise EvalError(f"{folder} holds no model yet: no final model and no complete checkpoint")
        template = cfg.data.chat_template
        return Target(folder, source.resolve(), True, None if template in (None, "none") else template)
    if (folder / "config.json").is_file():
        return Target(folder, folder.resolve(), False, "tokenizer" if _has_chat_template(folder) else None)
    raise EvalError(f"{folder} is neither a run folder (with config.yaml) nor a model folder (with config.json)")


def _has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in `folder` carries a chat template, read from its files (no tokenizer load)."""
    if any((folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def run_settings(folder: Path) -> EvalSettings:
    """The `eval` section of a run folder's config.yaml (empty settings for a model folder)."""
    if not (Path(folder) / "config.yaml").is_file():
        return EvalSettings(tasks=[])
    from launcher.run_dir import read_config

    e = read_config(folder).eval
    return EvalSettings(list(e.tasks), e.limit, e.num_fewshot, e.batch_size, e.apply_chat_template)


def chat_decision(target: Target, wanted: bool | None) -> tuple[bool, str]:
    """Whether prompts go through the chat template, and the line that says so and why."""
    default = target.chat_template is not None
    why = (f"trained under the {target.chat_template} template" if target.is_run and default else
           "trained on plain text" if target.is_run else
           "its tokenizer carries one" if default else "its tokenizer has none")
    if wanted is None or wanted == default:
        flag = "--no-apply-chat-template" if default else "--apply-chat-template"
        return default, f"chat template: {'on' if default else 'off'} ({why}; {flag} to change)"
    if wanted and not _has_chat_template(target.source):
        raise EvalError(f"--apply-chat-template: {target.source}'s tokenizer has no chat template to prompt with")
    return wanted, f"chat template: {'on' if wanted else 'off'} (as asked, though {why})"


def output_folder(target: Target, output: str | os.PathLike | None) -> Path:
    """Where the results go: --output, else RUN/eval for a run, ./eval-<name> for a model folder."""
    if output:
        return Path(output)
    return target.folder / EVAL_FOLDER if target.is_run else Path(f"eval-{target.folder.resolve().name}")


def evaluate(folder: Path, settings: EvalSettings, out_dir: Path | None = None, base: Path | None = None,
             say=print) -> int:
    """Score `folder` on settings.tasks and write `<out>/<task>.json` for each. Bad input raises EvalError
    before any weights load. base: the folder task files are relative to (the working folder)."""
    base = Path(base or Path.cwd())
    target = find_target(Path(folder))
    problems = task_checks.check_tasks(settings.tasks, base)
    if problems:
        raise TaskError("\n".join(problems))
    chat, chat_line = chat_decision(target, settings.apply_chat_template)
    out_dir = output_folder(target, out_dir)
    loaded = load_tasks(settings.tasks, base)  # reads each task's data: a failure here costs no model load
    say(f"scoring {target.source} on {', '.join(loaded)}"
        f"{f' (the first {settings.limit} examples of each)' if settings.limit else ''}; {chat_line}", flush=True)
    lm = harness_model(target, settings.batch_size)
    stops = stop_at_end_of_turn(lm, target.chat_template or "tokenizer") if chat else []
    written = []
    for name, task in loaded.items():
        started = time.monotonic()
        results = score(lm, task, settings, chat, stops)
        written.append(write_results(out_dir, name, results))
        say(summary(results), flush=True)
        say(f"{name}: {time.monotonic() - started:.0f} s, written to {written[-1]}\n", flush=True)
    if target.is_run and out_dir.resolve() == (target.folder / EVAL_FOLDER).resolve():
        _record(target.folder, written)
    return 0


def _record(run_dir: Path, written: list[Path]) -> None:
    """The scores join the run's model card and manifest, and its mlflow/trackio run when it has one."""
    from launcher.model_card import record_scores
    from launcher.run_dir import read_config
    from launcher.trackers import log_files

    record_scores(run_dir)
    log_files(run_dir, read_config(run_dir), written)


def evaluate_run(run_dir: Path) -> int:
    """Score a finished run on its config.yaml `eval` section and write RUN/eval/<task>.json (called when training
    ends, on rank 0 alone, and by the Slurm scoring job as `tunelaunch eval RUN`). Task files named relatively are
    read from the working folder (the plan makes them absolute). 0 when scored (or nothing to score), 2 for bad
    input (printed)."""
    import sys

    settings = run_settings(run_dir)
    if not settings.tasks:
        return 0
    try:
        return evaluate(Path(run_dir), settings)
    except EvalError as err:
        print(explain(err, f"eval.tasks in {Path(run_dir) / 'config.yaml'}"), file=sys.stderr)
        return 2


def explain(err: EvalError, tasks_from: str) -> str:
    """The message for the console: task problems under where the tasks came from (`--tasks`, a config file)."""
    if not isinstance(err, TaskError):
        return str(err)
    lines = str(err).splitlines()
    return f"{tasks_from}: {lines[0]}" if len(lines) == 1 else f"{tasks_from}:\n" + "\n".join(f"  - {l}" for l in lines)


def load_tasks(tasks: list[str], base: Path) -> dict:
    """Each requested task built by lm-eval (its data read), keyed by the name its results are filed under.
    EvalError when lm-eval cannot build one (its data cannot be reached, its config is refused)."""
    manager = task_checks.task_manager(registry=any(not task_checks.is_task_file(t) for t in tasks))
    loaded = {}
    for task in tasks:
        try:
            spec = task_checks.task_spec(task, base)
            built = manager.load([spec])
        except Exception as err:  # lm-eval's own words on a task it cannot build; no weights are loaded yet
            raise TaskError(f"{task}: lm-eval could not build it: {type(err).__name__}: {err}") from err
        loaded[task_checks.task_name(task, base)] = built
    return loaded


def harness_model(target: Target, batch_size: int):
    """lm-eval's HF wrapper around the model we load: on the GPU (bf16 where it has it) else the CPU in fp32;
    a LoRA adapter merged into its base in memory."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from launcher.console import hide_model_file_bars
    from launcher.merge import load_merged

    hide_model_file_bars()
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    if not any(isinstance(f, _PassedModelNotice) for f in hf_logger.filters):
        hf_logger.addFilter(_PassedModelNotice())
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    source = target.source
    model = load_merged(source, dtype)
    if cuda:
        model.to(torch.device("cuda", torch.cuda.current_device()))
    tokenizer = AutoTokenizer.from_pretrained(source)
    return HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)


class _PassedModelNotice(logging.Filter):
    """lm-eval warns, twice, that a model passed as an object ignores its loading options and must not run under
    accelerate: we pass it on purpose, loaded as above, in one process."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("`pretrained` model kwarg is not of type `str`" in text
                    or "Passed an already-initialized model through `pretrained`" in text)


def stop_at_end_of_turn(lm, template: str) -> list[str]:
    """Make generation end at the template's end-of-turn, as `generate` does, where the tokenizer's eos is another
    token (lm-eval stops only at the eos and a task's `until`): the model's generation config gets both ids (a
    finished reply is then padded while the rest of its batch goes on), and the returned text goes into each
    generative task's `until` (the reply is cut there)."""
    from launcher.data.templates import stop_tokens

    ids = [i for i in stop_tokens(lm.tokenizer, template) if i is not None]
    lm.model.generation_config.eos_token_id = ids
    return [lm.tokenizer.convert_ids_to_tokens(i) for i in ids if i != lm.tokenizer.eos_token_id]


def score(lm, loaded: dict, settings: EvalSettings, chat: bool, stops: list[str]) -> dict:
    """lm-eval's results for one requested task (a group: with its subtasks), without the per-sample logs."""
    from lm_eval import simple_evaluate

    for task in loaded["tasks"].values():
        if task.get_config("output_type") == "generate_until" and stops:
            kwargs = dict(task.get_config("generation_kwargs") or {})
            until = kwargs.get("until") or []
            kwargs["until"] = [*([until] if isinstance(until, str) else until), *stops]
            task.set_config(key="generation_kwargs", value=kwargs)
    items = [*loaded.get("groups", {}).values()][:1] or [*loaded["tasks"].values()]
    results = simple_evaluate(model=lm, tasks=items, num_fewshot=settings.num_fewshot, limit=settings.limit,
                              apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=False,
                              batch_size=settings.batch_size, task_manager=task_checks.task_manager(registry=False))
    results.pop("samples", None)
    # what lm-eval's own results file records about the prompts (its EvaluationTracker's keys)
    results["chat_template"] = lm.chat_template(True) if chat else None
    results["fewshot_as_multiturn"] = chat
    return results


def write_results(out_dir: Path, name: str, results: dict) -> Path:
    """`<out>/<name>.json`: lm-eval's output, made JSON-safe as lm-eval's own writer does, written atomically."""
    from lm_eval.utils import handle_non_serializable

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name.replace(os.sep, '_')}.json"
    atomic.write_text(path, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    return path


def summary(results: dict) -> str:
    """task, metric, value, stderr, n-shot and version of every score, named as `runs` and the model card name
    them (scores.score_name)."""
    rows = [("task", "metric", "value", "stderr", "n-shot", "version")]
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            name = score_name(task, key)
            if name is None or not isinstance(value, (int, float)):
                continue
            metric, _, filter_name = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            shots, version = results.get("n-shot", {}).get(task, "-"), results.get("versions", {}).get(task, "-")
            rows.append((task, name.split("/", 1)[1], f"{value:.4f}",
                         f"{stderr:.4f}" if isinstance(stderr, (int, float)) else "-", str(shots), str(version)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
