"""Cross-field rules of a configuration. Each rule is a small function; `validate` runs them all and returns
every problem, so one report lists everything to fix."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig

Rule = Callable[[RunConfig], Iterator[Problem]]
RULES: list[Rule] = []
TEMPLATES = ("none", "chatml", "zephyr", "alpaca", "tokenizer")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def validate(cfg: RunConfig) -> list[Problem]:
    return [p for check in RULES for p in check(cfg)]


def effective_block_size(cfg: RunConfig) -> int:
    """block_size -1 means automatic: the model's length, capped at 1024 (AutoTrain's choice)."""
    return cfg.data.block_size if cfg.data.block_size != -1 else min(1024, cfg.model.max_length)


@rule
def model_given(cfg):
    path = cfg.model.name_or_path
    if not path:
        yield Problem("model.name_or_path", "no base model: give a hub id (org/name) or a local folder")
        return
    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local:
        if not local.is_dir():
            hint = " (build it with: python -m launcher.embedded smollm2)" if local.name.startswith("SmolLM2") else ""
            yield Problem("model.name_or_path", f"folder not found: {local}{hint}")
        elif cfg.model.gguf_file:
            if not (local / cfg.model.gguf_file).is_file():
                yield Problem("model.gguf_file", f"{cfg.model.gguf_file} not found in {local}")
        elif not (local / "config.json").is_file():
            yield Problem("model.name_or_path", f"{local} holds no config.json: not a transformers model folder")
    elif not _HUB_ID.match(path):
        yield Problem("model.name_or_path", f"'{path}' is neither an existing folder nor a hub id (org/name)")


@rule
def lengths(cfg):
    max_len, block = cfg.model.max_length, cfg.data.block_size
    if max_len < 1:
        yield Problem("model.max_length", f"must be positive, got {max_len}")
        return
    if block != -1 and block < 1:
        yield Problem("data.block_size", f"must be a positive length or -1 (automatic), got {block}")
    if block > max_len:
        yield Problem("data.block_size / model.max_length",
                      f"block_size {block} exceeds model max length {max_len}: lower block_size "
                      f"or raise the model max length (training would error or give nan losses)")
    eff = effective_block_size(cfg)
    for name, value in (("max_prompt_length", cfg.data.max_prompt_length),
                        ("max_completion_length", cfg.data.max_completion_length)):
        if value is None:
            continue
        if value < 1:
            yield Problem(f"data.{name}", f"must be positive, got {value}")
        elif value > max_len:
            yield Problem(f"data.{name} / model.max_length",
                          f"{name} {value} exceeds model max length {max_len}: lower {name}")
        elif value > eff:
            yield Problem(f"data.{name} / data.block_size",
                          f"{name} {value} exceeds block_size {eff}: lower {name} or raise block_size")


@rule
def optimisation(cfg):
    t = cfg.training
    positive = {"training.lr": t.lr, "training.batch_size": t.batch_size,
                "training.gradient_accumulation": t.gradient_accumulation,
                "training.save_total_limit": t.save_total_limit, "training.save_steps": t.save_steps}
    for key, value in positive.items():
        if value <= 0:
            yield Problem(key, f"must be greater than 0, got {value}")
    if t.epochs < 1 and t.max_steps <= 0:
        yield Problem("training.epochs", f"must be at least 1 (or set training.max_steps), got {t.epochs}")
    if not 0 <= t.warmup_ratio < 1:
        yield Problem("training.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    if t.weight_decay < 0:
        yield Problem("training.weight_decay", f"must not be negative, got {t.weight_decay}")
    if t.max_grad_norm < 0:
        yield Problem("training.max_grad_norm", f"must not be negative (0 disables clipping), got {t.max_grad_norm}")
    if cfg.logging.steps == 0 or cfg.logging.steps < -1:
        yield Problem("logging.steps", f"must be positive or -1 (automatic), got {cfg.logging.steps}")
    yield from _named_choice("training.optimizer", t.optimizer, _optimizer_names())
    yield from _named_choice("training.scheduler", t.scheduler, _scheduler_names())


@rule
def adapters(cfg):
    p = cfg.peft
    if p.r < 1:
        yield Problem("peft.r", f"must be at least 1, got {p.r}")
    if p.alpha <= 0:
        yield Problem("peft.alpha", f"must be positive, got {p.alpha}")
    if not 0 <= p.dropout < 1:
        yield Problem("peft.dropout", f"must be in [0, 1), got {p.dropout}")
    if cfg.quantization.mode != "none" and not p.enabled:
        yield Problem("quantization.mode / peft.enabled",
                      f"{cfg.quantization.mode} weights cannot be fully fine-tuned: set peft.enabled=true "
                      "(QLoRA) or quantization.mode=none")
    if p.merge_adapter and not p.enabled:
        yield Problem("peft.merge_adapter", "there is no adapter to merge without peft.enabled=true")


@rule
def chat_template(cfg):
    name = cfg.data.chat_template
    if name not in TEMPLATES and not Path(name).expanduser().is_file():
        yield Problem("data.chat_template",
                      f"'{name}' is neither a template name ({', '.join(TEMPLATES)}) nor an existing Jinja file")


@rule
def trainer_options(cfg):
    if cfg.trainer.model_ref and cfg.trainer.name != "dpo":
        yield Problem("trainer.model_ref", f"only the dpo trainer uses a reference model, not {cfg.trainer.name}")


def _named_choice(key: str, value: str, names: list[str]) -> Iterator[Problem]:
    if value not in names:
        import difflib

        close = difflib.get_close_matches(value, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        yield Problem(key, f"unknown name '{value}'.{hint} Known: {', '.join(names)}")


def _optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


def _scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]
