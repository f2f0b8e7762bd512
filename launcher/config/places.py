"""Where each key of a configuration was written: on the command line, on a line of the --config file, or in
the recipe. A problem is reported against the layer that set the key, so the user edits the right one: a bad
override is not "in at.yaml", and a bad file value comes with its line.
"""
from __future__ import annotations

from pathlib import Path

import yaml

COMMAND_LINE = "command line"


def yaml_key_lines(text: str) -> dict[str, int]:
    """Dotted key -> the line (from 1) where it is written, sections included; {} for text that is no mapping.
    yaml.compose keeps the node marks that yaml.safe_load throws away."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}  # the loader reports the syntax error itself
    lines: dict[str, int] = {}
    _walk(root, "", lines)
    return lines


def _walk(node, prefix: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        lines[key] = key_node.start_mark.line + 1
        _walk(value_node, f"{key}.", lines)


def file_places(path: Path, shown_as: str, origin: dict[str, str]) -> dict[str, str]:
    """Places of the keys a --config file sets: its own (dotted) names and, through `origin` (our key -> its
    name, for AutoTrain files), ours."""
    try:
        lines = yaml_key_lines(path.read_text())
    except OSError:
        return {}
    places = {key: f"{shown_as} line {line}" for key, line in lines.items()}
    for ours, written in origin.items():
        if written in places:
            places[ours] = places[written]
    return places


def recipe_places(recipe: str | None, recipes_dir: Path) -> dict[str, str]:
    """Places of the keys a recipe sets (a leaf and every section above it)."""
    if not recipe:
        return {}
    path = recipes_dir / f"{recipe}.yaml"
    try:
        lines = yaml_key_lines(path.read_text())
    except OSError:
        return {}
    return {key: f"recipe {recipe}" for key in lines}


def override_places(overrides: list[str]) -> dict[str, str]:
    """Places of the keys set on the command line (`+key=`, `~key` and group choices included)."""
    keys = (override.partition("=")[0].lstrip("+~") for override in overrides)
    return {key: COMMAND_LINE for key in keys if key}


def place_of(key: str, places: dict[str, str]) -> str | None:
    """The place of a problem's key; `peft.target_modules[1]` is where `peft.target_modules` is."""
    return places.get(key) or places.get(key.split("[", 1)[0])
