"""Contrastive preference optimisation through trl's (experimental) CPOTrainer: DPO's sigmoid loss on the policy's
own log-likelihoods (no reference model) with strength trainer.beta, plus trainer.cpo_alpha times the SFT loss on
each chosen answer. The simpo trainer runs this file with trl's SimPO loss instead.

Data: prompt/chosen/rejected rows as for dpo (with a chat template trl renders them to text first). CPOTrainer
tokenises exactly as ORPOTrainer does, so the rows are cut as orpo's are: prompts keep their last
data.max_prompt_length tokens and answers their first data.max_completion_length; the cuts are counted and logged.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.load import load_splits
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers import packed_pairs
from launcher.trainers.common import (
    limit_preference_lengths, preference_datasets, train_and_save, training_kwargs,
)
from launcher.trainers.orpo import cut_lengths

log = logging.getLogger(__name__)

# Our method -> trl's CPOConfig.loss_type (trainer.cpo_alpha is resolved per method by launcher.resolve).
LOSSES = {"cpo": "sigmoid", "simpo": "simpo"}


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOTrainer  # not exported by trl itself

    # ---- data
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set = preference_datasets(cfg, data, tokenizer)

    # ---- model
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)

    # ---- trainer. As ORPOTrainer, CPOTrainer tokenises in its constructor and cuts each answer to fit max_length
    # behind the untruncated prompt; so it tokenises with no limit, the rows are cut to ours afterwards, and
    # max_length is set back to block_size (trl reads it again only to generate at evaluation).
    args = cpo_config(cfg, run_dir, len(train_set), eval_set is not None)
    trainer = packed_pairs.trainer_class(CPOTrainer, cfg)(  # with data.packing: padding-free (packed_pairs.py)
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=models.lora_config(cfg), callbacks=run_callbacks(cfg, tokenizer))
    trainer.max_length = args.max_length = cfg.data.block_size
    cuts = limit_preference_lengths(trainer, cfg, tokenizer, cut_lengths, data.format)

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, **cuts)


def cpo_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's CPOConfig for a cpo or simpo run."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig

    t = cfg.trainer
    loss_type = LOSSES[t.name]
    return CPOConfig(
        **training_kwargs(cfg, run_dir, train_rows, has_eval, runtime.world_size()),
        loss_type=loss_type,
        beta=t.beta,
        simpo_gamma=t.simpo_gamma,
        cpo_alpha=t.cpo_alpha,
        label_smoothing=t.label_smoothing,
        max_length=sys.maxsize,
        remove_unused_columns=False,  # CPO's collator reads its own columns; trl would switch it off and warn
        dataset_num_proc=None,
    )
