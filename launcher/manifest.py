"""`manifest.json`: what produced a run (package versions, data hash, launch command, hardware, metrics) and, once it
is scored, its eval scores with the harness and task versions that produced them."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.data.files import locate
from launcher import atomic
from launcher.evaluation import scores as eval_scores

MANIFEST = "manifest.json"

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
    atomic.write_text(folder / MANIFEST, json.dumps(doc, indent=2, default=str))


def eval_record(run_dir: Path) -> dict:
    """What the run's `eval/<task>.json` files say, in the shape the manifest keeps under "eval" ({} when the run
    was never scored):

        {"scores": {"arc_easy/acc": 0.42, ...},           launcher.evaluation.scores.read_scores: one naming
         "higher_is_better": {"arc_easy/acc": true, ...},  lm-eval's direction of each metric (null: it has none)
         "tasks": {"arc_easy": {"version": 1.0, "lm_eval_version": "0.4.13", "num_fewshot": 0, "samples": 100,
                                "samples_in_task": 2376, "file": "eval/arc_easy.json"}}}

    A score is comparable with another only at the same task version (and few-shot count, and samples):
    the record keeps them beside it."""
    run_dir = Path(run_dir)
    found = eval_scores.read_scores(run_dir)
    if not found:
        return {}
    directions: dict[str, bool | None] = {}
    tasks: dict[str, dict] = {}
    for path in eval_scores.result_files(run_dir):
        try:
            doc = json.loads(path.read_text())
            results = doc.get("results", {})
        except (OSError, ValueError, AttributeError):
            continue  # not lm-eval's output: read_scores skipped it too
        for task, metrics in results.items():
            better = doc.get("higher_is_better", {}).get(task, {})
            for key in metrics:
                name = eval_scores.score_name(task, key)
                if name in found:
                    directions[name] = better.get(key.split(",", 1)[0])
            counts = doc.get("n-samples", {}).get(task, {})
            tasks[task] = {"version": doc.get("versions", {}).get(task), "lm_eval_version": doc.get("lm_eval_version"),
                           "num_fewshot": doc.get("n-shot", {}).get(task), "samples": counts.get("effective"),
                           "samples_in_task": counts.get("original"), "file": str(path.relative_to(run_dir))}
    return {"scores": found, "higher_is_better": directions, "tasks": tasks}


def record_eval(run_dir: Path, record: dict) -> dict | None:
    """Set manifest.json's "eval" to `record` (launcher.manifest.eval_record; {} removes it) and return the run's
    metrics; None, writing nothing, where the folder has no manifest (a model folder, an unfinished run).
    launcher.model_card.record_scores calls it with the card it refreshes."""
    manifest_file = Path(run_dir) / MANIFEST
    if not manifest_file.is_file():
        return None
    doc = json.loads(manifest_file.read_text())
    doc.pop("eval", None)
    if record:
        doc["eval"] = record
    atomic.write_text(manifest_file, json.dumps(doc, indent=2, default=str))
    return doc.get("metrics", {})
