"""Supervised fine-tuning: text, chat messages, prompt/completion or Alpaca rows, through trl's SFTTrainer.

Loss falls on the assistant turns (chat) or the completion (prompt/completion) with their end-of-turn token,
unless trainer.train_on=all.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.load import DataCheck, load_splits
from launcher.data.processed import main_process_first, packing_strategy, prepare_sft
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers.common import planned_steps, train_and_save, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    if cfg.data.streaming:
        return train_streaming(cfg, run_dir, resume_from)
    trainer, data, prepared = build(cfg, run_dir)
    return train_and_save(trainer, cfg, run_dir, trainer.processing_class, resume_from, data,
                          train_sequences=len(trainer.train_dataset),
                          truncated_samples=prepared.stats["train"].truncated, data_cache=str(prepared.folder))


def build(cfg: RunConfig, run_dir: Path):
    """The trainer ready to train, the loaded rows and the prepared data (benchmarks/step_overhead.py times the
    trainer this returns)."""
    from trl import SFTConfig

    from launcher.trainers.sft_step import SFTTrainer  # trl's, with a cheaper step where it has no fused kernel

    # ---- data: rows checked as the plan checked them, rendered and masked by launcher.data.encode, truncated
    # with counts, packed through trl, cached (the main process prepares first, the others load its cache)
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    # The config comes first because it sets up the process state main_process_first needs; the labels already
    # carry the loss mask, so trl's own preparation is skipped (its collator still packs padding-free).
    args = SFTConfig(
        **training_kwargs(cfg, run_dir, len(data.train.rows), data.valid is not None, runtime.world_size()),
        max_length=cfg.data.chunk_size if cfg.data.packing else cfg.data.block_size,  # chunk_size: resolved
        packing=cfg.data.packing,
        packing_strategy=packing_strategy(cfg) if cfg.data.packing else "bfd",
        assistant_only_loss=False,
        completion_only_loss=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataset_num_proc=None,
        neftune_noise_alpha=cfg.training.neftune_noise_alpha,  # the Trainer hooks the input embeddings in train()
    )
    with main_process_first():
        prepared = prepare_sft(cfg, tokenizer, data)
    for line in prepared.summary():
        log.info(line)
    train_set, eval_set = prepared.train, prepared.valid
    args.warmup_steps = math.ceil(cfg.training.warmup_ratio * planned_steps(cfg, len(train_set), runtime.world_size()))

    # ---- model
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)

    # ---- trainer
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=models.lora_config(cfg),
                         callbacks=run_callbacks(cfg, tokenizer))
    log.info("training on %d sequences (%d %s rows), %d validation sequences", len(train_set),
             len(data.train.rows), data.format, len(eval_set) if eval_set is not None else 0)

    return trainer, data, prepared


def train_streaming(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    """data.streaming: the rows are encoded (and with data.packing packed best-fit over data.packing_buffer
    samples) as they are read (launcher.data.streaming), for training.max_steps steps; the validation split's
    first rows are prepared whole, uncached."""
    from trl import SFTConfig

    from launcher.data import streaming
    from launcher.data.files import DataFileError
    from launcher.trainers.sft_step import SFTTrainer

    data = streaming.check_stream(cfg, read_hub=True)
    if data.problems:
        raise DataFileError("\n".join(str(p) for p in data.problems))
    tokenizer = models.load_tokenizer(cfg)
    args = SFTConfig(
        **training_kwargs(cfg, run_dir, 0, data.valid is not None, runtime.world_size()),
        max_length=cfg.data.chunk_size if cfg.data.packing else cfg.data.block_size,
        packing=cfg.data.packing,
        packing_strategy="bfd",
        assistant_only_loss=False,
        completion_only_loss=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataset_num_proc=None,
        neftune_noise_alpha=cfg.training.neftune_noise_alpha,
    )
    eval_set = None
    if data.valid is not None:
        valid_only = DataCheck(format=data.format, valid=data.valid)
        prepared = prepare_sft(cfg, tokenizer, valid_only, use_cache=False)
        for line in prepared.summary()[:-1]:  # (the last line is about the cache, which is not used)
            log.info(line)
        eval_set = prepared.valid
    stream = streaming.train_stream(cfg, tokenizer, data)

    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    trainer = SFTTrainer(model=model, args=args, train_dataset=stream, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=models.lora_config(cfg),
                         callbacks=run_callbacks(cfg, tokenizer))
    streaming.attach(trainer, stream, resume_from)
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, train_rows="streamed",
                          train_sequences=cfg.training.max_steps * cfg.training.batch_size
                          * cfg.training.gradient_accumulation * runtime.world_size())
