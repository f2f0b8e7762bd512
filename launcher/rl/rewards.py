"""The reward functions of grpo and rloo: the shipped ones, the user's own, and reward models trained with
trainer=reward (the tools a rollout may call are launcher/rl/tools.py).

Every reward is a function with trl's signature, `f(prompts=, completions=, completion_ids=, **data_columns,
trainer_state=, log_extra=, log_metric=) -> list[float | None]` (None: no opinion on that completion), or a
sequence classifier with its tokenizer. `check_rewards` is what `plan` runs: they import no
torch or transformers (plan answers in about a second), and call each user function once on two dummy completions
so a wrong signature or a missing column shows up before any GPU is taken.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import numbers
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import yaml

from launcher import methods
from launcher.config.errors import Problem, did_you_mean
from launcher.config.schema import RunConfig, TrainerConfig
from launcher.rl.references import FORMS, BadReference, is_reference, resolve

RUN_PREFIX = "run:"
"""A reward entry `run:PATH` is a finished run of trainer=reward."""
ANSWER_REWARDS = ("exact_match", "math")
"""The shipped rewards that compare a completion with the data column trainer.answer_column."""
MATH_HINT = "pip install tunelaunch[rl] (or pip install math-verify)"
JSONSCHEMA_HINT = "pip install tunelaunch[rl] (or pip install jsonschema)"
SIGNATURE = ("trl calls it as f(prompts=, completions=, completion_ids=, **columns, trainer_state=, log_extra=, "
             "log_metric=); accept **kwargs")
DUMMY_COMPLETIONS = ("42", "<answer>7</answer>")
"""What `plan` calls each user function on: a bare answer and a tagged one."""


# ---- the shipped reward functions: each factory reads its settings once and returns trl's kind of function

def completion_text(completion) -> str:
    """The text of a completion: the string itself, or the last assistant message's content of a conversation."""
    if isinstance(completion, str):
        return completion
    replies = [m for m in completion if m.get("role") == "assistant"] or list(completion)
    content = replies[-1].get("content") if replies else None
    if isinstance(content, list):  # content parts ({"type": "text", "text": ...})
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def answer_of(text: str, pattern: Optional[re.Pattern]) -> Optional[str]:
    """The answer in a completion: group 1 of the pattern's last match, or the whole stripped completion without a
    pattern; None when the pattern does not match."""
    if pattern is None:
        return text.strip()
    matches = list(pattern.finditer(text))
    return matches[-1].group(1).strip() if matches else None


def _named(function: Callable, name: str) -> Callable:
    """trl logs a reward under its function's name (rewards/<name>/mean): the entry the user wrote."""
    function.__name__ = function.__qualname__ = name
    return function


def _answer_pattern(tc: TrainerConfig) -> Optional[re.Pattern]:
    # DOTALL: an answer between tags may span lines, as format_pattern's . does
    return re.compile(tc.answer_pattern, re.DOTALL) if tc.answer_pattern is not None else None


def format_reward(tc: TrainerConfig) -> Callable:
    pattern = re.compile(tc.format_pattern, re.DOTALL)

    def reward(completions, **kwargs) -> list[float]:
        """1.0 when trainer.format_pattern is found in the completion (. matching newlines), else 0.0."""
        return [1.0 if pattern.search(completion_text(c)) else 0.0 for c in completions]
    return _named(reward, "format")


def length_reward(tc: TrainerConfig) -> Callable:
    target, tolerance = tc.length_target, tc.length_tolerance

    def reward(completion_ids, **kwargs) -> list[float]:
        """1.0 within trainer.length_tolerance tokens of trainer.length_target, falling linearly to 0.0 at
        length_target tokens beyond the tolerance."""
        return [max(0.0, 1.0 - max(0, abs(len(ids) - target) - tolerance) / target) for ids in completion_ids]
    return _named(reward, "length")


def exact_match_reward(tc: TrainerConfig) -> Callable:
    pattern, column = _answer_pattern(tc), tc.answer_column

    def reward(completions, **kwargs) -> list[Optional[float]]:
        """1.0 when the completion's answer (trainer.answer_pattern's last match, else the whole completion) equals
        the data column trainer.answer_column, both stripped; 0.0 otherwise or when the pattern does not match;
        None (no opinion) for a row with no answer."""
        golds = kwargs[column]
        return [None if gold is None else float(answer_of(completion_text(c), pattern) == str(gold).strip())
                for c, gold in zip(completions, golds)]
    return _named(reward, "exact_match")


def math_reward(tc: TrainerConfig) -> Callable:
    from math_verify import parse, verify

    pattern, column = _answer_pattern(tc), tc.answer_column

    def score(completion, gold) -> Optional[float]:
        expected = parse(str(gold)) if gold is not None else []
        if not expected:
            return None  # a reference answer math-verify cannot read: no opinion rather than a false 0
        answer = answer_of(completion_text(completion), pattern)
        return float(verify(expected, parse(answer))) if answer is not None else 0.0

    def reward(completions, **kwargs) -> list[Optional[float]]:
        """1.0 when the completion's answer (trainer.answer_pattern's last match, else the whole completion) is the
        same mathematical answer as the data column trainer.answer_column, as math-verify judges it (1/2 = 0.5,
        \\frac{1}{2}, ...); 0.0 otherwise or when the pattern does not match; None when the column's answer does not
        parse."""
        return [score(c, gold) for c, gold in zip(completions, kwargs[column])]
    return _named(reward, "math")


def json_schema_reward(tc: TrainerConfig) -> Callable:
    from jsonschema.validators import validator_for

    schema = json.loads(_schema_path(tc.json_schema).read_text())
    validator = validator_for(schema)(schema)

    def score(completion) -> float:
        try:
            value = json.loads(completion_text(completion))
        except ValueError:
            return 0.0
        return 1.0 if validator.is_valid(value) else 0.5

    def reward(completions, **kwargs) -> list[float]:
        """1.0 when the completion parses as JSON and validates against trainer.json_schema, 0.5 when it parses
        only, 0.0 otherwise."""
        return [score(c) for c in completions]
    return _named(reward, "json_schema")


SHIPPED: dict[str, Callable[[TrainerConfig], Callable]] = {
    "format": format_reward, "length": length_reward, "exact_match": exact_match_reward, "math": math_reward,
    "json_schema": json_schema_reward,
}


def _schema_path(path: str) -> Path:
    return Path(path).expanduser()


def _run_folder(entry: str) -> Path:
    return Path(entry[len(RUN_PREFIX):]).expanduser()


# ---- what the trainer is given

def reward_functions(cfg: RunConfig) -> tuple[list, list]:
    """The rewards in the order of trainer.rewards, and their processing classes (None for a function, the
    tokenizer for a reward model): GRPOTrainer(reward_funcs=..., reward_processing_classes=...)."""
    functions, processing_classes = [], []
    for entry in cfg.trainer.rewards:
        if entry.startswith(RUN_PREFIX):
            from launcher.rl.reward_model import load_reward_model

            model, tokenizer = load_reward_model(_run_folder(entry))
            functions.append(model)
            processing_classes.append(tokenizer)
        else:
            functions.append(SHIPPED[entry](cfg.trainer) if entry in SHIPPED else resolve(entry))
            processing_classes.append(None)
    return functions, processing_classes


# ---- plan-time checks

def check_rewards(cfg: RunConfig, rows: list[dict], conversational: bool) -> list[Problem]:
    """Every problem with trainer.rewards and the settings they read, found without torch or transformers. `rows`
    are canonical prompt_only rows (their columns go to the functions); `conversational`: prompts are messages."""
    tc = cfg.trainer
    if not methods.reads(tc.name, "trainer.rewards"):
        return []
    if not tc.rewards:
        return [Problem("trainer.rewards", f"{tc.name} needs at least one reward function: a shipped one "
                        f"({', '.join(SHIPPED)}), yours ({FORMS}) or a reward model (run:PATH), e.g. "
                        "trainer.rewards=[format,math]")]
    problems = [*_check_weights(tc), *_check_patterns(tc)]
    for entry in tc.rewards:
        if entry.startswith(RUN_PREFIX):
            problems += _check_reward_run(entry)
        elif is_reference(entry):
            problems += _check_user_function(entry, rows, conversational)
        elif entry in SHIPPED:
            problems += _check_shipped(entry, tc, rows)
        else:
            problems.append(Problem("trainer.rewards", f"{entry!r} is not a shipped reward ({', '.join(SHIPPED)}), "
                                    f"a function ({FORMS}) or a reward model (run:PATH).{did_you_mean(entry, SHIPPED)}"
                                    .rstrip(".")))
    return problems


def _check_weights(tc: TrainerConfig) -> list[Problem]:
    if tc.reward_weights is None or len(tc.reward_weights) == len(tc.rewards):
        return []
    return [Problem("trainer.reward_weights", f"{len(tc.reward_weights)} weights for {len(tc.rewards)} rewards "
                    f"({', '.join(tc.rewards)}): give one weight per reward, or none (1.0 each)")]


def _check_patterns(tc: TrainerConfig) -> list[Problem]:
    problems = []
    for key, pattern in (("format_pattern", tc.format_pattern), ("answer_pattern", tc.answer_pattern)):
        if pattern is None:
            continue
        try:
            groups = re.compile(pattern).groups
        except re.error as err:
            problems.append(Problem(f"trainer.{key}", f"{pattern!r} is not a regular expression: {err}"))
            continue
        if key == "answer_pattern" and groups != 1:
            problems.append(Problem("trainer.answer_pattern", f"{pattern!r} has {groups} groups; it needs exactly "
                                    "one, around the answer, e.g. <answer>(.*?)</answer> (write (?:...) for others)"))
    return problems


def _check_shipped(name: str, tc: TrainerConfig, rows: list[dict]) -> list[Problem]:
    if name in ANSWER_REWARDS:
        return [*_check_answer_column(name, tc, rows), *(_check_math_installed() if name == "math" else [])]
    if name == "json_schema":
        return _check_json_schema(tc)
    if name == "length" and (tc.length_target <= 0 or tc.length_tolerance < 0):
        return [Problem("trainer.length_target / trainer.length_tolerance", "the length reward needs "
                        f"length_target > 0 and length_tolerance >= 0 (got {tc.length_target}, {tc.length_tolerance})")]
    return []


def _check_answer_column(name: str, tc: TrainerConfig, rows: list[dict]) -> list[Problem]:
    if not rows or tc.answer_column in rows[0]:
        return []
    others = [c for c in rows[0] if c != "prompt"]
    fix = f"; set trainer.answer_column to one of {', '.join(others)}" if others else ""
    return [Problem("trainer.answer_column", f"the {name} reward compares with the data column "
                    f"{tc.answer_column!r}, which the data does not have (its columns: {', '.join(rows[0])}){fix}."
                    f"{did_you_mean(tc.answer_column, others)}")]


def _check_math_installed() -> list[Problem]:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return [Problem("trainer.rewards", f"the math reward needs math-verify: {MATH_HINT}")]
    return []


def _check_json_schema(tc: TrainerConfig) -> list[Problem]:
    def problem(message: str) -> list[Problem]:
        return [Problem("trainer.json_schema", message)]

    if tc.json_schema is None:
        return problem("the json_schema reward needs trainer.json_schema, the path of a JSON Schema file")
    path = _schema_path(tc.json_schema)
    if not path.is_file():
        return problem(f"{tc.json_schema}: file not found ({path.resolve()})")
    try:
        schema = json.loads(path.read_text())
    except ValueError as err:
        return problem(f"{tc.json_schema} is not JSON: {err}")
    try:
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for
    except ImportError:
        return problem(f"the json_schema reward needs jsonschema: {JSONSCHEMA_HINT}")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        return problem(f"{tc.json_schema} is not a valid JSON Schema: {err.message}")
    return []


def _check_reward_run(entry: str) -> list[Problem]:
    from launcher.run_dir import STATE_FILE, Status, read_state

    folder = _run_folder(entry)

    def problem(message: str) -> list[Problem]:
        return [Problem("trainer.rewards", f"{entry}: {message}")]

    if not folder.is_dir():
        return problem(f"no such folder ({folder.resolve()})")
    config = folder / "config.yaml"
    if not config.is_file():
        return problem(f"{folder} is not a run folder (it has no config.yaml); a reward model is a run of "
                       "trainer=reward")
    trainer = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("name")
    if trainer != "reward":
        return problem(f"{folder} is a {trainer} run, not a reward model: train one with trainer=reward")
    status = read_state(folder).get("status")
    if status != Status.FINISHED:  # (a str enum: equal to its word)
        return problem(f"{folder} has not finished training (its {STATE_FILE} says {status or 'nothing'}); a reward "
                       "model is read from a finished run")
    return []


def _check_user_function(entry: str, rows: list[dict], conversational: bool) -> list[Problem]:
    try:
        function = resolve(entry)
    except BadReference as err:
        return [Problem("trainer.rewards", f"{entry}: {err}")]
    if not rows:
        return []
    message = _call_problem(function, rows[0], conversational)
    return [Problem("trainer.rewards", f"{entry}: {message}")] if message else []


# What a reward shaped by training progress reads of trl's TrainerState at the first step (transformers' own class
# is not imported: plan stays fast).
_STATE_AT_START = SimpleNamespace(global_step=0, max_steps=1, epoch=0.0, num_train_epochs=1, log_history=[])


_TRL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""What trl passes every reward function besides the data columns."""


def _parameters(function: Callable) -> dict:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself tells
        return {}


def _call_problem(function: Callable, row: dict, conversational: bool) -> Optional[str]:
    """Call a reward function as trl does, on two dummy completions with the columns of one data row; what is wrong
    with the call or its result, or None."""
    completions = [[{"role": "assistant", "content": text}] if conversational else text
                   for text in DUMMY_COMPLETIONS]
    # trl passes every column but the prompt (and the completion it generates) as a list, one value per completion
    columns = {k: [v] * len(completions) for k, v in row.items() if k not in ("prompt", "completion", "completion_ids")}
    missing = [name for name, p in _parameters(function).items() if p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in _TRL_ARGUMENTS
               and name not in columns]
    if missing:  # an argument named after a column the data lacks: say so, not "wrong signature"
        return (f"reads the column {missing[0]!r}, which the data does not have (its columns: {', '.join(row)})")
    try:
        result = function(prompts=[row.get("prompt")] * len(completions), completions=completions,
                          completion_ids=[[1, 2], [3, 4, 5]], **columns, trainer_state=_STATE_AT_START,
                          log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None)
        if inspect.isawaitable(result):  # trl runs async reward functions too
            result = asyncio.run(result)
    except TypeError as err:
        return f"has the wrong signature: {SIGNATURE} ({err})"
    except KeyError as err:
        missing = err.args[0] if err.args else err
        return f"reads the column {missing!r}, which the data does not have (its columns: {', '.join(row)})"
    except Exception as err:
        return f"failed on two dummy completions {list(DUMMY_COMPLETIONS)}: {type(err).__name__}: {err}"
    sequence = isinstance(result, (list, tuple))
    if not sequence or len(result) != len(completions):
        what = f"{len(result)} values" if sequence else f"{result!r} (a {type(result).__name__})"
        return (f"returned {what} for {len(completions)} completions; it must return a list with one float (or None) "
                "per completion")
    bad = [r for r in result if r is not None and not isinstance(r, numbers.Real)]
    if bad:
        return f"returned {list(result)!r}: each value must be a number or None, not {type(bad[0]).__name__}"
    return None
