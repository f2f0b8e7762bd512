"""`tunelaunch eval RUN_DIR|MODEL [--tasks t1,t2] [--limit N] [--num-fewshot K] [--batch-size B]
[--apply-chat-template/--no-apply-chat-template] [--output DIR]`.

Only the standard library is imported at the top: the CLI builds every subcommand's parser on each call.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2  # as launcher.config.errors.EXIT_CONFIG: bad input, nothing loaded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", metavar="RUN_DIR|MODEL",
                        help="a run folder (its config.yaml `eval` section gives the defaults; scores go to "
                             "RUN/eval/<task>.json) or a model folder")
    parser.add_argument("--tasks", type=_task_list, metavar="T1,T2",
                        help="comma-separated lm-eval task names (arc_easy,hellaswag) or task YAML files "
                             "(samples/eval/pirate.yaml); default: the run's eval.tasks")
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N examples of each task")
    parser.add_argument("--num-fewshot", type=int, metavar="K",
                        help="examples shown before each question (default: the task's)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help="examples per forward pass (default: the run's, else 8)")
    parser.add_argument("--apply-chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="prompt through the model's chat template (default: on for runs trained under one "
                             "and for model folders whose tokenizer carries one)")
    parser.add_argument("--output", metavar="DIR",
                        help="folder for <task>.json (default: RUN/eval, or ./eval-<name> for a model folder)")
    parser.add_argument("--list-tasks", action="store_true", help="print every lm-eval registry task name and exit")


def _task_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        print("tunelaunch eval needs lm-evaluation-harness: pip install 'tunelaunch[eval]' (or lm-eval)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from launcher.evaluation import tasks as task_checks

    if args.list_tasks:
        print("\n".join(sorted(task_checks.registry_names())))
        return 0
    if not args.target:
        print("tunelaunch eval: give a run folder or a model folder (or --list-tasks)", file=sys.stderr)
        return EXIT_BAD_INPUT
    from launcher.evaluation.run import EvalError, evaluate, explain, run_settings

    try:
        settings = run_settings(Path(args.target))
    except (ValueError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    for field in ("tasks", "limit", "num_fewshot", "batch_size", "apply_chat_template"):
        if getattr(args, field) is not None:
            setattr(settings, field, getattr(args, field))
    for name, value, least in (("--limit", settings.limit, 1), ("--num-fewshot", settings.num_fewshot, 0),
                               ("--batch-size", settings.batch_size, 1)):
        if value is not None and value < least:
            print(f"{name} {value}: {least} or more", file=sys.stderr)
            return EXIT_BAD_INPUT
    if not settings.tasks:
        print(f"no tasks: give --tasks (or set eval.tasks in {args.target}'s config.yaml). "
              "`tunelaunch eval --list-tasks` lists lm-eval's; samples/eval/pirate.yaml is a local one",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    source = "--tasks" if args.tasks is not None else f"eval.tasks in {Path(args.target) / 'config.yaml'}"
    try:
        return evaluate(Path(args.target), settings, args.output)
    except EvalError as err:
        print(explain(err, source), file=sys.stderr)
        return EXIT_BAD_INPUT
