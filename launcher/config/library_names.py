"""Names the installed libraries accept (optimizers, schedulers, ...), read from their source without importing
them: `import transformers.training_args` alone costs seconds (it pulls in torch and peft), and `plan` must answer
in about one. The values come from the installed version, so they follow upgrades; a library whose source no longer
holds the class is imported after all (slow, still right)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
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


# trl 1.16's DPO losses, should its DPOConfig stop listing them in the help text of loss_type.
_DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
               "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def dpo_loss_types() -> list[str]:
    """The loss names trl's DPOConfig takes. trl keeps no list of them but the help text of that field, read here
    from trl's source without importing it (as launcher.config.library_names does: plan stays fast); trl 1.16's
    documented list stands in should the text no longer name them."""
    spec = importlib.util.find_spec("trl")
    source = Path(spec.submodule_search_locations[0], "trainer", "dpo_config.py") if spec else None
    text = ""
    if source is not None and source.is_file():
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
                text = next((v.value for c in ast.walk(node) if isinstance(c, ast.Dict)
                             for k, v in zip(c.keys, c.values) if getattr(k, "value", None) == "help"
                             and isinstance(getattr(v, "value", None), str)), "")
    return re.findall(r"`'(\w+)'`", text.split("If multiple")[0]) or list(_DPO_LOSSES)


# trl 1.16's GRPO losses, should its GRPOConfig stop listing them in the help text of loss_type.
_GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


def grpo_loss_types() -> list[str]:
    """The loss names trl's GRPOConfig takes, read from the help text of its loss_type ("Supported values are
    'grpo', 'dr_grpo', ...") without importing trl; trl 1.16's list stands in should the text change."""
    spec = importlib.util.find_spec("trl")
    source = Path(spec.submodule_search_locations[0], "trainer", "grpo_config.py") if spec else None
    if source is not None and source.is_file():
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
                text = " ".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant)
                                and isinstance(c.value, str))
                listed = re.search(r"Supported values are ([^.]*)\.", text)
                if listed:
                    return re.findall(r"'(\w+)'", listed.group(1)) or list(_GRPO_LOSSES)
    return list(_GRPO_LOSSES)
