"""Compose a run's configuration with Hydra, in the launching process only.

Layers, lowest first: the schema's defaults, the `conf/` groups (trainer, peft, precision, distributed,
logger), a recipe (`recipe=sft/quickstart` picks `recipes/sft/quickstart.yaml`), the `--config` file (native
or AutoTrain), then command-line overrides. Workers never compose again: they read the resolved file.
"""
from __future__ import annotations

import dataclasses
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launcher import CONF_DIR, REPO_ROOT, RECIPES_DIR
from launcher.config import aliases, autotrain
from launcher.config.errors import ConfigError, Problem, did_you_mean
from launcher.config.parse import from_dict, unknown_key_message, walk_fields
from launcher.config.schema import RunConfig

GROUPS = ("trainer", "peft", "precision", "distributed", "logger", "cluster")
_SECTIONS = {f.name for f in dataclasses.fields(RunConfig)} - {"project_name", "overwrite"}  # the nested ones
_BASE_NAME = "tunelaunch_schema_defaults"


@dataclass
class Composed:
    config: RunConfig
    """The typed configuration, secrets included (in memory only)."""
    notes: list = field(default_factory=list)
    """Adjustments and ignored settings, shown by `plan`."""
    origin: dict = field(default_factory=dict)
    """Our key -> the key the user wrote in the --config file."""
    source: str | None = None
    """The --config file, for messages."""
    problems: list = field(default_factory=list)
    """With collect=True: what was wrong (bad values were left at their defaults so checking can go on)."""
    places: dict = field(default_factory=dict)
    """Key -> the layer that set it (command line, a line of the --config file, the recipe), for messages."""


def compose(config_file: str | Path | None = None, overrides: list[str] | tuple = (),
            collect: bool = False) -> Composed:
    """Compose and type-check a configuration; raise ConfigError listing every problem found, or with
    collect=True return them in `Composed.problems` so later checks can add theirs to the same report."""
    problems: list[Problem] = []
    recipe, hydra_overrides = _split_recipe(list(overrides), problems)
    key_problems = check_override_keys(hydra_overrides) + check_bare_commas(hydra_overrides)
    problems += key_problems
    # Drop the overrides already reported so composition goes on and finds the remaining problems too.
    bad = {p.key for p in key_problems}
    hydra_overrides = [o for o in hydra_overrides if o.partition("=")[0].lstrip("+~") not in bad]

    translation = autotrain.Translation()
    source = str(config_file) if config_file else None
    if config_file:
        translation = load_config_file(Path(config_file))
    problems += translation.problems
    places, origin = _places(recipe, config_file, translation.origin, list(overrides))

    secret_token = _pop(translation.values, "hub", "token")

    cli_groups = {k: v for k, _, v in (o.lstrip("+").partition("=") for o in hydra_overrides) if k in GROUPS}
    file_groups = [f"{g}={v}" for g, v in translation.groups.items() if g not in cli_groups]
    # A group chosen on the command line beats the file: drop the file's values for the keys that option sets.
    for group, option in cli_groups.items():
        for key in group_keys(group, option.split(",")[0]):
            _pop(translation.values, *key.split("."))
    with tempfile.TemporaryDirectory(prefix="tunelaunch-compose-") as tmp:
        layers = [*file_groups]
        if recipe:
            layers.append(f"+recipes@_global_={recipe}")
        if translation.values:
            (Path(tmp) / "user_config").mkdir()
            text = "# @package _global_\n" + yaml.safe_dump(translation.values, sort_keys=False)
            (Path(tmp) / "user_config" / "file.yaml").write_text(text)
            layers.append("+user_config@_global_=file")
        searchpath = f"hydra.searchpath=[file://{REPO_ROOT},file://{tmp}]"
        try:
            data = _hydra_compose([searchpath, *layers, *_add_map_entries(hydra_overrides)])
        except ConfigError as err:
            raise ConfigError(problems + err.problems, source, origin, places) from None

    cfg, type_problems = from_dict(RunConfig, data)
    problems += type_problems
    if secret_token is not None and cfg.hub.token is None:
        cfg.hub.token = secret_token
    notes = list(translation.notes)
    if not cfg.project_name:
        cfg.project_name = default_project_name(cfg)
        notes.append(f"project_name: {cfg.project_name} (from the method and the data; project_name= names the run)")
    if problems and not collect:
        raise ConfigError(problems, source, origin, places)
    return Composed(cfg, notes, origin, source, problems, places)


def default_project_name(cfg: RunConfig) -> str:
    """`runs/<method>-<data>`: a folder per method and data set, so that a second experiment does not land in the
    folder of the first (which a resume would refuse, or an AutoTrain-style `project-name` would collect). No date
    in it: the same command must find its unfinished run again to resume it."""
    sources = [(s.name, s.path, s.train_split) for s in cfg.data.datasets] or [(None, cfg.data.path,
                                                                                 cfg.data.train_split)]
    name = "+".join(label or _data_name(path, split) for label, path, split in sources)  # a mixture: chat+alpaca
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.") or "data"
    return f"runs/{cfg.trainer.name}-{slug}"


def _data_name(data_path: str, train_split: str) -> str:
    path = Path(data_path.partition(":")[0].rstrip("/"))
    name = path.stem if path.suffix in (".jsonl", ".json", ".csv", ".parquet") else path.name
    if name in ("", ".", train_split, "train", "data") and path.parent.name:
        name = path.parent.name  # samples/chat/train.jsonl -> chat
    return name


def _places(recipe: str | None, config_file, file_origin: dict, overrides: list[str]) -> tuple[dict, dict]:
    """Which layer set each key (a higher layer wins), and the file's origin without the keys the command line
    set: the value in force came from the command line, so the file's name for the key would mislead."""
    from launcher.config import places

    on_command_line = places.override_places(overrides)
    found = places.recipe_places(recipe, RECIPES_DIR)
    if config_file:
        found.update(places.file_places(Path(config_file), str(config_file), file_origin))
    found.update(on_command_line)
    origin = {ours: written for ours, written in file_origin.items() if ours not in on_command_line}
    return found, origin


def load_config_file(path: Path) -> autotrain.Translation:
    """Read a --config file: AutoTrain's format is translated, ours is taken as it is."""
    if not path.is_file():
        raise ConfigError([Problem("--config", f"file not found: {path}")])
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([Problem(f"{path}:{where}", f"not valid YAML: {getattr(err, 'problem', err)}")])
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([Problem(str(path), "expected a mapping of keys at the top level")])
    tool = aliases.foreign_tool(doc)
    if tool:  # its keys would each get a did-you-mean of ours; one message that names the tool points the way
        raise ConfigError([Problem(str(path), aliases.foreign_message(tool, doc))])
    if autotrain.is_autotrain(doc):
        unset: list = []
        doc = autotrain.expand_env(doc, "", unset)
        translation = autotrain.translate(doc)
        for key, var in unset:
            translation.notes.append(f"{key}: ${{{var}}} is not set in the environment; taken as null.")
        return translation
    problems = []
    for key, value in list(doc.items()):
        if key in _SECTIONS and value is not None and not isinstance(value, dict):
            problems.append(Problem(key, f"expected a mapping of keys (a section), got {type(value).__name__}"))
            del doc[key]
    groups = {}
    trainer = (doc.get("trainer") or {}).get("name") if isinstance(doc.get("trainer"), dict) else None
    if trainer:
        groups["trainer"] = trainer
    return autotrain.Translation(values=doc, groups=groups, problems=problems)


def check_override_keys(overrides: list[str]) -> list[Problem]:
    """Name every unknown override key at once, with a suggestion (Hydra would stop at the first)."""
    leaves = [key for key, *_ in walk_fields(RunConfig)]
    nodes = {k.rsplit(".", 1)[0] for k in leaves if "." in k}
    maps = map_keys()
    problems = []
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith("hydra") or key.rpartition(".")[0] in maps:
            continue
        if key in GROUPS:
            options = group_options(key)
            for choice in value.split(","):  # a sweep lists several
                if choice not in options:
                    hint = did_you_mean(choice, options) or f" Options: {', '.join(options)}."
                    problems.append(Problem(key, f"no option '{choice}' in conf/{key}/.{hint}"))
        elif key not in leaves and key not in nodes:
            parent, _, leaf = key.rpartition(".")
            siblings = [k.rsplit(".", 1)[-1] for k in leaves if k.rpartition(".")[0] == parent]
            if siblings:
                problems.append(Problem(key, unknown_key_message(leaf, siblings, f"{parent}." if parent else "")))
            else:
                named = aliases.key_named(key)
                hint = f" Did you mean '{named}'?" if named else did_you_mean(key, leaves, cutoff=0.5)
                problems.append(Problem(key, f"unknown key.{hint}"))
    return problems


def check_bare_commas(overrides: list[str]) -> list[Problem]:
    """`key=a,b` is a Hydra sweep (several runs), which one run cannot take; Hydra's own "Ambiguous value" error
    names no key of ours and offers --multirun, which tunelaunch has no use for. Say how to write a list or
    text instead. (Hydra's parser decides what is a sweep, so quoted and bracketed values pass.)"""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    lists = list_keys()
    problems = []
    for override in overrides:
        try:
            parsed = parser.parse_override(override)
        except HydraException:
            continue  # a syntax error: composition reports it in Hydra's words
        key = parsed.key_or_group
        if not parsed.is_sweep_override() or key in GROUPS or key.startswith("hydra"):
            continue
        value = override.partition("=")[2]
        quoted = f"quote it for the shell: \"{key}='{value}'\""
        fix = f"Write a list as {key}=[{value}] or {quoted}" if key in lists else f"To keep the commas, {quoted}"
        problems.append(Problem(key, f"{key}={value}: a bare comma makes several values (Hydra reads it as a "
                                     f"sweep). {fix}"))
    return problems


def list_keys() -> set[str]:
    """Keys that take a list (alone or as an alternative to text, like peft.target_modules)."""
    import typing

    def takes_list(tp) -> bool:
        return typing.get_origin(tp) is list or any(takes_list(t) for t in typing.get_args(tp))

    return {key for key, tp, *_ in walk_fields(RunConfig) if takes_list(tp)}


def map_keys() -> set[str]:
    """Keys whose value is a map of names chosen by the user (cluster.env): `cluster.env.NCCL_DEBUG=INFO` sets one
    entry."""
    import typing

    return {key for key, tp, *_ in walk_fields(RunConfig) if typing.get_origin(tp) is dict}


def _add_map_entries(overrides: list[str]) -> list[str]:
    """`cluster.env.NAME=value` adds an entry that the defaults do not have, and `cluster.env={NAME: value}`
    replaces an empty map, which Hydra calls appending: it wants `++` for both."""
    maps = map_keys()
    out = []
    for override in overrides:
        key = override.partition("=")[0]
        bare = key.lstrip("+~")
        if (bare in maps or bare.rpartition(".")[0] in maps) and not key.startswith("~"):
            override = "++" + override.lstrip("+")
        out.append(override)
    return out


def group_keys(group: str, option: str) -> list[str]:
    """Dotted keys a conf/ group option sets (its `# @package` header decides where they land)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return []
    text = path.read_text()
    package = next((line.split("@package", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("# @package")), group)
    prefix = "" if package == "_global_" else f"{package}."
    return [prefix + k for k in _flatten(yaml.safe_load(text) or {})]


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def recipe_names() -> list[str]:
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.glob("*/*.yaml"))


def _split_recipe(overrides: list[str], problems: list) -> tuple[str | None, list[str]]:
    recipe, rest = None, []
    for override in overrides:
        if override.startswith("recipe="):
            recipe = override.split("=", 1)[1].removesuffix(".yaml").removeprefix("recipes/")
            if recipe not in recipe_names():
                hint = did_you_mean(recipe, recipe_names()) or f" Recipes: {', '.join(recipe_names())}."
                problems.append(Problem("recipe", f"no recipe '{recipe}' in recipes/.{hint}"))
                recipe = None
        else:
            rest.append(override)
    return recipe, rest


def _hydra_compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # The schema's defaults, as an untyped node: every key exists for overrides, and our own parser
    # (not OmegaConf) does the type checking so that all problems are reported together.
    ConfigStore.instance().store(name=_BASE_NAME, node=dataclasses.asdict(RunConfig()))
    if not OmegaConf.has_resolver("embedded"):
        from launcher.embedded import embedded_model

        OmegaConf.register_new_resolver("embedded", embedded_model)
    if not OmegaConf.has_resolver("repo"):  # shipped recipes name shipped data from any working directory
        OmegaConf.register_new_resolver("repo", lambda rel="": str(REPO_ROOT / rel))
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
            return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ConfigError([Problem("overrides", message)]) from None


def _pop(tree: dict, *path: str):
    for part in path[:-1]:
        tree = tree.get(part) if isinstance(tree, dict) else None
        if not isinstance(tree, dict):
            return None
    return tree.pop(path[-1], None)
