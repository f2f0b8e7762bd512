"""Turn a plain mapping into the typed schema, collecting every problem instead of stopping at the first.

OmegaConf's structured configs could type-check, but they raise on the first bad key and suggest nothing;
users fixing a config want the whole list at once, with did-you-mean hints.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Literal, Union

from launcher.config.errors import Problem, did_you_mean


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
        value, errs = _convert(hints[key], raw, path)
        problems += errs
        # A section keeps its good values beside the bad ones, so the cross-field rules still see them.
        if not errs or dataclasses.is_dataclass(hints[key]):
            values[key] = value
    return cls(**values), problems


def unknown_key_message(key: str, known: list[str], prefix: str = "") -> str:
    hint = did_you_mean(key, known, prefix=prefix) or f" Known keys here: {', '.join(sorted(known))}."
    return f"unknown key.{hint}"


def _convert(tp: Any, raw: Any, path: str) -> tuple[Any, list[Problem]]:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, raw, path + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if raw is None and type(None) in options:
            return None, []
        for option in options:
            if option is type(None):
                continue
            value, errs = _convert(option, raw, path)
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


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def walk_fields(cls: type, prefix: str = ""):
    """Yield (dotted key, type, default, doc) for every leaf field of a dataclass tree."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from walk_fields(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield f"{prefix}{f.name}", tp, default, docs.get(f.name, "")
