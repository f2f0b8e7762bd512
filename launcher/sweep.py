"""Hydra-style sweeps for `train -m`: `training.lr=1e-4,3e-4 peft.r=8,16` runs the four combinations.

Hydra's own multirun would start one launcher per job inside Hydra's app runner; our jobs are whole
`train` runs with their own process groups, so we only borrow Hydra's override grammar to expand the grid.
"""
from __future__ import annotations

import itertools
import sys


def expand(overrides: list[str]) -> list[tuple[list[str], str | None]]:
    """Each job's overrides, and the sub-folder of project_name it runs in (None for a single job)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    jobs = [list(combo) for combo in itertools.product(*axes)]
    if len(jobs) == 1 or any(o.get_key_element() == "project_name" for o in parsed if o.is_sweep_override()):
        return [(job, None) for job in jobs]
    # Each job gets its own run folder under the project, named by its swept values.
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return [(job, ",".join(j for j in job if j.split("=", 1)[0] in swept).replace("/", "_")) for job in jobs]


def jobs(config, overrides, multirun: bool) -> list[list[str]] | None:
    """The overrides of each job: one, or (-m) one per combination of the swept values, each in its own folder
    <project_name>/<swept values>. None when the configuration cannot be composed (the report is printed)."""
    if not multirun:
        return [list(overrides)]
    out = []
    for job, subdir in expand(list(overrides)):
        if subdir:
            base = _base_project_name(config, job)
            if base is None:
                return None
            job = [*job, f"project_name={_quoted(f'{base}/{subdir}')}"]
        out.append(job)
    return out


def _quoted(value: str) -> str:
    """A value for a Hydra override: quoted, since a sweep folder name holds `=` and `,`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _base_project_name(config, overrides) -> str | None:
    from launcher.config.compose import compose
    from launcher.config.errors import ConfigError

    try:
        return compose(config, overrides).config.project_name
    except ConfigError as err:
        print(err.report(), file=sys.stderr)
        return None
