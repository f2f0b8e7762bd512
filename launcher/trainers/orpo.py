"""Odds-ratio preference optimisation through trl's (experimental) ORPOTrainer: the SFT loss on each chosen answer
plus trainer.beta times a loss that raises its odds over the rejected one; no reference model.

Data: prompt/chosen/rejected rows as for dpo (with a chat template trl renders them to text first). Prompts keep
their last data.max_prompt_length tokens and answers their first data.max_completion_length (see
launcher.data.encode.cut_preference_pair); the cuts are counted and logged.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, cut_preference_pair
from launcher.data.load import load_splits
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers import packed_pairs
from launcher.trainers.common import (
    limit_preference_lengths, preference_datasets, train_and_save, training_kwargs,
)

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # no longer exported by trl itself

    # ---- data
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set = preference_datasets(cfg, data, tokenizer)

    # ---- model
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)

    # ---- trainer. ORPOTrainer tokenises in its constructor and cuts each answer to fit max_length behind the
    # untruncated prompt; so it tokenises with no limit, the rows are cut to ours afterwards, and max_length is set
    # back to block_size (trl reads it again only to generate at evaluation).
    args = ORPOConfig(
        **training_kwargs(cfg, run_dir, len(train_set), eval_set is not None, runtime.world_size()),
        beta=cfg.trainer.beta,
        max_length=sys.maxsize,
        remove_unused_columns=False,  # ORPO's collator reads its own columns; trl would switch it off and warn
        dataset_num_proc=None,
    )
    trainer = packed_pairs.trainer_class(ORPOTrainer, cfg)(  # with data.packing: padding-free (packed_pairs.py)
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=models.lora_config(cfg), callbacks=run_callbacks(cfg, tokenizer))
    trainer.max_length = args.max_length = cfg.data.block_size
    cuts = limit_preference_lengths(trainer, cfg, tokenizer, cut_lengths, data.format)

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, **cuts)


def cut_lengths(dataset, cfg: RunConfig, bos_id: int | None):
    """ORPO's tokenised rows within our limits, and (prompts cut, rows with an answer cut). Each side holds the
    prompt and the answer in one sequence, the prompt's labels being IGNORE."""
    def cut(row):
        prompt, _ = cut_preference_pair(row["prompt_input_ids"], [], cfg, bos_id)
        out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt),
               "cut_prompt": len(prompt) < len(row["prompt_input_ids"]), "cut_answer": False}
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            start = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
            head, answer = cut_preference_pair(ids[:start], ids[start:], cfg, bos_id)
            out[f"{side}_input_ids"] = head + answer
            out[f"{side}_attention_mask"] = [1] * (len(head) + len(answer))
            out[f"{side}_labels"] = [IGNORE] * len(head) + answer
            out["cut_answer"] = out["cut_answer"] or len(answer) < len(ids) - start
        return out

    out = dataset.map(cut, desc="Cutting to data.max_prompt_length / max_completion_length")
    counts = (sum(out["cut_prompt"]), sum(out["cut_answer"]))
    return out.remove_columns(["cut_prompt", "cut_answer"]), counts
