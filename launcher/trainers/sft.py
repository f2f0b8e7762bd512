"""Supervised fine-tuning: text, chat messages, prompt/completion or Alpaca rows, through trl's SFTTrainer.

Loss falls on the assistant turns (chat) or the completion (prompt/completion) with their end-of-turn token,
unless trainer.train_on=all.
"""
from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.load import load_splits, sft_row
from launcher.generate import stop_ids
from launcher.distributed import runtime
from launcher.trainers.common import save_final, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import SFTConfig, SFTTrainer

    # ---- data: canonical rows, rendered by the chat template inside the trainer
    data = load_splits(cfg)
    chat = cfg.data.chat_template != "none"
    train_set = Dataset.from_list([sft_row(r, data.format, chat) for r in data.train.rows])
    eval_set = Dataset.from_list([sft_row(r, data.format, chat) for r in data.valid.rows]) if data.valid else None
    conversational = "messages" in train_set.column_names

    # ---- model and tokenizer
    tokenizer = models.load_tokenizer(cfg)
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_ids(tokenizer, cfg.data.chat_template)
    completion_only = cfg.trainer.train_on == "completion"

    # ---- trainer
    args = SFTConfig(
        **training_kwargs(cfg, run_dir, len(train_set), eval_set is not None, runtime.world_size()),
        max_length=cfg.data.block_size,
        packing=cfg.data.packing,
        assistant_only_loss=completion_only and conversational,
        completion_only_loss=completion_only if not conversational else None,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=models.lora_config(cfg),
                         callbacks=run_callbacks(cfg, tokenizer))
    log.info("training on %d rows (%s), %d validation rows", len(train_set), data.format,
             len(eval_set) if eval_set is not None else 0)

    # ---- train and save
    result = trainer.train(resume_from_checkpoint=resume_from)
    kind = save_final(trainer, cfg, run_dir, tokenizer)
    return {"train_loss": result.training_loss, "global_step": result.global_step, "saved": kind,
            "data_format": data.format, "train_rows": len(train_set)}
