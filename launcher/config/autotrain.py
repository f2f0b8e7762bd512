"""AutoTrain compatibility: its `config.yaml` and its 48 LLMTrainingParams names, mapped onto our schema.

The table below is the whole mapping. A row whose meaning differs from ours carries a pair of converters;
the rest copy the value. `training_params()` runs the table backwards to write `training_params.json`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from launcher.config.errors import Problem, did_you_mean
from launcher.config.schema import REDACTED, RunConfig
from launcher.methods import AUTOTRAIN_TASKS

Convert = Callable[[Any, list], Any]  # (autotrain value, notes) -> native value


def _same(value, notes):
    return value


def _none_as(default):
    return lambda value, notes: default if value is None else value


def _comma_joined(value):
    """AutoTrain writes a list of module names as one comma-separated string."""
    return ",".join(value) if isinstance(value, list) else value


def _flash(value, notes):
    return "flash_attention_2" if value else None  # None: keep our default (auto)


def _grad_ckpt(value, notes):
    return False if value else None


def _mixed_precision(value, notes):
    if value is None:
        return None  # AutoTrain's "not chosen": our `auto` picks per machine
    return {"no": "fp32", "none": "fp32", "fp32": "fp32"}.get(str(value).lower(), value)


def _block_size(value, notes):
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError("a list of block sizes is not supported; give one number")
        return value[0]
    return value


def _unsloth(value, notes):
    if value:
        notes.append("params.unsloth: true is ignored: tunelaunch does not use unsloth "
                     "(flash-attention-2 and packing give the speed-up instead).")
    return None


@dataclass(frozen=True)
class Param:
    name: str
    """AutoTrain's name."""
    default: Any
    """AutoTrain's documented default."""
    key: Optional[str]
    """Our dotted key, or None when it maps to nothing (unsloth)."""
    to_native: Convert = _same
    to_autotrain: Callable[[Any], Any] = lambda v: v


# Every LLMTrainingParams field, in the order AutoTrain documents them, with its documented default.
PARAMS: tuple[Param, ...] = (
    Param("model", "gpt2", "model.name_or_path"),
    Param("project_name", "project-name", "project_name"),
    Param("data_path", "data", "data.path"),
    Param("train_split", "train", "data.train_split"),
    Param("valid_split", None, "data.valid_split"),
    Param("add_eos_token", True, "data.add_eos_token"),
    Param("block_size", -1, "data.block_size", _block_size),
    Param("model_max_length", 2048, "model.max_length"),
    Param("padding", "right", "data.padding_side", _none_as("right")),
    Param("trainer", "default", "trainer.name"),
    Param("use_flash_attention_2", False, "model.attn_implementation", _flash,
          lambda v: v == "flash_attention_2"),
    Param("log", "none", "logging.report_to", _none_as("none")),
    Param("disable_gradient_checkpointing", False, "training.gradient_checkpointing", _grad_ckpt,
          lambda v: v is False),
    Param("logging_steps", -1, "logging.steps"),
    Param("eval_strategy", "epoch", "training.eval_strategy"),
    Param("save_total_limit", 1, "training.save_total_limit"),
    Param("auto_find_batch_size", False, "training.auto_find_batch_size"),
    Param("mixed_precision", None, "precision.mixed_precision", _mixed_precision,
          lambda v: None if v == "fp32" else v),
    Param("lr", 3e-5, "training.lr"),
    Param("epochs", 1, "training.epochs"),
    Param("batch_size", 2, "training.batch_size"),
    Param("warmup_ratio", 0.1, "training.warmup_ratio"),
    Param("gradient_accumulation", 4, "training.gradient_accumulation"),
    Param("optimizer", "adamw_torch", "training.optimizer"),
    Param("scheduler", "linear", "training.scheduler"),
    Param("weight_decay", 0.0, "training.weight_decay"),
    Param("max_grad_norm", 1.0, "training.max_grad_norm"),
    Param("seed", 42, "training.seed"),
    Param("chat_template", None, "data.chat_template", _none_as("none"),
          lambda v: None if v == "none" else v),
    Param("quantization", "int4", "quantization.mode", _none_as("none"),
          lambda v: None if v == "none" else v),
    Param("target_modules", "all-linear", "peft.target_modules", _none_as("all-linear"), _comma_joined),
    Param("merge_adapter", False, "peft.merge_adapter"),
    Param("peft", False, "peft.enabled"),
    Param("lora_r", 16, "peft.r"),
    Param("lora_alpha", 32, "peft.alpha"),
    Param("lora_dropout", 0.05, "peft.dropout"),
    Param("model_ref", None, "trainer.model_ref"),
    Param("dpo_beta", 0.1, "trainer.beta"),
    Param("max_prompt_length", 128, "data.max_prompt_length"),
    Param("max_completion_length", None, "data.max_completion_length"),
    Param("prompt_text_column", None, "data.column_mapping.prompt_text_column"),
    Param("text_column", "text", "data.column_mapping.text_column"),
    Param("rejected_text_column", None, "data.column_mapping.rejected_text_column"),
    Param("push_to_hub", False, "hub.push_to_hub"),
    Param("username", None, "hub.username"),
    Param("token", None, "hub.token"),
    Param("unsloth", False, None, _unsloth, lambda v: False),
    Param("distributed_backend", None, "distributed.backend", _none_as("auto"),
          lambda v: None if v == "auto" else v),
)
PARAMS_BY_NAME = {p.name: p for p in PARAMS}
BACKENDS = ("local", "local-cli")
# Where the file's own sections put a value that is also a params name.
TOP_LEVEL = {"base_model": "model", "project_name": "project_name", "log": "log"}
DATA_KEYS = {"path": "data_path", "train_split": "train_split", "valid_split": "valid_split",
             "chat_template": "chat_template"}
COLUMN_KEYS = ("text_column", "rejected_text_column", "prompt_text_column")
HUB_KEYS = ("username", "token", "push_to_hub")
# The hosted fine-tuning API's batch names (003): a global batch, and the per-device batch it is made of.
# train_batch_size has no LLMTrainingParams twin; micro_batch_size is batch_size under another name.
HOSTED_BATCH = {"train_batch_size": "training.global_batch_size", "micro_batch_size": None}
FILE_KEYS = ("task", "base_model", "project_name", "log", "backend", "data", "params", "hub")


@dataclass
class Translation:
    """A config file turned into our terms."""
    values: dict = field(default_factory=dict)
    """Nested mapping in our schema's keys."""
    groups: dict = field(default_factory=dict)
    """Hydra group choices the file implies (e.g. trainer=dpo)."""
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    """What was adjusted or ignored, shown by `plan`."""
    origin: dict = field(default_factory=dict)
    """Our key -> the key the user wrote, so errors speak the file's language."""


def is_autotrain(doc: dict) -> bool:
    return any(k in doc for k in ("task", "base_model", "params", "backend"))


_ENV = re.compile(r"\$\{(\w+)\}")


def expand_env(doc: Any, path: str, unset: list) -> Any:
    """Replace `${VAR}` with the environment's value, as AutoTrain does; unset variables become null."""
    if isinstance(doc, dict):
        return {k: expand_env(v, f"{path}{k}.", unset) for k, v in doc.items()}
    if isinstance(doc, list):
        return [expand_env(v, path, unset) for v in doc]
    if isinstance(doc, str):
        whole = _ENV.fullmatch(doc.strip())
        if whole:
            name = whole.group(1)
            if name not in os.environ:
                unset.append((path.rstrip("."), name))
            return os.environ.get(name)
        return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), doc)
    return doc


def translate(doc: dict) -> Translation:
    """Map an AutoTrain config file (already env-expanded) onto our schema."""
    out = Translation()
    params: dict[str, tuple[Any, str]] = {}  # AutoTrain name -> (value, where the user wrote it)

    def put(name: str, value: Any, where: str):
        if name in params and params[name][0] != value:
            out.problems.append(Problem(
                where, f"conflicts with {params[name][1]} ({params[name][0]!r} vs {value!r}); keep one"))
        params[name] = (value, where)

    for key in doc:
        if key not in FILE_KEYS:
            out.problems.append(Problem(key, _unknown_top_level(str(key))))

    backend = doc.get("backend", "local")
    if backend not in BACKENDS:
        out.problems.append(Problem("backend", (
            f"'{backend}' is not supported: tunelaunch trains where it is started (`backend: local`): this "
            "machine, or each node of a multi-node job (distributed.num_nodes / node_rank). Set `backend: local` "
            "or remove the key.")))

    for key, name in TOP_LEVEL.items():
        if key in doc:
            put(name, doc[key], key)

    data = doc.get("data") or {}
    if not isinstance(data, dict):
        out.problems.append(Problem("data", "expected a mapping (path, train_split, ...)"))
        data = {}
    for key, value in data.items():
        if key in DATA_KEYS:
            put(DATA_KEYS[key], value, f"data.{key}")
        elif key == "column_mapping":
            for col, col_value in (value or {}).items():
                if col in COLUMN_KEYS:
                    put(col, col_value, f"data.column_mapping.{col}")
                else:
                    out.problems.append(Problem(f"data.column_mapping.{col}", _unknown(col, COLUMN_KEYS)))
        else:
            out.problems.append(Problem(f"data.{key}", _unknown(key, (*DATA_KEYS, "column_mapping"))))

    for key, value in (doc.get("hub") or {}).items():
        if key in HUB_KEYS:
            put(key, value, f"hub.{key}")
        else:
            out.problems.append(Problem(f"hub.{key}", _unknown(key, HUB_KEYS)))

    for key, value in (doc.get("params") or {}).items():
        if key in PARAMS_BY_NAME:
            put(key, value, f"params.{key}")
        elif key == "micro_batch_size":
            put("batch_size", value, f"params.{key}")
        elif key in HOSTED_BATCH:
            _set(out.values, HOSTED_BATCH[key], value)
            out.origin[HOSTED_BATCH[key]] = f"params.{key}"
        else:
            out.problems.append(Problem(f"params.{key}", _unknown_param(key)))

    task = doc.get("task")
    if task is not None:
        if task not in AUTOTRAIN_TASKS:
            out.problems.append(Problem("task", _bad_value(task, list(AUTOTRAIN_TASKS))))
        elif AUTOTRAIN_TASKS[task] is not None:
            put("trainer", AUTOTRAIN_TASKS[task], "task")
    trainer = params.get("trainer", ("default", "default"))[0]
    out.groups["trainer"] = trainer

    # AutoTrain's defaults are quantization=int4 with peft=false: it quantizes only when peft is on.
    written = "quantization" in params
    quant, where = params.get("quantization", ("int4", "params.quantization"))
    if quant not in (None, "none"):
        if not params.get("peft", (False,))[0]:
            if written:
                out.notes.append(f"{where}: {quant} is ignored because peft is false (as in AutoTrain); "
                                 "set peft: true for QLoRA.")
            params["quantization"] = (None, where)
        elif not written:
            out.notes.append("quantization: int4 (AutoTrain's default with peft: true, i.e. QLoRA); "
                             "set quantization: none for plain LoRA.")
            params["quantization"] = ("int4", where)

    if params.get("distributed_backend", (None,))[0] == "deepspeed":
        # AutoTrain's deepspeed is always ZeRO-3; keep that meaning (a command line can still choose the stage).
        _set(out.values, "distributed.zero_stage", 3)
        out.origin["distributed.zero_stage"] = params["distributed_backend"][1]
        out.notes.append(f"{params['distributed_backend'][1]}: deepspeed runs ZeRO-3, as in AutoTrain; "
                         "distributed.zero_stage=2 (or 1) and distributed.offload=optimizer choose otherwise.")

    for name, (value, where) in params.items():
        spec = PARAMS_BY_NAME[name]
        try:
            native = spec.to_native(value, out.notes)
        except ValueError as err:
            out.problems.append(Problem(where, str(err)))
            continue
        if spec.key is None or native is None and spec.to_native is not _same:
            continue
        _set(out.values, spec.key, native)
        out.origin[spec.key] = where
    return out


def training_params(cfg: RunConfig) -> dict:
    """The run in AutoTrain's 48 parameter names (written as training_params.json), secrets redacted."""
    out = {}
    for spec in PARAMS:
        if spec.key is None:
            out[spec.name] = spec.to_autotrain(None)
            continue
        value = _get(cfg, spec.key)
        if spec.name == "token":
            value = REDACTED if value else None
        out[spec.name] = spec.to_autotrain(value)
    if not cfg.peft.enabled:
        out["quantization"] = None
    return out


def _unknown(key: str, known, what: str = "keys") -> str:
    hint = did_you_mean(key, known)
    if hint:
        return f"unknown key.{hint}"
    return f"unknown. Known {what}: {', '.join(known)}."


def _bad_value(value: Any, allowed: list) -> str:
    """The key is right and its value is not: say so, with the values it takes."""
    return f"unknown value {value!r}. Allowed values: {', '.join(allowed)}.{did_you_mean(value, allowed)}"


def _unknown_param(key: str) -> str:
    """`params.learning_rate`: another tool's name for one of ours is answered with AutoTrain's name for it."""
    from launcher.config import aliases

    ours = aliases.key_named(key)
    by_key = {p.key: p.name for p in PARAMS}
    if ours is not None and ours in by_key and by_key[ours] != key:
        return f"unknown key. Did you mean '{by_key[ours]}'?"
    return _unknown(key, [*PARAMS_BY_NAME, *HOSTED_BATCH], "AutoTrain parameters")


def _unknown_top_level(key: str) -> str:
    """`lr` or `learning_rate` beside `task`: a training parameter, which AutoTrain reads under `params:`."""
    if key in PARAMS_BY_NAME:
        return f"unknown at the top level. Did you mean 'params.{key}'?"
    if did_you_mean(key, FILE_KEYS):  # a misspelt file key (`tsk`) before a parameter
        return _unknown(key, FILE_KEYS)
    hint = _unknown_param(key)
    if hint.startswith("unknown key. Did you mean"):
        return hint.replace("Did you mean '", "Did you mean 'params.")
    return _unknown(key, FILE_KEYS, "AutoTrain config keys")


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
