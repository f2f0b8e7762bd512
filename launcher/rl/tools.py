"""The tools a grpo or distill rollout may call (trainer.tools): Python functions by reference, handed to trl's
`tools=`; transformers turns each one's type hints and Google-style docstring into the JSON schema the chat
template shows the model. `check_tools` runs at `plan` time with inspect only (no transformers: plan stays fast).
"""
from __future__ import annotations

import inspect
import re
from typing import Callable, Optional

from launcher import methods
from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.rl.references import BadReference, resolve


def tool_functions(cfg: RunConfig) -> list:
    """The tools of trainer.tools, for GRPOTrainer(tools=...)."""
    return [resolve(entry) for entry in cfg.trainer.tools]


def check_tools(cfg: RunConfig) -> list[Problem]:
    """Every tool resolves, has a docstring, and a type hint and a docstring line for each argument (transformers
    builds the tool's JSON schema from them); checked with inspect, so plan stays fast."""
    if not methods.reads(cfg.trainer.name, "trainer.tools"):
        return []
    problems = []
    for entry in cfg.trainer.tools:
        try:
            message = _tool_problem(resolve(entry))
        except BadReference as err:
            message = str(err)
        if message:
            problems.append(Problem("trainer.tools", f"{entry}: {message}"))
    return problems


def _tool_problem(tool: Callable) -> Optional[str]:
    doc = inspect.getdoc(tool)
    if not doc:
        return "has no docstring: the model reads it to know what the tool does (describe each argument under Args:)"
    arguments = [p for p in inspect.signature(tool).parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    hints = getattr(tool, "__annotations__", {})
    unhinted = [p.name for p in arguments if p.name not in hints]
    if unhinted:
        return f"argument {', '.join(unhinted)} has no type hint: each argument needs one (e.g. city: str)"
    # transformers reads the descriptions from a Google-style `Args:` section, `name: text` or `name (type): text`
    args_section = re.search(r"^\s*Args:\s*$(.*?)(^\s*(Returns|Raises):|\Z)", doc, re.M | re.S)
    section = args_section.group(1) if args_section else ""
    undescribed = [p.name for p in arguments if not re.search(rf"^\s*{p.name}\s*(\([^)]*\))?\s*:", section, re.M)]
    if undescribed:
        return f"its docstring does not describe argument {', '.join(undescribed)}: write an Args: section with " \
               "one `name: description` line per argument"
    return None
