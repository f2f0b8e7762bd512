"""Problems found in a configuration, gathered and reported together."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

EXIT_CONFIG = 2
"""Exit code of every command that refuses a configuration (nothing was started)."""


@dataclass(frozen=True)
class Problem:
    key: str
    """Dotted key the problem is about (several keys joined with ' / ' for cross-field rules)."""
    message: str
    """What is wrong and how to fix it."""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, so the user fixes them all in one go."""

    def __init__(self, problems: list[Problem], source: str | None = None, origin: dict | None = None,
                 places: dict | None = None):
        self.problems = problems
        self.source = source
        self.origin = origin or {}
        """Our key -> the key the user wrote in the --config file (AutoTrain names)."""
        self.places = places
        """Key -> the layer that set it ("command line", "at.yaml line 7", "recipe sft/quickstart"). When given,
        each problem names its own layer and the heading names no file: problems come from several layers."""
        super().__init__(self.report())

    def report(self) -> str:
        where = f" in {self.source}" if self.source and self.places is None else ""
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the configuration{where}:"]
        lines += [f"  - {placed(p, self.places or {})}{name_keys(p, self.origin)}" for p in self.problems]
        lines.append("Nothing was started.")
        return "\n".join(lines)


def name_keys(problem: Problem, origin: dict) -> Problem:
    """Name keys as the user wrote them: `data.block_size` came from `params.block_size`."""
    keys = [k.strip() for k in problem.key.split(" / ")]
    named = [f"{k} ({origin[k]})" if k in origin and origin[k] != k else k for k in keys]
    return Problem(" / ".join(named), problem.message)


def placed(problem: Problem, places: dict) -> str:
    """Where to fix it, ahead of the problem: `[at.yaml line 7] task: ...`, `[command line] training.lrr: ...`
    (each key of a cross-field rule has its own place)."""
    from launcher.config.places import place_of

    found = [place_of(k.strip(), places) for k in problem.key.split(" / ")]
    where = ", ".join(dict.fromkeys(place for place in found if place))
    return f"[{where}] " if where else ""


def did_you_mean(value: str, options, cutoff: float = 0.6, prefix: str = "") -> str:
    """" Did you mean 'x'?" for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=cutoff)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""
