"""What several unit-test modules share: the sample data's path, the machines plans are made for (described by
hand: the tests plan for GPUs this machine does not have) and a plan of the tiny chat recipe."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher.config.errors import ConfigError
from launcher.config.schema import RunConfig
from launcher.hardware import Hardware
from tests.conftest import REPO

SAMPLES = REPO / "samples"

CPU = Hardware()
H100x8 = Hardware(gpus=8, gpu_name="H100", gpu_memory_gib=80, bf16=True, flash_attn=True)

# Llama-3-8B's config.json (no weights needed: the plan reads the shape alone).
LLAMA3_8B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "rope_theta": 500000.0,
}


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def valid_cfg() -> RunConfig:
    """The schema's defaults with a hub model id: valid, and no local config.json (so no memory estimate)."""
    cfg = RunConfig()
    cfg.model.name_or_path = "org/model"
    return cfg


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def plan(tmp_path: Path, *overrides: str, hw: Hardware = CPU):
    """make_plan of recipe=sft/chat_tiny (the embedded tiny model on samples/chat) with a run folder under tmp_path."""
    from launcher.planning import make_plan

    return make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", *overrides], hw)


def problems(tmp_path: Path, *overrides: str, hw: Hardware = CPU) -> list[str]:
    """The problems make_plan refuses the tiny chat recipe with, as the report prints them."""
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, *overrides, hw=hw)
    return [str(p) for p in err.value.problems]


# The ORPO example of AutoTrain's "LLM Finetuning" page (shared/seeds), verbatim.
SEED_CONFIG = """\
task: llm-orpo
base_model: meta-llama/Meta-Llama-3-8B-Instruct
project_name: autotrain-llama3-8b-orpo
log: tensorboard
backend: local

data:
  path: argilla/distilabel-capybara-dpo-7k-binarized
  train_split: train
  valid_split: null
  chat_template: chatml
  column_mapping:
    text_column: chosen
    rejected_text_column: rejected
    prompt_text_column: prompt

params:
  block_size: 1024
  model_max_length: 8192
  max_prompt_length: 512
  epochs: 3
  batch_size: 2
  lr: 3e-5
  peft: true
  quantization: int4
  target_modules: all-linear
  padding: right
  optimizer: adamw_torch
  scheduler: linear
  gradient_accumulation: 4
  mixed_precision: fp16

hub:
  username: ${HF_USERNAME}
  token: ${HF_TOKEN}
  push_to_hub: true
"""


def data_config(path, trainer: str = "sft", template: str = "chatml", **data) -> RunConfig:
    """A RunConfig reading `path` (block size 512); `map_<column>=...` sets data.column_mapping.<column>."""
    cfg = RunConfig()
    cfg.trainer.name = trainer
    cfg.data.path = str(path)
    cfg.data.chat_template = template
    cfg.data.block_size = 512
    for key, value in data.items():
        if key.startswith("map_"):
            setattr(cfg.data.column_mapping, key[4:], value)
        else:
            setattr(cfg.data, key, value)
    return cfg
