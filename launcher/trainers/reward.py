"""Reward model: the base model with a one-output score head, trained through trl's RewardTrainer so that each
chosen answer scores higher than its rejected one (loss -log sigmoid(r_chosen - r_rejected)).

Data: chosen/rejected pairs (AutoTrain's text/rejected_text) or prompt/chosen/rejected rows; with a chat template
(or message lists in the data) they are conversations rendered by the tokenizer's template, else plain text to
which trl appends the eos token. The score is read at the last non-pad token.
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data.load import load_splits
from launcher.distributed import runtime
from launcher.trainers import packed_pairs
from launcher.trainers.common import preference_datasets, train_and_save, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    # ---- data
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set = preference_datasets(cfg, data, tokenizer)

    # ---- model: num_labels=1 makes the head a scalar score; load_model sets config.pad_token_id, which the head
    # needs to find the last real token of a padded sequence. The new score head and the unused LM head are
    # expected, so transformers' load report about them is silenced (as trl does when it loads the model itself).
    with suppress_seqcls_warning():
        model = models.load_model(cfg, tokenizer, model_class=AutoModelForSequenceClassification, num_labels=1)
    if cfg.training.validation_prompt:
        log.warning("training.validation_prompt is ignored by the reward trainer: a reward model does not generate")

    # ---- trainer: trl drops the pairs longer than max_length rather than cutting them (a cut pair may no longer
    # differ where it matters), so they are counted below
    args = RewardConfig(
        **training_kwargs(cfg, run_dir, len(train_set), eval_set is not None, runtime.world_size()),
        max_length=cfg.data.block_size,
        dataset_num_proc=None,
    )
    trainer = packed_pairs.trainer_class(RewardTrainer, cfg)(  # with data.packing: padding-free (packed_pairs.py)
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=models.lora_config(cfg, task_type="SEQ_CLS"))
    pairs = len(trainer.train_dataset)
    if pairs < len(train_set):
        log.warning("%d of %d training pairs are longer than block_size %d tokens and are left out",
                    len(train_set) - pairs, len(train_set), cfg.data.block_size)
    if pairs == 0:
        raise ValueError(f"every training pair is longer than data.block_size {cfg.data.block_size}: raise it")
    log.info("training on %d pairs (%s rows)", pairs, data.format)

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, train_pairs=pairs)
