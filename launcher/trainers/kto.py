"""Kahneman-Tversky optimisation through trl's KTOTrainer: single completions, each labelled desirable (true/1)
or undesirable (false/0), no pairs. The loss raises the reward (beta x log-ratio to a frozen reference) of the
desirable ones and lowers that of the undesirable ones, each measured against a KL estimate from mismatched
prompt/completion pairs of the same batch; trainer.desirable_weight / undesirable_weight weight the two classes.

Data: prompt/completion/label rows, strings or message lists, or a conversation whose last turn is the labelled
assistant reply (see launcher.data.formats). With a chat template they are conversations, rendered by the
tokenizer's template. Prompts keep their last data.max_prompt_length tokens and completions their first
data.max_completion_length (launcher.data.encode.cut_preference_pair); the cuts are counted and logged.
Reference: as for dpo (trainer.model_ref; with LoRA and none, the base with the adapter off; otherwise a second
copy of the base, loaded as the base is).
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.encode import cut_preference_pair
from launcher.data.formats import BY_NAME, is_conversational
from launcher.data.load import load_splits
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers import packed_pairs
from launcher.trainers.common import train_and_save, training_kwargs
from launcher.trainers.dpo import reference_model

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import KTOTrainer

    # ---- data
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set = unpaired_datasets(cfg, data, tokenizer)

    # ---- model and reference (trl's own copy would be reloaded from the path: see dpo.py)
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    peft_config = models.lora_config(cfg)
    ref_model = None if peft_config is not None and not cfg.trainer.model_ref else reference_model(cfg, tokenizer)

    # ---- trainer, then the rows trl tokenised cut to our limits
    args = kto_config(cfg, run_dir, len(train_set), eval_set is not None)
    # with data.packing, a subclass that runs each batch padding-free (launcher/trainers/packed_pairs.py)
    trainer = packed_pairs.trainer_class(KTOTrainer, cfg)(
        model=model, ref_model=ref_model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        processing_class=tokenizer, peft_config=peft_config, callbacks=run_callbacks(cfg, tokenizer))
    trainer.train_dataset, cut = cut_lengths(trainer.train_dataset, cfg, tokenizer.bos_token_id)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset, _ = cut_lengths(trainer.eval_dataset, cfg, tokenizer.bos_token_id)
    desirable = sum(train_set["label"])
    log.info("training on %d %s rows (%d desirable, %d undesirable): %d prompts cut to %d tokens, %d completions "
             "cut", len(train_set), data.format, desirable, len(train_set) - desirable, cut[0],
             cfg.data.max_prompt_length, cut[1])

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, truncated_prompts=cut[0],
                          truncated_answers=cut[1], desirable_rows=desirable,
                          undesirable_rows=len(train_set) - desirable)


def kto_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's KTOConfig for the run. Like DPOConfig it has one max_length and drops the rows whose untruncated prompt
    fills it; so it gets none, and the rows are cut to our limits after trl tokenised them. It samples in order
    (each row's KL completion is its batch neighbour's), so `unpaired_datasets` shuffles the rows once."""
    from trl import KTOConfig

    t = cfg.trainer
    return KTOConfig(
        **training_kwargs(cfg, run_dir, train_rows, has_eval, runtime.world_size()),
        beta=t.beta,
        desirable_weight=t.desirable_weight,
        undesirable_weight=t.undesirable_weight,
        max_length=None,
        dataset_num_proc=None,
    )


def unpaired_datasets(cfg: RunConfig, data, tokenizer) -> tuple:
    """The train and validation splits as trl's unpaired datasets: message lists when a chat template is set or
    the data holds messages. The train rows are shuffled once, with the seed: trl batches them in order, and a
    file sorted by label would otherwise give batches of one class."""
    from datasets import Dataset

    splits = [s for s in (data.train, data.valid) if s is not None]
    conversational = is_conversational(cfg, splits)
    fmt = BY_NAME[data.format]
    if conversational and not tokenizer.chat_template:
        raise ValueError("the unpaired rows hold chat messages but the tokenizer has no chat template: set "
                         "data.chat_template (chatml, zephyr, alpaca or a Jinja file)")

    def dataset(split):
        return None if split is None else Dataset.from_list([fmt.trl_row(r, conversational) for r in split.rows])

    return dataset(data.train).shuffle(seed=cfg.training.seed).flatten_indices(), dataset(data.valid)


def cut_lengths(dataset, cfg: RunConfig, bos_id: int | None):
    """trl's tokenised rows (prompt_ids, completion_ids and the KL term's KL_completion_ids, another row's
    completion after this prompt) within our limits, and (prompts cut, rows with a completion cut)."""
    def cut(row):
        prompt, completion = cut_preference_pair(row["prompt_ids"], row["completion_ids"], cfg, bos_id)
        out = {"prompt_ids": prompt, "completion_ids": completion,
               "cut_prompt": len(prompt) < len(row["prompt_ids"]),
               "cut_answer": len(completion) < len(row["completion_ids"])}
        if "KL_completion_ids" in row:
            out["KL_completion_ids"] = cut_preference_pair(row["prompt_ids"], row["KL_completion_ids"], cfg, bos_id)[1]
        return out

    out = dataset.map(cut, desc="Cutting to data.max_prompt_length / max_completion_length")
    counts = (sum(out["cut_prompt"]), sum(out["cut_answer"]))
    return out.remove_columns(["cut_prompt", "cut_answer"]), counts
