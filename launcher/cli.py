"""`tunelaunch` subcommands. Thin: parse, call, print. Exit codes: 0 ok, 2 bad configuration, else the
worker's own exit code."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from launcher import __version__
from launcher.config.errors import EXIT_CONFIG


def cmd_plan(args) -> int:
    from launcher.report import render_plan

    plan = _plan_or_exit(args)
    if plan is None:
        return EXIT_CONFIG
    print(render_plan(plan, show_config=args.show_config))
    if not args.show_config:
        print("\n(`tunelaunch plan --show-config ...` prints the whole resolved configuration)")
    return 0


def cmd_train(args) -> int:
    from launcher.sweep import jobs as sweep_jobs

    jobs = sweep_jobs(args.config, args.overrides, args.multirun)
    if jobs is None:
        return EXIT_CONFIG
    if len(jobs) > 1 and _under_user_launcher():
        print("A sweep (-m) cannot run under torchrun or accelerate launch: each rank becomes a worker of one run. "
              "Start the sweep with `tunelaunch train -m ...`, which launches each trial itself.", file=sys.stderr)
        return EXIT_CONFIG
    codes = []
    for i, overrides in enumerate(jobs):
        if len(jobs) > 1:
            print(f"== sweep job {i + 1}/{len(jobs)}: {' '.join(overrides)}", flush=True)
        codes.append(_train_one(args.config, overrides))
    if len(jobs) > 1:
        print(f"== sweep: {codes.count(0)} of {len(jobs)} jobs succeeded")
    return next((c for c in codes if c != 0), 0)


def _train_one(config, overrides) -> int:
    from launcher import run_dir as runs
    from launcher.cluster.submit import in_batch_step
    from launcher.distributed import launch
    from launcher.planning import write_run
    from launcher.report import render_plan

    world = launch.user_launcher()
    if world is not None:  # a rank of the user's own torchrun / accelerate launch: it launched; we do not again
        return launch.train_as_rank(world, lambda: _plan_and_write_for(world, config, overrides))
    plan = _plan_or_exit(argparse.Namespace(config=config, overrides=overrides))
    if plan is None:
        return EXIT_CONFIG
    if plan.blockers:
        print("Cannot start training yet:\n" + "\n".join(f"  - {b}" for b in plan.blockers), file=sys.stderr)
        return EXIT_CONFIG
    slurm = plan.cfg.cluster.kind == "slurm"
    if slurm and not in_batch_step():
        print("cluster=slurm runs are started with `tunelaunch submit` (or `sbatch slurm/train.sbatch`)",
              file=sys.stderr)
        return EXIT_CONFIG
    print(render_plan(plan, brief=True), flush=True)
    folder, started = write_run(plan, overrides)
    if slurm:  # the batch step of `sbatch slurm/train.sbatch ...`: it becomes job.sbatch, written from the allocation
        from launcher.cluster import submit

        return submit.run_batch_step(folder)
    token = plan.hub_token()
    code = launch.run(started, {"HF_TOKEN": token} if token else None)  # the one way the token reaches them
    state, status = runs.read_state(folder), runs.read_status(folder)
    if status is runs.Status.PREEMPTED:
        print(f"\nStopped with {state.get('checkpoint')} saved in {folder}: run the same command again to resume.",
              file=sys.stderr)
        return launch.PREEMPTED
    if code != 0 and status is runs.Status.FINISHED:
        print(f"\nTraining finished and {folder} is complete, but the upload to the hub failed (see "
              f"{folder / 'train.log'}); retry with `tunelaunch push {folder}`.", file=sys.stderr)
        return 3
    if code != 0 and state.get("resume_not_started"):
        print(f"\nThe resume from {state['resume_not_started']} failed before training started (exit {code}); see "
              f"{folder / 'train.log'}. {folder} is as it was (config.yaml and the checkpoints unchanged): fix the "
              "cause, or resume from another checkpoint with training.resume_from=checkpoint-N (it has: "
              f"{', '.join(c.name for c in runs.complete_checkpoints(folder))}).", file=sys.stderr)
    elif code != 0:
        print(f"\nTraining failed (exit {code}); see {folder / 'train.log'}. Completed checkpoints are kept: "
              "run the same command again to resume.", file=sys.stderr)
    else:
        print(f"\nFinished: {folder}")
    return code


def _under_user_launcher() -> bool:
    from launcher.distributed import launch

    return launch.user_launcher() is not None


def _plan_and_write_for(world, config, overrides) -> Path | None:
    """Rank 0 under the user's launcher: plan for its world, print the plan (or every problem) once, and write
    the run folder; None when the run cannot start (every rank then exits 2)."""
    from launcher.planning import write_run
    from launcher.report import render_plan

    plan = _plan_or_exit(argparse.Namespace(config=config, overrides=overrides), user_launcher=world)
    if plan is None:
        return None
    refusals = [str(b) for b in plan.blockers]
    if plan.cfg.cluster.kind == "slurm":
        refusals.append("cluster=slurm runs are started with `tunelaunch submit`, not under torchrun or accelerate "
                        "launch")
    if refusals:
        print("Cannot start training:\n" + "\n".join(f"  - {r}" for r in refusals), file=sys.stderr, flush=True)
        return None
    print(render_plan(plan, brief=True), flush=True)
    token = plan.hub_token()
    if token:  # rank 0's worker pushes: the token reaches it as under our own launch, in HF_TOKEN only
        os.environ["HF_TOKEN"] = token
    return write_run(plan, overrides)[0]


def cmd_submit(args) -> int:
    """Plan every run (all errors first: nothing is submitted if one run is wrong), write the run folders
    once, then sbatch: one job, or one job array for a sweep."""
    from launcher.cluster import submit
    from launcher.planning import write_run
    from launcher.report import render_plan
    from launcher.sweep import jobs as sweep_jobs

    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0] == "cluster" for o in overrides):
        overrides.insert(0, "cluster=slurm")
    jobs = sweep_jobs(args.config, overrides, args.multirun)
    if jobs is None:
        return EXIT_CONFIG
    plans = [_plan_or_exit(argparse.Namespace(config=args.config, overrides=job)) for job in jobs]
    if any(p is None for p in plans):
        print(f"Nothing was submitted ({sum(p is None for p in plans)} of {len(plans)} run(s) refused).",
              file=sys.stderr)
        return EXIT_CONFIG
    problems = [f"{p.cfg.project_name}: {b}" for p in plans for b in p.blockers] + submit.check_submission(plans)
    if problems:
        print("Nothing was submitted:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return EXIT_CONFIG
    # A sweep's trials run in <project_name>/<swept values>: their common parent holds the array's files.
    base = plans[0].run_dir.parent if len(plans) > 1 else None
    if args.dry_run:
        for plan in plans:
            print(render_plan(plan, brief=True))
        if base is not None:
            print("\n" + submit.dry_run_array(plans[0].cfg, base, [p.run_dir for p in plans]))
        print("\n" + submit.dry_run(plans[0].cfg, plans[0].run_dir))
        return 0
    written = [(plan, *write_run(plan, job)) for plan, job in zip(plans, jobs)]
    try:
        if base is not None:
            array = submit.submit_array(plans[0].cfg, base, [folder for _, folder, _ in written])
            print(submit.submitted_array_message(plans[0].cfg, base, array, len(written)))
            return 0
        plan, folder, started = written[0]
        ids = submit.submit(plan.cfg, folder, started.command)
    except RuntimeError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(submit.submitted_message(plan.cfg, folder, ids))
    return 0


def cmd_recipes(args) -> int:
    from launcher import RECIPES_DIR
    from launcher.config.compose import recipe_names

    if args.name is None:
        for name in recipe_names():
            first = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()
            run = next((line.lstrip("# ").strip() for line in first if line.startswith("# Run:")), "")
            print(f"{name:28s} {run}")
        return 0
    path = RECIPES_DIR / f"{args.name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        print(f"no recipe '{args.name}'; `tunelaunch recipes` lists them", file=sys.stderr)
        return EXIT_CONFIG
    print(path.read_text(), end="")
    return 0


def cmd_explain(args) -> int:
    from launcher.config.aliases import keys_matching, other_names
    from launcher.config.parse import describe_type, walk_fields
    from launcher.config.schema import RunConfig

    # A key is found by any of its names (ours, AutoTrain's, other tools'), not only by our prefix.
    wanted = set(keys_matching(args.key)) if args.key else None
    shown = 0
    for key, tp, default, doc in walk_fields(RunConfig):
        if wanted is not None and key not in wanted:
            continue
        shown += 1
        print(f"{key}  ({describe_type(tp)}, default {yaml.safe_dump(default).strip().removesuffix('...').strip()})")
        print("    " + doc.replace("\n", "\n    "))
        if other_names(key):
            print(f"    Other tools call it: {', '.join(other_names(key))}.")
    if not shown:
        print(f"no key is named like '{args.key}' (ours, AutoTrain's or another tool's name)", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_generate(args) -> int:
    from launcher.prompt_inputs import PromptInputError, read_messages_file, read_tools_file

    try:  # the files first: a wrong one is refused before anything loads, even torch
        messages = read_messages_file(args.messages) if args.messages else None
        tools = read_tools_file(args.tools) if args.tools else None
    except PromptInputError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    from launcher import generate
    from launcher.prompt_inputs import check_renders

    try:
        if messages is not None or tools:
            tokenizer, chat = generate.load_tokenizer(args.target, args.template)
            if chat:
                what = f"--messages {args.messages}" if messages is not None else "--prompt"
                check_renders(tokenizer, messages or [{"role": "user", "content": args.prompt}], what, tools)
            elif tools:
                raise PromptInputError(f"--tools {args.tools}: {args.target} was trained without a chat template, "
                                       "so there is no tool rendering to prompt with: tools need a run trained "
                                       "with one (data.chat_template chatml, zephyr or the tokenizer's)")
        gen = generate.load(args.target, args.template)
    except (FileNotFoundError, PromptInputError) as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    if args.input_text and (messages is not None or not gen.chat):
        print("--input goes with --prompt on a run trained with a chat template (Alpaca data)", file=sys.stderr)
        return EXIT_CONFIG
    print(gen.complete(messages=messages, text=args.prompt, input_text=args.input_text,
                       max_new_tokens=args.max_new_tokens, tools=tools, show_reasoning=args.show_reasoning))
    return 0


def cmd_chat(args) -> int:
    from launcher.chat import main as chat

    return chat(args.target, args.template, args.system, args.max_new_tokens, args.temperature, args.show_prompt,
                tools_file=args.tools, show_reasoning=args.show_reasoning)


def cmd_merge(args) -> int:
    from launcher.merge import MergeError, merge_run

    try:
        out = merge_run(args.run_dir, args.output)
    except MergeError as err:
        print(f"merge failed: {err}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0


def cmd_push(args) -> int:
    from launcher.hub import push
    from launcher.run_dir import read_config

    folder = Path(args.run_dir)
    cfg = read_config(folder)  # the token comes from HF_TOKEN, never from the file
    if args.username:
        cfg.hub.username = args.username
    if not cfg.hub.username or not cfg.hub.token:
        print("push needs hub.username (in the run's config.yaml or --username) and HF_TOKEN", file=sys.stderr)
        return EXIT_CONFIG
    print(f"pushed to {push(folder, cfg)}")
    return 0


def cmd_runs(args) -> int:
    from launcher.runs import main as runs_main

    return runs_main(args)


def cmd_eval(args) -> int:
    from launcher.evaluation.command import main as eval_main

    return eval_main(args)


def cmd_export(args) -> int:
    from launcher.export.command import main as export_main

    return export_main(args)


def cmd_compare(args) -> int:
    from launcher.compare import main as compare_main

    return compare_main(args)


def cmd_logs(args) -> int:
    """Print the current Slurm job's log of a run; with -f follow it until the job leaves the queue."""
    from launcher.cluster.submit import jobs  # through the CLI's one door to launcher.cluster

    folder = Path(args.run_dir)
    if jobs.current_job(folder) is None:
        print(f"{folder} records no Slurm job ({folder / jobs.JOBS_FILE}); a local run writes {folder / 'train.log'}",
              file=sys.stderr)
        return 1
    if args.follow:
        try:
            jobs.follow(folder)
        except KeyboardInterrupt:  # Ctrl-C ends the following, not the job
            return 130
        return 0
    path = jobs.log_file(folder)
    if not path.is_file():
        print(f"no log yet: {path} (job {jobs.current_job(folder)}: {jobs.run_status(folder)})", file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def cmd_cancel(args) -> int:
    """scancel the queued jobs of a run, or of every run under a folder (a sweep); exit 1 when none was queued."""
    from launcher.cluster.submit import jobs  # through the CLI's one door to launcher.cluster

    try:
        found = jobs.cancel(Path(args.target))
    except RuntimeError as err:
        print(str(err), file=sys.stderr)
        return 1
    for job in found:
        if job.error:
            print(f"not cancelled: job {job.job_id} ({job.role}, {job.was}) of {job.run_dir}: {job.error}",
                  file=sys.stderr)
        else:
            print(f"cancelled job {job.job_id} ({job.role}, was {job.was}) of {job.run_dir}")
    if not found:
        print(f"nothing to cancel: no job recorded under {args.target} is queued", file=sys.stderr)
    return 1 if all(job.error for job in found) else 0


def cmd_prepare(args) -> int:
    from launcher.prepare import main as prepare

    return prepare(args.config, list(args.overrides), show=args.show)


def _plan_or_exit(args, user_launcher=None):
    """The plan, or None after printing every problem. `user_launcher`: the world of the user's own launcher
    this process is rank 0 of (launcher.distributed.external)."""
    from launcher.config.errors import ConfigError
    from launcher.planning import make_plan

    try:
        return make_plan(args.config, list(args.overrides), user_launcher=user_launcher)
    except ConfigError as err:
        print(err.report(), file=sys.stderr, flush=True)
        return None


VERBOSE_HELP = ("also show the libraries' routine notices (launcher/console.py lists what is hidden); or set "
                "TUNELAUNCH_VERBOSE=1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelaunch", description="Validate a fine-tuning run completely, then launch it.",
        epilog="Overrides are Hydra's: key=value, group=option (trainer=dpo, peft=lora, distributed=zero3), "
               "recipe=sft/quickstart. `tunelaunch explain` documents every key.")
    parser.add_argument("--version", action="version", version=f"tunelaunch {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", help="a config file: ours, or AutoTrain's config.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        return p

    plan = with_config(sub.add_parser("plan", help="validate, then print the decisions, notes and launch command"))
    plan.add_argument("--show-config", action="store_true", help="also print the whole resolved configuration")
    plan.set_defaults(func=cmd_plan)
    train = with_config(sub.add_parser("train", help="validate, then launch the training"))
    train.add_argument("-m", "--multirun", action="store_true", help="sweep: key=a,b runs one job per value")
    train.set_defaults(func=cmd_train)
    submit = with_config(sub.add_parser("submit", help="validate, write the run folder, then sbatch it on Slurm"))
    submit.add_argument("-m", "--multirun", action="store_true", help="sweep: one Slurm job array, a task per trial")
    submit.add_argument("--dry-run", action="store_true", help="print the plan and the batch script; write nothing")
    submit.set_defaults(func=cmd_submit)
    prepare = with_config(sub.add_parser(
        "prepare", help="check, tokenise and cache the data; show samples with the trained tokens marked"))
    prepare.add_argument("--show", type=int, default=2, metavar="N", help="rendered samples to print (default 2)")
    prepare.set_defaults(func=cmd_prepare)
    recipes = sub.add_parser("recipes", help="list the shipped recipes, or show one")
    recipes.add_argument("name", nargs="?", help="a recipe to print, e.g. sft/chat_tiny (none: list them all)")
    recipes.set_defaults(func=cmd_recipes)
    gen = sub.add_parser("generate", help="prompt a trained run with its training template")
    gen.add_argument("target", help="a run folder, or a model folder (with --template)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user message (or raw text for runs without a chat template)")
    source.add_argument("--messages", help="a JSON file holding a list of {role, content}")
    gen.add_argument("--input", dest="input_text", metavar="TEXT",
                     help="Alpaca-style runs: the input that goes with the instruction given as --prompt")
    gen.add_argument("--template", default="tokenizer", help="chat template for a plain model folder")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    gen.add_argument("--tools", metavar="FILE", help="a JSON file listing the functions' JSON schemas, rendered "
                     "into the prompt as a training row's `tools` column was")
    gen.add_argument("--show-reasoning", action="store_true",
                     help="print the reply's reasoning (its <think> block) too; hidden by default")
    gen.set_defaults(func=cmd_generate)
    chat = sub.add_parser("chat", help="a conversation with a trained run, prompted with its training template")
    chat.add_argument("target", help="a run folder, or a model folder")
    chat.add_argument("--system", help="the system message to start with (/system TEXT changes it)")
    chat.add_argument("--template", help="chat template for a plain model folder (default: its tokenizer's "
                                         "own, else none)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="longest reply (default 256)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampling")
    chat.add_argument("--tools", metavar="FILE", help="a JSON file listing the functions' JSON schemas the model "
                      "may call (rendered as in training)")
    chat.add_argument("--show-reasoning", action="store_true",
                      help="print each reply's reasoning (its <think> block) too; hidden by default")
    chat.add_argument("--show-prompt", action="store_true",
                      help="print each prompt as the model gets it, special tokens included (on stderr)")
    chat.set_defaults(func=cmd_chat)
    merge = sub.add_parser("merge", help="merge a run's LoRA adapter into its base model")
    merge.add_argument("run_dir", help="a finished LoRA run folder")
    merge.add_argument("--output", help="folder for the merged model (default RUN_DIR/merged)")
    merge.set_defaults(func=cmd_merge)
    push = sub.add_parser("push", help="upload a finished run to the hub (token from HF_TOKEN)")
    push.add_argument("run_dir", help="a finished run folder")
    push.add_argument("--username", help="hub user or organisation, if the run's config has none")
    push.set_defaults(func=cmd_push)
    runs = sub.add_parser("runs", help="a table of the runs under a folder (a sweep's trials): state, steps, losses, "
                                       "eval scores")
    from launcher.runs import add_arguments as runs_arguments

    runs_arguments(runs)
    runs.set_defaults(func=cmd_runs)
    # The modules behind these commands import only the standard library at the top: building the parser stays fast.
    from launcher.compare import add_arguments as compare_arguments
    from launcher.evaluation.command import add_arguments as eval_arguments
    from launcher.export.command import add_arguments as export_arguments

    evaluate = sub.add_parser("eval", help="score a run (or a model folder) on lm-evaluation-harness tasks")
    eval_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    export = sub.add_parser("export", help="write a run's merged model as GGUF (llama.cpp, Ollama) or safetensors")
    export_arguments(export)
    export.set_defaults(func=cmd_export)
    compare = sub.add_parser("compare", help="each prompt answered by every run, side by side")
    compare_arguments(compare)
    compare.set_defaults(func=cmd_compare)
    logs = sub.add_parser("logs", help="print the log of a run's current Slurm job (-f: follow it while queued)")
    logs.add_argument("run_dir", help="a run folder submitted to Slurm")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="print new lines as they come, across a requeue, until the job leaves the queue")
    logs.set_defaults(func=cmd_logs)
    cancel = sub.add_parser("cancel", help="scancel the queued Slurm jobs of a run, or of every run under a folder")
    cancel.add_argument("target", help="a run folder, or a folder of runs (a sweep)")
    cancel.set_defaults(func=cmd_cancel)
    explain = sub.add_parser("explain", help="document the configuration keys")
    explain.add_argument("key", nargs="?", help="a key or prefix, e.g. data or training.lr")
    explain.set_defaults(func=cmd_explain)
    for command in sub.choices.values():
        # SUPPRESS: a subcommand's own default would overwrite `tunelaunch --verbose plan`'s True
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from launcher import console

    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[console.VERBOSE_ENV] = "1"  # the workers inherit it
    console.quiet()
    try:
        return args.func(args)
    except BrokenPipeError:  # `tunelaunch plan | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails too
        return 1


if __name__ == "__main__":
    sys.exit(main())
