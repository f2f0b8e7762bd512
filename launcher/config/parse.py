"""Turn a plain mapping into the typed schema, collecting every problem instead of stopping at the first.

OmegaConf's structured configs could type-check, but they raise on the first bad key and suggest nothing;
users fixing a config want the whole list at once, with did-you-mean hints.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from launcher.config.errors import Problem, did_you_mean
from launcher.config.keys import field_docs, walk_fields  # noqa: F401  (callers import them from here too)


def from_dict(cls: type, data: Any, prefix: str = "") -> tuple[Any, list[Problem]]:
    """Build `cls` from `data`; returns the instance (defaults where a value was bad) and the problems."""
    problems: list[Problem] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return cls(), [Problem(prefix.rstrip(".") or "<root>", f"expected a mapping of keys, got {_show(data)}")]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(Problem(path, unknown_key_message(str(key), list(fields), prefix)))
            continue
        # Shell lines and #SBATCH options may hold commas of their own: a string there is never split.
        value, errs = _convert(hints[key], raw, path, split_text=fields[key].metadata.get("split_text", True))
        problems += errs
        # A section keeps its good values beside the bad ones, so the cross-field rules still see them.
        if not errs or dataclasses.is_dataclass(hints[key]):
            values[key] = value
    return cls(**values), problems


def unknown_key_message(key: str, known: list[str], prefix: str = "") -> str:
    """A name one of our keys goes by elsewhere (AutoTrain's, another tool's: `training.learning_rate`) is the
    surest hint; then a near sibling; then a near name of any key; then the list of this section's keys."""
    from launcher.config import aliases

    written = prefix + key
    named = aliases.key_named(written)
    if named and named != written:
        return f"unknown key. Did you mean '{named}'?"
    hint = did_you_mean(key, known, prefix=prefix)
    if not hint and (close := aliases.closest_key(written)):
        hint = f" Did you mean '{close}'?"
    return f"unknown key.{hint or ' Known keys here: ' + ', '.join(sorted(known)) + '.'}"


def _convert(tp: Any, raw: Any, path: str, split_text: bool = True) -> tuple[Any, list[Problem]]:
    """`raw` as type `tp`. With split_text, a list may be given as comma-separated text (`'q_proj,v_proj'`)."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, raw, path + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if raw is None and type(None) in options:
            return None, []
        # `loss_type='sigmoid,sft'` is the list typed as text: try the list before the plain text.
        # Otherwise text stays text. (typing may hand the options in either order: its Union cache returns an
        # equal Union built earlier, e.g. Union[list[str], str, None] for Optional[Union[str, list[str]]].)
        if split_text and isinstance(raw, str) and "," in raw:
            options = sorted(options, key=lambda option: typing.get_origin(option) is not list)
        elif isinstance(raw, str):
            options = sorted(options, key=lambda option: option is not str)
        for option in options:
            if option is type(None):
                continue
            value, errs = _convert(option, raw, path, split_text)
            if not errs:
                return value, []
        return None, [Problem(path, f"got {_show(raw)}, expected {describe_type(tp)}")]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if raw in allowed and type(raw) is type(allowed[allowed.index(raw)]):
            return raw, []
        hint = did_you_mean(raw, allowed, cutoff=0.5)
        return None, [Problem(path, f"got {_show(raw)}, expected one of: {', '.join(map(str, allowed))}.{hint}")]
    if origin is list:
        if split_text and isinstance(raw, str):
            raw = split_comma_list(raw)
        if not isinstance(raw, (list, tuple)):
            return None, [Problem(path, f"got {_show(raw)}, expected a list of {describe_type(typing.get_args(tp)[0])}")]
        items, problems = [], []
        for i, item in enumerate(raw):
            value, errs = _convert(typing.get_args(tp)[0], item, f"{path}[{i}]")
            items.append(value)
            problems += errs
        return (None, problems) if problems else (items, [])
    if origin is dict:
        if not isinstance(raw, dict):
            return None, [Problem(path, f"got {_show(raw)}, expected a map of name: value")]
        items, problems = {}, []
        for name, item in raw.items():
            value, errs = _convert(typing.get_args(tp)[1], item, f"{path}.{name}")
            items[str(name)] = value
            problems += errs
        return (None, problems) if problems else (items, [])
    if tp is bool:
        if isinstance(raw, bool):
            return raw, []
        return None, [Problem(path, f"got {_show(raw)}, expected true or false")]
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw, []
        return None, [Problem(path, f"got {_show(raw)}, expected a whole number")]
    if tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw), []
        if isinstance(raw, str):  # YAML 1.1 reads `3e-5` (no dot) as a string
            try:
                return float(raw), []
            except ValueError:
                pass
        return None, [Problem(path, f"got {_show(raw)}, expected a number")]
    if tp is str:
        if isinstance(raw, str):
            return raw, []
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw), []
        return None, [Problem(path, f"got {_show(raw)}, expected text")]
    raise TypeError(f"schema type {tp!r} at {path} is not supported")  # a schema bug, not a user error


def split_comma_list(text: str) -> list[str]:
    """`'q_proj, v_proj'` -> [q_proj, v_proj]: the quoted form of a list on the command line."""
    return [item.strip() for item in text.split(",") if item.strip()]


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(t) for t in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"list of {describe_type(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map of name: {describe_type(typing.get_args(tp)[1])}"
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text"}.get(tp, tp.__name__)


def _show(raw: Any) -> str:
    return f"{type(raw).__name__} {raw!r}" if not isinstance(raw, (dict, list)) else type(raw).__name__
