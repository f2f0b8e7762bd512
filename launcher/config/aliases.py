"""Every name a key goes by: ours, AutoTrain's, and the names other fine-tuning tools give it.

Users arrive with names from elsewhere (`learning_rate`, `lora_r`, `sequence_len`). This one table serves the
did-you-mean of an unknown key, `tunelaunch explain`, and the recognition of an axolotl or LLaMA-Factory file
passed with --config, so the three never disagree. AutoTrain's names are not repeated here: they are read from
the [brackets] that end the schema's docstrings.
"""
from __future__ import annotations

import difflib
import functools
import re

# Other tools' names -> our dotted key (axolotl, LLaMA-Factory and transformers' TrainingArguments); names that
# AutoTrain shares with them (base_model, micro_batch_size, lora_r) are AutoTrain's, in the docstrings.
# tests/unit/config/test_aliases.py checks that every target is one of our keys and no name is listed twice.
ALIASES: dict[str, str] = {
    "model_name_or_path": "model.name_or_path",
    "datasets": "data.path",
    "dataset": "data.path",
    "dataset_dir": "data.path",
    "template": "data.chat_template",
    "stage": "trainer.name",
    "sequence_len": "data.block_size",
    "cutoff_len": "data.block_size",
    "max_seq_length": "data.block_size",
    "sample_packing": "data.packing",
    "packing": "data.packing",
    "learning_rate": "training.lr",
    "num_epochs": "training.epochs",
    "num_train_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation",
    "lr_scheduler": "training.scheduler",
    "lr_scheduler_type": "training.scheduler",
    "optim": "training.optimizer",
    "save_steps": "training.save_steps",
    "resume_from_checkpoint": "training.resume_from",
    "output_dir": "project_name",
    "adapter": "peft.enabled",
    "finetuning_type": "peft.enabled",
    "lora_rank": "peft.r",
    "lora_target": "peft.target_modules",
    "lora_target_modules": "peft.target_modules",
    "load_in_4bit": "quantization.mode",
    "load_in_8bit": "quantization.mode",
    "quantization_bit": "quantization.mode",
    "bf16": "precision.mixed_precision",
    "fp16": "precision.mixed_precision",
    "flash_attention": "model.attn_implementation",
    "flash_attn": "model.attn_implementation",
    "deepspeed": "distributed.backend",
    "report_to": "logging.report_to",
    "wandb_project": "logging.report_to",
    "hub_model_id": "hub.username",
}

# Keys that only the named tool writes at the top level of its file: two of them mark the file as that tool's.
TELLTALES: dict[str, frozenset[str]] = {
    "axolotl": frozenset({"sequence_len", "micro_batch_size", "num_epochs", "datasets", "adapter",
                          "load_in_4bit", "load_in_8bit", "lora_target_modules", "sample_packing",
                          "base_model_config", "val_set_size", "wandb_project", "flash_attention"}),
    "LLaMA-Factory": frozenset({"model_name_or_path", "stage", "finetuning_type", "cutoff_len", "lora_rank",
                                "lora_target", "template", "dataset", "dataset_dir", "do_train",
                                "per_device_train_batch_size", "num_train_epochs", "quantization_bit"}),
}


def autotrain_names(doc: str) -> list[str]:
    """AutoTrain's names in a docstring's closing brackets: `[trainer, task]`, `[use_flash_attention_2: true =
    flash_attention_2]` (the text after a colon says how the value maps, it is not a name)."""
    found = re.search(r"\[([^\]]*)\]\s*$", doc)
    if not found:
        return []
    return [part.split(":")[0].strip() for part in found.group(1).split(",") if part.split(":")[0].strip()]


@functools.cache
def names_by_key() -> dict[str, tuple[str, ...]]:
    """Our dotted key -> every name it goes by, ours first (the key, its last part), then AutoTrain's, then the
    aliases."""
    from launcher.config.keys import walk_fields
    from launcher.config.schema import RunConfig

    names: dict[str, list[str]] = {}
    for key, _, _, doc in walk_fields(RunConfig):
        names[key] = [key, key.rsplit(".", 1)[-1], *autotrain_names(doc)]
    for alias, key in ALIASES.items():
        names[key].append(alias)
    return {key: tuple(dict.fromkeys(found)) for key, found in names.items()}


@functools.cache
def keys_by_name() -> dict[str, tuple[str, ...]]:
    """Any name -> the keys that go by it (a last part like `name` belongs to several)."""
    keys: dict[str, list[str]] = {}
    for key, names in names_by_key().items():
        for name in names:
            keys.setdefault(name, []).append(key)
    return {name: tuple(found) for name, found in keys.items()}


def key_named(written: str) -> str | None:
    """Our key for a name the user wrote (`training.learning_rate`, `micro_batch_size`), or None when the name
    is nobody's or is shared by several keys (`kind`: no guess). A dotted name is tried whole, then by its last
    part (`training.learning_rate`: the section is ours, the name another tool's)."""
    for name in (written, written.rpartition(".")[2]):
        keys = keys_by_name().get(name, ())
        if len(keys) == 1:
            return keys[0]
    return None


def closest_key(written: str, cutoff: float = 0.75) -> str | None:
    """Our key whose name is closest to a misspelt one (`lerning_rate` -> training.lr), or None."""
    leaf = written.rpartition(".")[2]
    names = [n for n, keys in keys_by_name().items() if len(keys) == 1]
    for name in (written, leaf):
        close = difflib.get_close_matches(name, names, n=1, cutoff=cutoff)
        if close:
            return keys_by_name()[close[0]][0]
    return None


def keys_matching(query: str) -> list[str]:
    """Keys `tunelaunch explain QUERY` shows: those starting with it (a section) or going by it under any name;
    failing those, the keys with it inside one of their names (a substring finds more than the user meant, so
    it is the last resort: `explain data` keeps to the data section)."""
    exact = [key for key, names in names_by_key().items() if key.startswith(query) or query in names]
    return exact or [key for key, names in names_by_key().items() if any(query in name for name in names)]


def other_names(key: str) -> list[str]:
    """The aliases of a key (AutoTrain's names are already in its docstring)."""
    return [alias for alias, target in ALIASES.items() if target == key]


def foreign_tool(doc: dict) -> str | None:
    """'axolotl' or 'LLaMA-Factory' when the file's top-level keys give it away; None for ours or AutoTrain's."""
    counts = {tool: len(telltales & set(doc)) for tool, telltales in TELLTALES.items()}
    tool, count = max(counts.items(), key=lambda item: item[1])
    return tool if count >= 2 else None


def foreign_message(tool: str, doc: dict) -> str:
    """One message that says which tool's file this is and where each of its keys goes in ours."""
    mapped, unmapped = [], []
    for name in doc:
        key = key_named(str(name))
        (mapped if key else unmapped).append(f"`{name}` -> `{key}`" if key else f"`{name}`")
    article = "an" if tool[0] in "aeiou" else "a"
    text = (f"this looks like {article} {tool} config, which tunelaunch does not read. Write it with tunelaunch's keys "
            "(a `--config` file of sections, or AutoTrain's config.yaml); `tunelaunch explain KEY` documents each. "
            f"Its keys in ours: {', '.join(mapped) or 'none'}.")
    if unmapped:
        text += f" No counterpart here: {', '.join(unmapped)}."
    return text
