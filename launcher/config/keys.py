"""The schema's keys as data: every leaf field of the configuration with its type, default and docstring (what
`explain`, the did-you-means and the alias table read). Apart from parse.py so that aliases.py, which parse.py
uses for its messages, can read the keys without an import cycle."""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing


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
