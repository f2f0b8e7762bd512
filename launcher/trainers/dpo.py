"""Direct preference optimisation through trl's DPOTrainer: raise the likelihood of each chosen answer over its
rejected one relative to a frozen reference model, with strength trainer.beta; trainer.loss_type picks the loss
among trl's variants (or sums several, weighted by trainer.loss_weights).

Data: prompt/chosen/rejected rows, strings or message lists (with a chat template they are conversations, rendered
by the tokenizer's template). Prompts keep their last data.max_prompt_length tokens and answers their first
data.max_completion_length (see launcher.data.encode.cut_preference_pair); the cuts are counted and logged.
Reference: trainer.model_ref when given; with LoRA and none, the base itself with the adapter switched off;
otherwise a second copy of the base, loaded as the base is.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.encode import cut_preference_pair
from launcher.data.load import load_splits
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers import packed_pairs
from launcher.trainers.common import (
    limit_preference_lengths, preference_datasets, train_and_save, training_kwargs,
)

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import DPOTrainer

    # ---- data
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set = preference_datasets(cfg, data, tokenizer)

    # ---- model and reference. trl's own reference copy is loaded from the path again, which would miss the
    # embeddings resized for the template's tokens, the revision and a GGUF file; so ours is loaded like the base.
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    peft_config = models.lora_config(cfg)
    ref_model = None if peft_config is not None and not cfg.trainer.model_ref else reference_model(cfg, tokenizer)

    # ---- trainer
    args = dpo_config(cfg, run_dir, len(train_set), eval_set is not None)
    # with data.packing, a subclass that runs each batch padding-free (launcher/trainers/packed_pairs.py)
    trainer = packed_pairs.trainer_class(DPOTrainer, cfg)(
        model=model, ref_model=ref_model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        processing_class=tokenizer, peft_config=peft_config, callbacks=run_callbacks(cfg, tokenizer))
    cuts = limit_preference_lengths(trainer, cfg, tokenizer, cut_lengths, data.format)

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, **cuts)


def dpo_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's DPOConfig for the run. trl 1.16's has one max_length (no prompt/completion limits) and drops the rows
    whose untruncated prompt fills it; so it gets none, and the rows are cut to our limits after trl tokenised them."""
    from trl import DPOConfig

    t = cfg.trainer
    return DPOConfig(
        **training_kwargs(cfg, run_dir, train_rows, has_eval, runtime.world_size()),
        beta=t.beta,
        loss_type=[t.loss_type] if isinstance(t.loss_type, str) else list(t.loss_type),
        loss_weights=t.loss_weights,
        label_smoothing=t.label_smoothing,
        max_length=None,
        dataset_num_proc=None,
    )


def reference_model(cfg: RunConfig, tokenizer):
    ref = copy.deepcopy(cfg)
    if cfg.trainer.model_ref:
        ref.model.name_or_path, ref.model.revision, ref.model.gguf_file = cfg.trainer.model_ref, None, None
    return models.load_model(ref, tokenizer).eval()


def cut_lengths(dataset, cfg: RunConfig, bos_id: int | None):
    """trl's tokenised rows (prompt_ids, chosen_ids, rejected_ids) within our limits, and (prompts cut, rows with
    an answer cut)."""
    def cut(row):
        prompt, chosen = cut_preference_pair(row["prompt_ids"], row["chosen_ids"], cfg, bos_id)
        _, rejected = cut_preference_pair(row["prompt_ids"], row["rejected_ids"], cfg, bos_id)
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                "cut_prompt": len(prompt) < len(row["prompt_ids"]),
                "cut_answer": len(chosen) < len(row["chosen_ids"]) or len(rejected) < len(row["rejected_ids"])}

    out = dataset.map(cut, desc="Cutting to data.max_prompt_length / max_completion_length")
    counts = (sum(out["cut_prompt"]), sum(out["cut_answer"]))
    return out.remove_columns(["cut_prompt", "cut_answer"]), counts
