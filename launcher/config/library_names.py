"""Names the installed libraries accept (optimizers, schedulers, ...), read from their source without importing
them: `import transformers.training_args` alone costs seconds (it pulls in torch and peft), and `plan` must answer
in about one. The values come from the installed version, so they follow upgrades; a library whose source no longer
holds the class is imported after all (slow, still right)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def enum_values(module: str, cls: str) -> tuple[str, ...]:
    """The string values of enum `cls` in `module` (e.g. transformers.training_args, OptimizerNames)."""
    package, _, rest = module.partition(".")
    spec = importlib.util.find_spec(package)  # a top-level find_spec does not import the package
    if spec is not None and spec.submodule_search_locations:
        source = Path(spec.submodule_search_locations[0], *rest.split(".")).with_suffix(".py")
        if source.is_file():
            for node in ast.parse(source.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and node.name == cls:
                    values = tuple(n.value.value for n in node.body if isinstance(n, ast.Assign)
                                   and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str))
                    if values:
                        return values
    return tuple(member.value for member in getattr(importlib.import_module(module), cls))
