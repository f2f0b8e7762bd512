"""`--format safetensors`: the merged model alone (config, safetensors weights, generation config, tokenizer with
the run's chat template), with nothing else of the run (no checkpoints, logs or optimizer states): the folder
vLLM (`vllm serve FOLDER`) and TGI (`--model-id FOLDER`) serve."""
from __future__ import annotations

import shutil
from pathlib import Path

DTYPES = ("f32", "f16", "bf16")
"""--dtype of a safetensors export; without it the weights keep the dtype config.json states (f32 if none)."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
"""The tokenizer files a run folder may hold: copied as they are, so the served model tokenises as the run did."""

_TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "float32": "float32",
                 "float16": "float16", "bfloat16": "bfloat16"}


def write_folder(model, tokenizer, tokenizer_dir: Path, dtype: str | None, output: Path) -> Path:
    """Save `model` (merged) and the tokenizer files of `tokenizer_dir` into the new folder `output`, atomically:
    the folder appears complete or not at all."""
    import torch

    target = _TORCH_DTYPES.get(dtype or str(model.config.to_dict().get("dtype") or "float32"), "float32")
    model = model.to(getattr(torch, target))
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)  # safetensors is transformers' default format
        copied = [shutil.copy2(tokenizer_dir / name, partial / name) for name in TOKENIZER_FILES
                  if (tokenizer_dir / name).is_file()]
        if not copied:  # a folder whose tokenizer came from elsewhere: write the loaded one
            tokenizer.save_pretrained(partial)
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output
