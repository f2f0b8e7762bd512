"""The distill teacher at plan time: where its weights are, and whether it can teach this student.

trainer.teacher is a hub id, a local model folder, or a run folder of ours (its final model or adapter, else its
latest complete checkpoint). Distillation compares the teacher's and the student's full next-token distributions,
so both must share one vocabulary; when both are local this is checked here, from config.json and tokenizer.json,
without importing torch or transformers. A hub id that is not local is left to the worker (plan stays offline).
"""
from __future__ import annotations

import json
from pathlib import Path

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.config.validate import HUB_ID
from launcher.run_dir import model_source

WEIGHTS_MARKERS = ("config.json", "adapter_config.json")


def looks_local(name: str) -> bool:
    """As for model.name_or_path: an explicit path, or a name an existing file or folder answers to."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def model_folder(name: str) -> Path | None:
    """The local folder holding the teacher's weights: a run folder's final model, else its latest complete
    checkpoint (as `tunelaunch generate` loads a run); a model or adapter folder itself; None for a hub id or a
    folder holding neither."""
    if not looks_local(name):
        return None
    folder = Path(name).expanduser()
    if (folder / "config.yaml").is_file():  # a run folder of ours
        return model_source(folder)
    return folder if any((folder / marker).is_file() for marker in WEIGHTS_MARKERS) else None


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder was trained on (peft's own record), or None for a full model."""
    adapter = folder / "adapter_config.json"
    if not adapter.is_file():
        return None
    return json.loads(adapter.read_text()).get("base_model_name_or_path")


def teacher_config_folder(cfg: RunConfig) -> Path | None:
    """The local folder whose config.json describes the teacher's architecture (an adapter's base), for the
    memory estimate to count the teacher's weights; None when the teacher is not local (a hub id)."""
    if not cfg.trainer.teacher:
        return None
    folder = model_folder(cfg.trainer.teacher)
    if folder is None:
        return None
    base = adapter_base(folder)
    if base is None:
        return folder
    return Path(base).expanduser() if looks_local(base) and (Path(base).expanduser() / "config.json").is_file() \
        else None


def check_teacher(cfg: RunConfig) -> list[Problem]:
    """Problems with trainer.teacher for a distill run: none given, a local folder that is missing or holds no
    model, the student itself, or a vocabulary that differs from the student's."""
    if cfg.trainer.name != "distill":
        return []
    name = cfg.trainer.teacher
    if not name:
        return [Problem("trainer.teacher", "distill needs a teacher: trainer.teacher=<hub id, model folder or run "
                                           "folder> (a larger model of the student's family, same tokenizer)")]
    if not looks_local(name):
        if HUB_ID.match(name):
            return []  # a hub id: the worker downloads it (plan stays offline)
        return [Problem("trainer.teacher", f"'{name}' is neither an existing folder nor a hub id (org/name)")]
    path = Path(name).expanduser()
    if not path.is_dir():
        return [Problem("trainer.teacher", f"folder not found: {path}")]
    folder = model_folder(name)
    if folder is None:
        if (path / "config.yaml").is_file():
            return [Problem("trainer.teacher", f"the run folder {path} holds no model yet (no final model and no "
                                               "complete checkpoint): finish or resume that run first")]
        return [Problem("trainer.teacher", f"{path} holds no config.json or adapter_config.json: not a model, "
                                           "adapter or run folder")]
    student = Path(cfg.model.name_or_path).expanduser()
    if folder.resolve() == student.resolve():
        return [Problem("trainer.teacher / model.name_or_path",
                        f"the teacher is the student itself ({student}): their distributions are equal, the "
                        "divergence is 0 and nothing is learned; give a stronger model of the same family")]
    return _vocabulary_mismatch(cfg, folder, student)


def _vocabulary_mismatch(cfg: RunConfig, teacher: Path, student: Path) -> list[Problem]:
    """Compare the model vocab_size (what the logits span) and then the tokenizers' sizes, when both sides are
    readable; an unreadable side (a hub id, a GGUF student) is left to trl's own check at load."""
    if cfg.model.gguf_file or not student.is_dir():
        return []
    for what, size in (("vocab_size in config.json", model_vocab_size), ("tokenizer.json tokens", tokenizer_size)):
        t, s = size(teacher), size(student)
        if t is not None and s is not None and t != s:
            return [Problem("trainer.teacher / model.name_or_path", (
                f"the teacher {cfg.trainer.teacher} has {t} tokens ({what}) but the student {cfg.model.name_or_path} "
                f"has {s}: distillation compares full next-token distributions, so teacher and student must share "
                "a tokenizer; choose a teacher of the student's family (e.g. a larger model of the same series)"))]
    return []


def model_vocab_size(folder: Path) -> int | None:
    """config.json's vocab_size (a multimodal model's text config's); an adapter's: its base's, or the saved
    tokenizer's when embeddings were resized for template tokens (peft saves the resized rows)."""
    base = adapter_base(folder)
    if base is not None:
        if not looks_local(base):
            return None
        sizes = [s for s in (model_vocab_size(Path(base).expanduser()), tokenizer_size(folder)) if s is not None]
        return max(sizes) if sizes else None
    config = _json(folder / "config.json")
    if config is None:
        return None
    return config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")


def tokenizer_size(folder: Path) -> int | None:
    """Tokens of a fast tokenizer's tokenizer.json: its model's vocabulary and the added tokens beyond it (as
    len(tokenizer) counts them); None without one (a slow tokenizer, or none saved)."""
    tok = _json(folder / "tokenizer.json")
    if tok is None:
        return None
    vocab = tok.get("model", {}).get("vocab")
    if vocab is None:
        return None
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))  # BPE: dict; Unigram: list
    ids |= {t["id"] for t in tok.get("added_tokens", [])}
    return len(ids)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
