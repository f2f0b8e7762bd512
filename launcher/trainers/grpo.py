"""Group relative policy optimisation through trl's GRPOTrainer: for each prompt the model samples
trainer.num_generations completions, the reward functions (trainer.rewards) score them, and each completion's
advantage is its reward against the mean of its group (divided by the group's spread, trainer.scale_rewards);
the policy-gradient loss raises the likelihood of the better ones, clipped (trainer.epsilon / epsilon_high) and,
with trainer.beta > 0, held near a frozen reference. trainer.loss_type and importance_sampling_level pick the
variant: dapo (trl's default), grpo, dr_grpo, bnpo, ...; importance_sampling_level=sequence is GSPO.

Data: prompts only (`prompt` as text or a conversation ending with a user turn); every other column goes to the
reward functions (e.g. `answer` for exact_match and math). With a chat template the prompts are rendered as
`tunelaunch generate` renders them. Completions stop at the template's end of turn or after
data.max_completion_length tokens. The sampled completions and their rewards are appended to samples.jsonl.
Reference (beta > 0): with LoRA the base with the adapter switched off, otherwise a second copy of the base.
"""
from __future__ import annotations

import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.distributed import runtime
from launcher.rl import rewards, tools
from launcher.trainers import online
from launcher.trainers.common import train_and_save, training_kwargs

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import GRPOTrainer

    # ---- data and model (prompts cut to data.max_prompt_length as rendered, keeping their end)
    data, tokenizer, train_set, eval_set, cut, model = online.prompts_and_policy(cfg)

    # ---- rewards, tools
    reward_funcs, reward_tokenizers = rewards.reward_functions(cfg)
    tool_functions = tools.tool_functions(cfg) if cfg.trainer.tools else None

    # ---- trainer
    args = grpo_config(cfg, run_dir, len(train_set), eval_set is not None)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_set,
                          eval_dataset=eval_set, processing_class=tokenizer,
                          reward_processing_classes=reward_tokenizers, peft_config=models.lora_config(cfg),
                          callbacks=run_callbacks(cfg, tokenizer), tools=tool_functions)
    every = online.samples_every(cfg, args.logging_steps)
    trainer.add_callback(online.SamplesLog(trainer, every, run_dir))
    log.info("grpo: %d completions per prompt, %d prompts per round, rewards %s, beta %g (%s), loss %s",
             cfg.trainer.num_generations, args.generation_batch_size // cfg.trainer.num_generations,
             ", ".join(cfg.trainer.rewards), cfg.trainer.beta,
             "no reference model" if not cfg.trainer.beta else "a frozen reference", cfg.trainer.loss_type)

    # ---- train and save
    metrics = train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, truncated_prompts=cut)
    return {**metrics, **online.reward_summary(trainer)}


def grpo_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's GRPOConfig for the run (the configuration is resolved: beta, loss_type and the completion length are
    concrete, and the global batch holds whole groups)."""
    from trl import GRPOConfig

    t = cfg.trainer
    # trl's sampler repeats each prompt num_generations times: an epoch is that many samples (warmup, logging).
    return GRPOConfig(
        **{**training_kwargs(cfg, run_dir, train_rows * t.num_generations, has_eval, runtime.world_size()),
           **online.sampling_kwargs(cfg), **online.policy_kwargs(cfg)},
        loss_type=t.loss_type,
        importance_sampling_level=t.importance_sampling_level,
        scale_rewards=t.scale_rewards,
        max_tool_calling_iterations=t.max_tool_calls,
    )
