"""`manifest.json`: what produced a run (package versions, data hash, launch command, hardware, metrics)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.data.files import locate
from launcher import atomic

PACKAGES = ("tunelaunch", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
            "bitsandbytes", "flash-attn")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def data_hash(cfg: RunConfig) -> dict:
    """sha256 of each local data file (hub datasets are named by id and split)."""
    out = {}
    for split in filter(None, (cfg.data.train_split, cfg.data.valid_split)):
        source = locate(cfg.data.path, split)
        if source is None:
            continue
        if source.file is not None:
            out[str(source.file)] = hashlib.sha256(source.file.read_bytes()).hexdigest()
        else:
            out[f"{source.hub_id}:{source.hub_config or ''}[{split}]"] = "hub"
    return out


def write(folder: Path, cfg: RunConfig, metrics: dict) -> None:
    launch_file = folder / "launch.json"
    launch = json.loads(launch_file.read_text()) if launch_file.is_file() else {}
    # (not run_dir.write_json: run_dir reads data_hash from here, and the two must not import each other)
    atomic.write_text(folder / "manifest.json", json.dumps({"versions": versions(), "data": data_hash(cfg), "launch": launch,
                                          "metrics": metrics}, indent=2, default=str))
