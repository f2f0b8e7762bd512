"""Upload a finished run to the Hugging Face Hub as a private `username/project_name` repository.

The token comes from hub.token or HF_TOKEN in memory and is handed to huggingface_hub directly; it is never
written to a file or a log line. HF_ENDPOINT points the client at another hub (a local one in tests).
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher.config.schema import RunConfig

log = logging.getLogger(__name__)
# Checkpoints and logs stay local; the repository gets the model, tokenizer, card and the redacted configs.
# export/ holds `tunelaunch export`'s GGUF and safetensors copies (hundreds of MB each): the model is uploaded once;
# tracker.json points into a local mlflow/trackio store.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.log", "runs/**", ".*", "run_state.json", "launch.json",
                 "export/**", "tracker.json"]


def repo_id(cfg: RunConfig) -> str:
    return f"{cfg.hub.username}/{Path(cfg.project_name).name}"


def push(folder: Path, cfg: RunConfig) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=cfg.hub.token)
    repo = repo_id(cfg)
    api.create_repo(repo, private=cfg.hub.private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), ignore_patterns=UPLOAD_IGNORE,
                      commit_message="Upload from tunelaunch")
    log.info("pushed %s to the hub as %s", folder, repo)
    return repo
