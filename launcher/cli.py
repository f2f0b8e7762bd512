"""`tunelaunch` subcommands. Thin: parse, call, print. Exit codes: 0 ok, 2 bad configuration, else the
worker's own exit code."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

EXIT_CONFIG = 2


def cmd_plan(args) -> int:
    from launcher.report import render_plan

    plan = _plan_or_exit(args)
    if plan is None:
        return EXIT_CONFIG
    print(render_plan(plan))
    return 0


def cmd_train(args) -> int:
    from launcher.sweep import expand

    jobs = expand(args.overrides) if args.multirun else [(args.overrides, None)]
    codes = []
    for i, (overrides, subdir) in enumerate(jobs):
        if len(jobs) > 1:
            print(f"== sweep job {i + 1}/{len(jobs)}: {' '.join(overrides)}", flush=True)
        if subdir:
            base = _base_project_name(args.config, overrides)
            if base is None:
                return EXIT_CONFIG
            overrides = [*overrides, f"project_name={base}/{subdir}"]
        codes.append(_train_one(args.config, overrides))
    if len(jobs) > 1:
        print(f"== sweep: {codes.count(0)} of {len(jobs)} jobs succeeded")
    return next((c for c in codes if c != 0), 0)


def _train_one(config, overrides) -> int:
    from launcher import run_dir as runs
    from launcher.config.autotrain import training_params
    from launcher.distributed.launch import accelerate_config, launch_command, render, worker_env
    from launcher.logs import tracker_environment
    from launcher.report import render_plan

    plan = _plan_or_exit(argparse.Namespace(config=config, overrides=overrides))
    if plan is None:
        return EXIT_CONFIG
    if plan.blockers:
        print("Cannot start training yet:\n" + "\n".join(f"  - {b}" for b in plan.blockers), file=sys.stderr)
        return EXIT_CONFIG
    print(render_plan(plan, brief=True), flush=True)
    folder = runs.open_run_dir(plan.cfg)
    runs.write_config(folder, plan.cfg)
    runs.write_json(folder / "training_params.json", training_params(plan.cfg))
    runs.write_yaml(folder / "accelerate_config.yaml",
                    accelerate_config(plan.cfg, plan.launch, plan.hardware, folder))
    if plan.launch.backend == "deepspeed":
        from launcher.distributed.deepspeed import FILE_NAME, deepspeed_config

        runs.write_json(folder / FILE_NAME, deepspeed_config(plan.cfg, plan.launch.world_size,
                                                             plan.launch.hidden_size, plan.hardware.gpus > 0))
    cmd = launch_command(plan.cfg, plan.launch, folder)
    runs.write_json(folder / "launch.json", {"command": render(cmd), "backend": plan.launch.backend,
                                             "world_size": plan.launch.world_size, "hardware": plan.hardware.kind})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    env.update(tracker_environment(plan.cfg.logging.report_to, folder, plan.cfg.project_name, env))
    env.update(worker_env(plan.cfg, plan.launch, plan.hardware))  # DS_ACCELERATOR, TORCH_EXTENSIONS_DIR
    token = plan.hub_token()
    if token:
        env["HF_TOKEN"] = token  # the one way the secret reaches the workers
    code = subprocess.run(cmd, env=env).returncode
    if code != 0 and runs.run_state(folder) is runs.RunState.FINISHED:
        print(f"\nTraining finished and {folder} is complete, but the upload to the hub failed (see "
              f"{folder / 'train.log'}); retry with `tunelaunch push {folder}`.", file=sys.stderr)
        return 3
    if code != 0:
        print(f"\nTraining failed (exit {code}); see {folder / 'train.log'}. Completed checkpoints are kept: "
              "run the same command again to resume.", file=sys.stderr)
    else:
        print(f"\nFinished: {folder}")
    return code


def _base_project_name(config, overrides) -> str | None:
    from launcher.config.compose import compose
    from launcher.config.errors import ConfigError

    try:
        return compose(config, overrides).config.project_name
    except ConfigError as err:
        print(err.report(), file=sys.stderr)
        return None


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
    from launcher.config.parse import describe_type, walk_fields
    from launcher.config.schema import RunConfig

    shown = 0
    for key, tp, default, doc in walk_fields(RunConfig):
        if args.key and not key.startswith(args.key):
            continue
        shown += 1
        print(f"{key}  ({describe_type(tp)}, default {yaml.safe_dump(default).strip().removesuffix('...').strip()})")
        print("    " + doc.replace("\n", "\n    "))
    if not shown:
        print(f"no key starts with '{args.key}'", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_generate(args) -> int:
    import json

    from launcher import generate

    target = Path(args.target)
    if (target / "config.yaml").is_file():
        gen = generate.from_run(target)
    elif target.is_dir() and (target / "config.json").is_file():
        gen = generate.from_base(str(target), args.template)
    else:
        print(f"{target} is neither a run folder (with config.yaml) nor a model folder", file=sys.stderr)
        return EXIT_CONFIG
    messages = json.loads(Path(args.messages).read_text()) if args.messages else None
    if args.input_text and (messages is not None or not gen.chat):
        print("--input goes with --prompt on a run trained with a chat template (Alpaca data)", file=sys.stderr)
        return EXIT_CONFIG
    print(gen.complete(messages=messages, text=args.prompt, input_text=args.input_text,
                       max_new_tokens=args.max_new_tokens))
    return 0


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
    from launcher.worker import load_resolved

    folder = Path(args.run_dir)
    cfg = load_resolved(folder / "config.yaml")  # the token comes from HF_TOKEN, never from the file
    if args.username:
        cfg.hub.username = args.username
    if not cfg.hub.username or not cfg.hub.token:
        print("push needs hub.username (in the run's config.yaml or --username) and HF_TOKEN", file=sys.stderr)
        return EXIT_CONFIG
    print(f"pushed to {push(folder, cfg)}")
    return 0


def cmd_prepare(args) -> int:
    from launcher.prepare import main as prepare

    return prepare(args.config, list(args.overrides), show=args.show)


def _plan_or_exit(args):
    from launcher.config.errors import ConfigError
    from launcher.planning import make_plan

    try:
        return make_plan(args.config, list(args.overrides))
    except ConfigError as err:
        print(err.report(), file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelaunch", description="Validate a fine-tuning run completely, then launch it.",
        epilog="Overrides are Hydra's: key=value, group=option (trainer=dpo, peft=lora, distributed=zero3), "
               "recipe=sft/quickstart. `tunelaunch explain` documents every key.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", help="a config file: ours, or AutoTrain's config.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        return p

    with_config(sub.add_parser("plan", help="validate and print the resolved config and launch command")
                ).set_defaults(func=cmd_plan)
    train = with_config(sub.add_parser("train", help="validate, then launch the training"))
    train.add_argument("-m", "--multirun", action="store_true", help="sweep: key=a,b runs one job per value")
    train.set_defaults(func=cmd_train)
    prepare = with_config(sub.add_parser(
        "prepare", help="check, tokenise and cache the data; show samples with the trained tokens marked"))
    prepare.add_argument("--show", type=int, default=2, metavar="N", help="rendered samples to print (default 2)")
    prepare.set_defaults(func=cmd_prepare)
    recipes = sub.add_parser("recipes", help="list the shipped recipes, or show one")
    recipes.add_argument("name", nargs="?")
    recipes.set_defaults(func=cmd_recipes)
    gen = sub.add_parser("generate", help="prompt a trained run with its training template")
    gen.add_argument("target", help="a run folder, or a model folder (with --template)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user message (or raw text for runs without a chat template)")
    source.add_argument("--messages", help="a JSON file holding a list of {role, content}")
    gen.add_argument("--input", dest="input_text", metavar="TEXT",
                     help="Alpaca-style runs: the input that goes with the instruction given as --prompt")
    gen.add_argument("--template", default="tokenizer", help="chat template for a plain model folder")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.set_defaults(func=cmd_generate)
    merge = sub.add_parser("merge", help="merge a run's LoRA adapter into its base model")
    merge.add_argument("run_dir")
    merge.add_argument("--output", help="folder for the merged model (default RUN_DIR/merged)")
    merge.set_defaults(func=cmd_merge)
    push = sub.add_parser("push", help="upload a finished run to the hub (token from HF_TOKEN)")
    push.add_argument("run_dir")
    push.add_argument("--username", help="hub user or organisation, if the run's config has none")
    push.set_defaults(func=cmd_push)
    explain = sub.add_parser("explain", help="document the configuration keys")
    explain.add_argument("key", nargs="?", help="a key or prefix, e.g. data or training.lr")
    explain.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    from launcher.logs import quiet_noisy_imports

    quiet_noisy_imports()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
