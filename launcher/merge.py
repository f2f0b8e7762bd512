"""`tunelaunch merge RUN_DIR [--output DIR]`: fold a LoRA adapter into its base weights, as a standalone model.

A merge that fails raises: the caller asked for a standalone model, and a run folder that silently still
needs its base model is the failure AutoTrain users meet only when they deploy.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from launcher.methods import METHODS
from launcher.run_dir import read_config


class MergeError(RuntimeError):
    pass


def load_merged(folder: str | Path, dtype=torch.float32, score_head: bool = False):
    """The model of a folder in memory, its LoRA adapter (adapter_config.json) folded into the base weights; a
    full model folder's model as it is. The folder is left untouched (`tunelaunch merge` writes a merged copy;
    `eval` and `export` merge in memory). A merge that fails or leaves LoRA weights raises MergeError."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        loader = AutoModelForSequenceClassification if score_head else AutoModelForCausalLM
        return loader.from_pretrained(folder, dtype=dtype)
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    loader = AutoPeftModelForSequenceClassification if score_head else AutoPeftModelForCausalLM
    try:
        merged = loader.from_pretrained(folder, dtype=dtype).merge_and_unload()
    except Exception as err:  # any failure here means no standalone model: say so loudly
        raise MergeError(f"merging the adapter of {folder} failed: {type(err).__name__}: {err}") from err
    if any("lora_" in name for name, _ in merged.named_parameters()):
        raise MergeError(f"merging the adapter of {folder} left LoRA weights in the model; the merge did not happen")
    return merged


def merge_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    from transformers import AutoTokenizer

    from launcher.console import hide_model_file_bars

    hide_model_file_bars()
    run_dir = Path(run_dir)
    adapter_config = run_dir / "adapter_config.json"
    if not adapter_config.is_file():
        raise MergeError(f"{run_dir} holds no LoRA adapter (adapter_config.json): nothing to merge")
    output = Path(output) if output else run_dir / "merged"
    if output.exists() and any(output.iterdir()):
        raise MergeError(f"{output} exists and is not empty; choose another --output")
    if (run_dir / "config.yaml").is_file():  # a run folder: its method says which head the model has
        score_head = METHODS[read_config(run_dir).trainer.name].score_head
    else:  # a bare adapter folder: peft's own record
        score_head = json.loads(adapter_config.read_text()).get("task_type") == "SEQ_CLS"
    merged = load_merged(run_dir, torch.float32, score_head)
    merged.save_pretrained(output)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(output)
    return output


def merge_saved_adapter(run_dir: Path, tokenizer) -> None:
    """`peft.merge_adapter` under FSDP, on rank 0 after the gathered adapter was saved into run_dir: the trained
    model's weights are DTensor shards spread over the ranks, so instead of merging in place the saved adapter is
    merged into a fresh copy of its base (merge_run, as `tunelaunch merge` does) and the merged model
    replaces the adapter files, as the unsharded path leaves them."""
    run_dir = Path(run_dir)
    staging = run_dir / ".fsdp-merge"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        os.replace(run_dir / name, staging / name)
    tokenizer.save_pretrained(staging)  # merge_run copies the adapter folder's tokenizer beside the model
    merged = merge_run(staging, staging / "merged")
    for item in merged.iterdir():
        os.replace(item, run_dir / item.name)
    shutil.rmtree(staging)
