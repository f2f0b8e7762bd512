"""A user's Python function named in the configuration: `package.module:function` (imported as a module, the working
folder on the path) or `path/to/file.py:function` (a file, relative to the working folder, `~` expanded).

`plan` resolves every reference before anything starts, so a typo is one sentence there, not a traceback on the GPU.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

from launcher.config.errors import did_you_mean

FORMS = "package.module:function or path/to/file.py:function"


class BadReference(ValueError):
    """A reference that does not resolve to a callable; the message says what failed, in one sentence."""


def is_reference(entry: str) -> bool:
    """Whether a configuration entry names a user function (rather than a shipped name)."""
    return ":" in entry and not entry.startswith("run:")


def resolve(reference: str) -> Callable:
    """The callable a reference names; raises BadReference saying what failed (module not found, file not found,
    no such attribute, not callable)."""
    where, _, name = reference.rpartition(":")  # rpartition: the path itself may hold a colon (C:/...)
    if not where or not name:
        raise BadReference(f"{reference!r} is not a reference: write {FORMS}")
    module = _load_file(where) if _is_file(where) else _import(where)
    value = module
    for part in name.split("."):  # Class.method is allowed
        if not hasattr(value, part):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise BadReference(f"{where} has no attribute {name!r}.{did_you_mean(name, public)}".rstrip("."))
        value = getattr(value, part)
    if not callable(value):
        raise BadReference(f"{where}:{name} is a {type(value).__name__}, not a function")
    return value


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _load_file(where: str) -> ModuleType:
    """Execute a .py file as a module of its own. Its name is derived from the full path, so two files called
    rewards.py do not collide, and neither shadows an installed module of that name."""
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise BadReference(f"{where}: file not found ({path})")
    name = f"_tunelaunch_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered before it runs, as import does (dataclasses and pickle look it up)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a script that exits on import is a failed import too
        del sys.modules[name]
        raise BadReference(f"running {where} failed: {type(err).__name__}: {err}") from err
    return module


def _import(where: str) -> ModuleType:
    """Import a dotted module, with the working folder on the path: the `tunelaunch` console script does not put it
    there, and a user's `my_rewards` module usually lives beside their config."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if where == missing or where.startswith(missing + "."):
            raise BadReference(f"module {where!r} not found (from {cwd}; a file is written path/to/file.py:function)") \
                from err
        raise BadReference(f"importing {where} failed: {type(err).__name__}: {err}") from err
    except Exception as err:
        raise BadReference(f"importing {where} failed: {type(err).__name__}: {err}") from err
    finally:
        if added:
            sys.path.remove(cwd)
