"""What an export reads: the run's final model (or adapter, on its base), found and checked from its json files
before any weight loads, then loaded merged in memory.

Everything above `load_merged` uses the standard library only: `tunelaunch export` refuses bad input in a
fraction of a second, and the CLI builds its parser without importing torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ExportInputError(ValueError):
    """Bad input found before any weight loads: the message names the file or key and the fix (exit 2)."""


@dataclass(frozen=True)
class ExportSource:
    """The folder a run's weights and tokenizer are read from, and the model's config.json."""

    folder: Path
    """The run folder itself when it holds a final model or adapter, else its latest complete checkpoint."""
    config: dict
    """The full model's config.json: the run's own, or for an adapter its base model's."""
    adapter_base: str | None
    """The base model an adapter is merged into (adapter_config.json's base_model_name_or_path); None for a full
    fine-tune."""
    adapter_task: str | None = None
    """adapter_config.json's task_type: SEQ_CLS for a reward model's adapter, whose base config.json still says
    ...ForCausalLM."""

    @property
    def architecture(self) -> str:
        architecture = (self.config.get("architectures") or ["(none in config.json)"])[0]
        if self.adapter_task == "SEQ_CLS":  # the merged model is the base with a score head
            return architecture.replace("ForCausalLM", "ForSequenceClassification")
        return architecture

    @property
    def score_head(self) -> bool:
        """A reward model: it is loaded with its score head, not a language-model head."""
        return self.architecture.endswith("ForSequenceClassification")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportInputError(f"{path}: cannot be read as JSON ({err})") from err


def find_source(run_dir: str | Path) -> ExportSource:
    """The weights and config of a run folder (or of a plain model / adapter folder), without loading weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportInputError(f"{run_dir}: no such folder (give a run folder, e.g. the project_name of a run)")
    from launcher.run_dir import model_source  # yaml and the schema: cheap, but not needed for the checks above

    folder = model_source(run_dir)
    if folder is None:
        raise ExportInputError(f"{run_dir} holds no model yet: no final model or adapter and no complete checkpoint "
                               f"(let the run finish, or resume it)")
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        return ExportSource(folder, _read_json(folder / "config.json"), None)
    adapter = _read_json(adapter_config)
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise ExportInputError(f"{adapter_config} names no base_model_name_or_path: the adapter cannot be merged")
    return ExportSource(folder, _base_config(base, adapter_config), base, adapter.get("task_type"))


def _base_config(base: str, adapter_config: Path) -> dict:
    """The base model's config.json: a local folder's, else the hub cache's (config only, no weights)."""
    local = Path(base).expanduser()
    if (local / "config.json").is_file():
        return _read_json(local / "config.json")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(base).to_dict()
    except Exception as err:  # the base is neither a folder nor reachable: say which file names it
        raise ExportInputError(f"{adapter_config}: base model {base!r} is not a local folder and its config could "
                               f"not be read ({type(err).__name__}: {err})") from err


def load_merged(source: ExportSource):
    """(model, tokenizer): the run's model in fp32 with its adapter (if any) merged in, and its saved tokenizer
    (with the chat template used in training)."""
    import torch
    from transformers import AutoTokenizer

    from launcher.console import hide_model_file_bars
    from launcher.merge import load_merged as merged_model

    hide_model_file_bars()
    tokenizer = AutoTokenizer.from_pretrained(source.folder)
    # merged in memory: the run folder is left as it is (`tunelaunch merge` writes a merged folder instead)
    return merged_model(source.folder, torch.float32, source.score_head).eval(), tokenizer
