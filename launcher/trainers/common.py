"""Builder functions the trainer files share (no base class: each trainer reads top to bottom)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

from launcher.config.schema import RunConfig

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
        eval_strategy=eval_strategy,
        eval_steps=t.save_steps if eval_strategy == "steps" else None,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        auto_find_batch_size=t.auto_find_batch_size,
        logging_steps=logging_steps(cfg, steps),
        logging_first_step=True,
        report_to=[] if cfg.logging.report_to == "none" else [cfg.logging.report_to],
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def planned_steps(cfg: RunConfig, train_rows: int, world_size: int) -> int:
    t = cfg.training
    if t.max_steps > 0:
        return t.max_steps
    per_step = t.batch_size * t.gradient_accumulation * world_size
    return max(1, math.ceil(train_rows / per_step)) * t.epochs


def logging_steps(cfg: RunConfig, steps: int) -> int:
    """-1 (AutoTrain's automatic): about 25 logs over the run, every step for short runs."""
    if cfg.logging.steps > 0:
        return cfg.logging.steps
    return max(1, steps // 25)


def save_final(trainer, cfg: RunConfig, run_dir: Path, tokenizer) -> str:
    """Save the adapter or full model and the tokenizer (with the chat template used) into the run folder.
    A requested merge that fails is an error, not a warning: the user asked for a standalone model."""
    model = trainer.model
    kind = "adapter" if cfg.peft.enabled else "full"
    if cfg.peft.enabled and cfg.peft.merge_adapter:
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
