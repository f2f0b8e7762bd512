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
    """sha256 of each local data file (hub datasets are named by id and split); with data.datasets, the files of
    every source (one flat map: a resume compares it file by file)."""
    if cfg.data.datasets:
        return {name: digest for source in source_hashes(cfg) for name, digest in source["files"].items()}
    return _split_hashes(cfg.data.path, cfg.data.train_split, cfg.data.valid_split)


def source_hashes(cfg: RunConfig) -> list[dict]:
    """Each source of data.datasets: its name, path, weight and the hashes of its files (empty for one source)."""
    return [{"name": s.name or s.path, "path": s.path, "weight": s.weight,
             "files": _split_hashes(s.path, s.train_split, s.valid_split)} for s in cfg.data.datasets]


def file_sha256(path: Path) -> str:
    """sha256 of a file read in chunks: a streamed corpus may not fit in memory (hashlib.file_digest is 3.11+)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split_hashes(path: str, train_split: str, valid_split: str | None) -> dict:
    out = {}
    for split in filter(None, (train_split, valid_split)):
        source = locate(path, split)
        if source is None:
            continue
        if source.file is not None:
            out[str(source.file)] = file_sha256(source.file)
        else:
            out[f"{source.hub_id}:{source.hub_config or ''}[{split}]"] = "hub"
    return out


def write(folder: Path, cfg: RunConfig, metrics: dict) -> None:
    launch_file = folder / "launch.json"
    launch = json.loads(launch_file.read_text()) if launch_file.is_file() else {}
    # (not run_dir.write_json: run_dir reads data_hash from here, and the two must not import each other)
    doc = {"versions": versions(), "data": data_hash(cfg), "launch": launch, "metrics": metrics}
    if cfg.data.datasets:
        doc["data_sources"] = source_hashes(cfg)
    atomic.write_text(folder / "manifest.json", json.dumps(doc, indent=2, default=str))
