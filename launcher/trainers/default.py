"""Causal language modelling on plain text (AutoTrain's generic `default` trainer), through transformers' Trainer.

Every row becomes text (chat rows rendered with the chat template, prompt/completion joined), the texts of a
split are concatenated, with the eos token after each when data.add_eos_token, and cut into blocks of
data.block_size tokens; the tail that fills no block is dropped. The loss falls on every token.
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.data.formats import BY_NAME
from launcher.data.load import load_splits
from launcher.data.templates import stop_tokens
from launcher.distributed import runtime
from launcher.trainers.common import train_and_save, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    if cfg.data.streaming:
        return train_streaming(cfg, run_dir, resume_from)
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    # ---- data: rows -> text -> one token stream per split -> blocks; labels are the inputs (the model shifts them)
    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_blocks, train_tokens = token_blocks(cfg, tokenizer, data.train.rows, data.format)
    if not train_blocks:
        raise ValueError(f"the training text is {train_tokens} tokens, less than one block of data.block_size "
                         f"{cfg.data.block_size}: lower data.block_size or add data")
    valid_blocks, valid_tokens = token_blocks(cfg, tokenizer, data.valid.rows, data.format) if data.valid else ([], 0)
    if data.valid and not valid_blocks:
        log.warning("the validation text is %d tokens, less than one block of %d: no evaluation", valid_tokens,
                    cfg.data.block_size)
    train_set = Dataset.from_dict({"input_ids": train_blocks, "labels": train_blocks})
    eval_set = Dataset.from_dict({"input_ids": valid_blocks, "labels": valid_blocks}) if valid_blocks else None
    log.info("training on %d blocks of %d tokens from %d %s rows (%d tokens, %d of the tail dropped)",
             len(train_blocks), cfg.data.block_size, len(data.train.rows), data.format, train_tokens,
             train_tokens - len(train_blocks) * cfg.data.block_size)

    # ---- model: the plain Trainer takes no peft_config, so the adapter is added here
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    model = with_adapter(model, cfg)

    # ---- trainer: every block is block_size long, so the default collator only stacks them (no padding, which
    # would also mask an eos that doubles as the pad token)
    args = TrainingArguments(**training_kwargs(cfg, run_dir, len(train_set), eval_set is not None,
                                               runtime.world_size()))
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, data_collator=default_data_collator,
                      callbacks=run_callbacks(cfg, tokenizer))

    # ---- train and save
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, train_sequences=len(train_set),
                          train_tokens=train_tokens)


def train_streaming(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    """data.streaming: the same blocks, cut as the rows are read (launcher.data.streaming), for
    training.max_steps steps; the validation split's first rows are read whole."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from launcher.data import streaming
    from launcher.data.files import DataFileError

    data = streaming.check_stream(cfg, read_hub=True)
    if data.problems:
        raise DataFileError("\n".join(str(p) for p in data.problems))
    tokenizer = models.load_tokenizer(cfg)
    valid_blocks, valid_tokens = token_blocks(cfg, tokenizer, data.valid.rows, data.format) if data.valid else ([], 0)
    if data.valid and not valid_blocks:
        log.warning("the validation text is %d tokens, less than one block of %d: no evaluation", valid_tokens,
                    cfg.data.block_size)
    eval_set = Dataset.from_dict({"input_ids": valid_blocks, "labels": valid_blocks}) if valid_blocks else None

    model = with_adapter(models.load_model(cfg, tokenizer), cfg)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    # (the args are built before the stream: they set up the process state that tells each process its rank)
    args = TrainingArguments(**training_kwargs(cfg, run_dir, 0, eval_set is not None, runtime.world_size()))
    stream = streaming.train_stream(cfg, tokenizer, data, cut_blocks=token_blocks)
    trainer = Trainer(model=model, args=args, train_dataset=stream, eval_dataset=eval_set,
                      processing_class=tokenizer, data_collator=default_data_collator,
                      callbacks=run_callbacks(cfg, tokenizer))
    streaming.attach(trainer, stream, resume_from)
    return train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, train_rows="streamed",
                          train_sequences=cfg.training.max_steps * cfg.training.batch_size
                          * cfg.training.gradient_accumulation * runtime.world_size())


def row_text(row: dict, fmt: str, tokenizer, chat: bool) -> str:
    sample = BY_NAME[fmt].sft_sample(row, chat)
    if "messages" in sample:
        return tokenizer.apply_chat_template(sample["messages"], tokenize=False)
    if "prompt" in sample:
        return sample["prompt"] + sample["completion"]
    return sample["text"]


def token_blocks(cfg: RunConfig, tokenizer, rows: list[dict], fmt: str) -> tuple[list[list[int]], int]:
    """The rows' token stream cut into full blocks of block_size, and the stream's length."""
    chat = cfg.data.chat_template != "none"
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for row in rows:
        ids = tokenizer(text=row_text(row, fmt, tokenizer, chat), verbose=False)["input_ids"]
        stream += ids
        if cfg.data.add_eos_token and eos is not None and ids[-1:] != [eos]:
            stream.append(eos)
    size = cfg.data.block_size
    return [stream[i:i + size] for i in range(0, len(stream) - size + 1, size)], len(stream)


def with_adapter(model, cfg: RunConfig):
    """The model with a LoRA adapter when peft is enabled (prepared for k-bit training under QLoRA)."""
    lora = models.lora_config(cfg)
    if lora is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization.mode != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.training.gradient_checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.training.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the gradient path
    return get_peft_model(model, lora)
