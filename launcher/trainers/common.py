"""Builder functions the trainer files share (no base class: each trainer reads top to bottom)."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from transformers import TrainerCallback

from launcher.checkpointing import prepare_trainer
from launcher.config.schema import RunConfig
from launcher.distributed import runtime
from launcher.resolve import LOGS_PER_RUN, planned_steps  # noqa: F401 (planned_steps: the trainers' import)
from launcher.trackers import trainer_arguments

log = logging.getLogger(__name__)


def training_kwargs(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool, world_size: int) -> dict:
    """Arguments every trl/transformers config takes, from our schema. The config is resolved: no auto."""
    t = cfg.training
    steps = planned_steps(cfg, train_rows, world_size)
    eval_strategy = t.eval_strategy if has_eval else "no"
    return dict(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        warmup_steps=math.ceil(t.warmup_ratio * steps),
        optim=t.optimizer,
        lr_scheduler_type=t.scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        # trl's configs default to bf16 and checkpointing even on CPU; always say what the plan chose.
        bf16=cfg.precision.mixed_precision == "bf16",
        fp16=cfg.precision.mixed_precision == "fp16",
        gradient_checkpointing=bool(t.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        use_liger_kernel=cfg.model.liger_kernel is True,
        torch_compile=cfg.model.compile,
        eval_strategy=eval_strategy,
        eval_steps=(t.eval_steps or t.save_steps) if eval_strategy == "steps" else None,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        auto_find_batch_size=t.auto_find_batch_size,
        logging_steps=logging_steps(cfg, steps),
        logging_first_step=True,
        **trainer_arguments(cfg, run_dir),  # report_to, and the tracker run's name (launcher.trackers)
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
        ddp_timeout=cfg.distributed.timeout_minutes * 60,  # the process group's timeout (NCCL's and gloo's)
        dataloader_pin_memory=runtime.has_gpu(),  # pinning needs an accelerator; without one torch warns each epoch
        **runtime.trainer_process_kwargs(cfg.distributed.backend, run_dir),
    )


def logging_steps(cfg: RunConfig, steps: int) -> int:
    """The plan resolves logging.steps (launcher.resolve); it is still -1 only when the data was not at hand
    there, and is then planned here the same way from the rows the worker counted."""
    if cfg.logging.steps > 0:
        return cfg.logging.steps
    return max(1, steps // LOGS_PER_RUN)


def save_final(trainer, cfg: RunConfig, run_dir: Path, tokenizer) -> str:
    """Save the adapter or full model and the tokenizer (with the chat template used) into the run folder.
    A requested merge that fails is an error, not a warning: the user asked for a standalone model."""
    model = trainer.model
    kind = "adapter" if cfg.peft.enabled else "full"
    if getattr(trainer, "is_fsdp_enabled", False):
        # FSDP's checkpoints are sharded (each rank's DCP shard); save_model writes nothing then. The run folder
        # gets one whole model: every rank's shards gathered (a collective: every rank calls it) and written by
        # rank 0, as the adapter alone for LoRA (the PeftModel's save keeps its own keys).
        from launcher.merge import merge_saved_adapter

        state_dict = trainer.accelerator.get_state_dict(model)
        if trainer.is_world_process_zero():
            trainer._save(str(run_dir), state_dict=state_dict)
            if cfg.peft.enabled and cfg.peft.merge_adapter:
                merge_saved_adapter(run_dir, tokenizer)
                kind = "merged"
        del state_dict
    elif cfg.peft.enabled and cfg.peft.merge_adapter:
        unwrapped = trainer.accelerator.unwrap_model(model)
        merged = unwrapped.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(run_dir)
        kind = "merged"
    else:
        trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(run_dir)
        trainer.save_state()
    log.info("saved the %s model to %s", kind, run_dir)
    return kind


class ProgressFromCheckpoint(TrainerCallback):
    """transformers' progress bar of a resumed run counts to the new total but starts at 0 and jumps to the
    checkpoint's step on the first step (with a rate counting the skipped steps); start it at that step instead:
    4/6 when checkpoint-4 is resumed with max_steps=6."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        from transformers.trainer_callback import ProgressCallback

        for callback in self.trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if isinstance(callback, ProgressCallback) and bar is not None:
                bar.n = bar.initial = bar.last_print_n = state.global_step  # tqdm's rate counts from `initial`
                callback.current_step = state.global_step
                bar.refresh()


class PromoteConfigOnResume(TrainerCallback):
    """on_train_begin comes after the Trainer has loaded the checkpoint's weights, optimizer, scheduler and
    trainer state: only then does the resume's configuration replace the run folder's config.yaml (until then
    it still describes the checkpoints beside it)."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        self.run_dir, self.cfg = Path(run_dir), cfg

    def on_train_begin(self, args, state, control, **kwargs):
        from launcher import run_dir as runs

        if os.environ.get("TUNELAUNCH_FAIL_BEFORE_RESUME"):  # tests: a resume that dies before it has resumed
            raise RuntimeError("TUNELAUNCH_FAIL_BEFORE_RESUME is set: failing before the resume starts")
        if runtime.is_main() and runs.promote_pending_config(self.run_dir, self.cfg):
            log.info("resumed at step %d of %d: config.yaml now holds this run's configuration", state.global_step,
                     state.max_steps)


def train_and_save(trainer, cfg: RunConfig, run_dir: Path, tokenizer, resume_from: str | None, data,
                   **metrics) -> dict:
    """Train (from the checkpoint to resume, if any), save, and return the metrics every trainer reports plus
    its own."""
    stop = prepare_trainer(trainer)  # exact resume, atomic checkpoints, stop on a signal
    if resume_from:
        trainer.add_callback(ProgressFromCheckpoint(trainer))
        trainer.add_callback(PromoteConfigOnResume(run_dir, cfg))
    result = trainer.train(resume_from_checkpoint=resume_from)
    if stop.stopped_at is not None:  # a complete checkpoint was written at this step; the run is unfinished
        return {"preempted": True, "global_step": stop.stopped_at, "train_loss": result.training_loss}
    kind = save_final(trainer, cfg, run_dir, tokenizer)
    return {"train_loss": result.training_loss, "global_step": result.global_step, "saved": kind,
            "data_format": data.format, "train_rows": len(data.train.rows), **metrics}


def limit_preference_lengths(trainer, cfg: RunConfig, tokenizer, cut_lengths, data_format: str) -> dict:
    """Apply a dpo/orpo trainer's `cut_lengths` to the rows trl tokenised (train and eval), log the counts and
    return them as metrics."""
    trainer.train_dataset, cut = cut_lengths(trainer.train_dataset, cfg, tokenizer.bos_token_id)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset, _ = cut_lengths(trainer.eval_dataset, cfg, tokenizer.bos_token_id)
    log.info("training on %d %s pairs: %d prompts cut to %d tokens, %d pairs with an answer cut",
             len(trainer.train_dataset), data_format, cut[0], cfg.data.max_prompt_length, cut[1])
    return {"truncated_prompts": cut[0], "truncated_answers": cut[1]}


def preference_datasets(cfg: RunConfig, data, tokenizer) -> tuple:
    """The train and validation splits as trl's preference datasets (rows from the format's `trl_row`): message
    lists when a chat template is set or the data holds messages, so trl renders them with the tokenizer's template."""
    from datasets import Dataset

    from launcher.data.formats import BY_NAME, is_conversational

    splits = [s for s in (data.train, data.valid) if s is not None]
    conversational = is_conversational(cfg, splits)
    fmt = BY_NAME[data.format]
    if conversational and not tokenizer.chat_template:
        raise ValueError("the preference rows hold chat messages but the tokenizer has no chat template: set "
                         "data.chat_template (chatml, zephyr, alpaca or a Jinja file)")

    def dataset(split):
        return None if split is None else Dataset.from_list([fmt.trl_row(r, conversational) for r in split.rows])

    return dataset(data.train), dataset(data.valid)
