"""Turn `auto` values into concrete ones for the machine at hand, and check the packages the run needs.

Every adjustment is returned as a note that `plan` prints: nothing changes silently.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.config.validate import effective_block_size
from launcher.distributed.hardware import Hardware


def model_positions(cfg: RunConfig) -> int | None:
    """max_position_embeddings of a local model folder (read from config.json; no weights are touched)."""
    config = Path(cfg.model.name_or_path).expanduser() / "config.json"
    if cfg.model.gguf_file or not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def resolve(cfg: RunConfig, hw: Hardware) -> tuple[list[Problem], list[str]]:
    """Fill in `auto` values in place; returns (problems, notes)."""
    notes: list[str] = []
    problems: list[Problem] = []

    mp = cfg.precision.mixed_precision
    if hw.gpus == 0:
        if mp in ("bf16", "fp16"):
            notes.append(f"precision: {mp} needs a GPU and this machine has none, so the run uses fp32")
        elif mp == "auto":
            notes.append("precision: auto -> fp32 (no GPU)")
        cfg.precision.mixed_precision = "fp32"
    elif mp == "auto":
        cfg.precision.mixed_precision = "bf16" if hw.bf16 else "fp16"
        notes.append(f"precision: auto -> {cfg.precision.mixed_precision} ({hw.gpu_name})")
    elif mp == "bf16" and not hw.bf16:
        cfg.precision.mixed_precision = "fp16"
        notes.append(f"precision: bf16 is not supported by {hw.gpu_name}, so the run uses fp16")

    attn = cfg.model.attn_implementation
    flash_ok = hw.gpus > 0 and hw.flash_attn
    if attn == "auto":
        cfg.model.attn_implementation = "flash_attention_2" if flash_ok else "sdpa"
        why = "flash-attn installed, GPU present" if flash_ok else (
            "no GPU" if hw.gpus == 0 else "flash-attn not installed")
        notes.append(f"attention: auto -> {cfg.model.attn_implementation} ({why})")
    elif attn == "flash_attention_2" and not flash_ok:
        cfg.model.attn_implementation = "sdpa"
        why = "no GPU" if hw.gpus == 0 else "the flash-attn package is not installed"
        notes.append(f"attention: flash_attention_2 asked for, but {why}: using sdpa")

    if cfg.training.gradient_checkpointing == "auto":
        cfg.training.gradient_checkpointing = hw.gpus > 0
        notes.append(f"gradient checkpointing: auto -> {'on' if hw.gpus else 'off (CPU: it only costs time)'}")

    positions = model_positions(cfg)
    if cfg.data.block_size == -1:
        cfg.data.block_size = min(effective_block_size(cfg), positions or 1024)
        notes.append(f"block_size: -1 -> {cfg.data.block_size} (min(1024, model max length"
                     f"{', the model positions' if positions else ''}))")
    elif positions and cfg.data.block_size > positions:
        problems.append(Problem("data.block_size", f"{cfg.data.block_size} exceeds the {positions} positions the "
                                f"model was built for (max_position_embeddings in its config.json)"))

    if cfg.logging.report_to == "wandb" and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        notes.append("logging: wandb runs offline (no WANDB_API_KEY); upload later with `wandb sync <run>/wandb`")

    needed = {
        "bitsandbytes": cfg.quantization.mode != "none",
        "tensorboard": cfg.logging.report_to == "tensorboard",
        "wandb": cfg.logging.report_to == "wandb",
        "gguf": bool(cfg.model.gguf_file),
    }
    keys = {"bitsandbytes": "quantization.mode", "tensorboard": "logging.report_to",
            "wandb": "logging.report_to", "gguf": "model.gguf_file"}
    for package, wanted in needed.items():
        if wanted and importlib.util.find_spec(package) is None:
            problems.append(Problem(keys[package], f"needs the {package} package: pip install {package}"))
    return problems, notes
