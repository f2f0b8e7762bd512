"""REINFORCE leave-one-out through trl's RLOOTrainer: for each prompt the model samples trainer.num_generations
completions, the reward functions (trainer.rewards) score them, and each completion's advantage is its reward
minus the mean reward of the other completions of its prompt (a baseline that needs no value model); with
trainer.beta > 0 a KL penalty to a frozen reference is taken off the reward. Clipping (trainer.epsilon /
epsilon_high) matters when trainer.num_iterations > 1.

Data and rendering as for grpo: prompts only, the other columns go to the reward functions; the sampled
completions and their rewards are appended to samples.jsonl.
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.distributed import runtime
from launcher.rl import rewards
from launcher.trainers import online
from launcher.trainers.common import train_and_save, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import RLOOTrainer

    # ---- data and model (prompts cut to data.max_prompt_length as rendered, keeping their end)
    data, tokenizer, train_set, eval_set, cut, model = online.prompts_and_policy(cfg)

    # ---- rewards
    reward_funcs, reward_tokenizers = rewards.reward_functions(cfg)

    # ---- trainer
    args = rloo_config(cfg, run_dir, len(train_set), eval_set is not None)
    trainer = RLOOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_set,
                          eval_dataset=eval_set, processing_class=tokenizer,
                          reward_processing_classes=reward_tokenizers, peft_config=models.lora_config(cfg),
                          callbacks=run_callbacks(cfg, tokenizer))
    trainer.add_callback(online.SamplesLog(trainer, online.samples_every(cfg, args.logging_steps), run_dir))
    log.info("rloo: %d completions per prompt, rewards %s, beta %g", cfg.trainer.num_generations,
             ", ".join(cfg.trainer.rewards), cfg.trainer.beta)

    # ---- train and save
    metrics = train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, truncated_prompts=cut)
    return {**metrics, **online.reward_summary(trainer)}


def rloo_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's RLOOConfig for the run (resolved: beta and the completion length are concrete)."""
    from trl import RLOOConfig

    t = cfg.trainer
    # trl's sampler repeats each prompt num_generations times: an epoch is that many samples (warmup, logging).
    return RLOOConfig(
        **{**training_kwargs(cfg, run_dir, train_rows * t.num_generations, has_eval, runtime.world_size()),
           **online.sampling_kwargs(cfg), **online.policy_kwargs(cfg)},
    )
