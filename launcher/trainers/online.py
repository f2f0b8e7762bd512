"""What the online trainers (grpo, rloo, distill) share: prompt datasets rendered as `generate` renders them,
the sampling settings of trl's configs, and the log of sampled completions.

The online methods train on completions the model samples from the prompts during training, so the data holds
prompts only (and the columns the reward functions read); see launcher/data/formats.py `prompt_only`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from launcher.cluster.script import VLLM_URL_VARIABLE  # set by the batch script that started the vLLM server
from launcher.config.schema import RunConfig
from launcher.data.formats import BY_NAME, is_conversational
from launcher.distributed import runtime

log = logging.getLogger(__name__)



def prompts_and_policy(cfg: RunConfig) -> tuple:
    """What every online trainer starts from: the checked splits, the tokenizer with the run's template, the prompt
    datasets (and how many prompts were cut), and the model that samples and learns, stopping at the template's end
    of turn. Returns (data, tokenizer, train_set, eval_set, prompts_cut, model)."""
    from launcher import models
    from launcher.data.load import load_splits
    from launcher.data.templates import stop_tokens

    data = load_splits(cfg)
    tokenizer = models.load_tokenizer(cfg)
    train_set, eval_set, cut = prompt_datasets(cfg, data, tokenizer)
    model = models.load_model(cfg, tokenizer)
    model.generation_config.eos_token_id = stop_tokens(tokenizer, cfg.data.chat_template)
    return data, tokenizer, train_set, eval_set, cut, model


def prompt_datasets(cfg: RunConfig, data, tokenizer) -> tuple:
    """The train and validation prompts as trl's online trainers take them (`prompt` plus the other columns), each
    prompt cut to data.max_prompt_length tokens as rendered, keeping its end, and the number cut."""
    from datasets import Dataset

    splits = [s for s in (data.train, data.valid) if s is not None]
    conversational = is_conversational(cfg, splits)
    fmt = BY_NAME[data.format]
    if conversational and not tokenizer.chat_template:
        raise ValueError("the prompts hold chat messages but the tokenizer has no chat template: set "
                         "data.chat_template (chatml, zephyr, tokenizer or a Jinja file)")
    cut = 0

    def dataset(split):
        nonlocal cut
        if split is None:
            return None
        rows = []
        for row in split.rows:
            sample = fmt.trl_row(row, conversational)
            fitted = fit_prompt(sample["prompt"], tokenizer, cfg.data.max_prompt_length)
            cut += fitted is not sample["prompt"]
            rows.append({**sample, "prompt": fitted})
        return Dataset.from_list(rows)

    train, valid = dataset(data.train), dataset(data.valid)
    log.info("training on %d %s prompts (%s): %d cut to data.max_prompt_length=%d tokens, keeping their end",
             len(train), "chat" if conversational else "text", ", ".join(train.column_names), cut,
             cfg.data.max_prompt_length)
    return train, valid, cut


def prompt_tokens(prompt, tokenizer) -> list[int]:
    """The prompt's tokens exactly as trl feeds them to generation: a conversation through the chat template
    with the generation prompt (as `tunelaunch generate` renders it), a text as it is."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def fit_prompt(prompt, tokenizer, limit: int):
    """The prompt itself when it fits in `limit` tokens; otherwise its end: a text's last tokens, a conversation's
    last turns (its first turns dropped, then the start of the oldest remaining turn's text cut). trl 1.16's online
    trainers take no prompt limit, and a prompt longer than the model's positions fails mid-run."""
    if len(prompt_tokens(prompt, tokenizer)) <= limit:
        return prompt
    if not isinstance(prompt, list):
        return tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"][-limit:])
    turns = list(prompt)
    while len(turns) > 1 and len(prompt_tokens(turns, tokenizer)) > limit:
        turns = turns[1:] if turns[0]["role"] != "system" or len(turns) == 2 else [turns[0], *turns[2:]]
    first = dict(turns[0])
    words = first["content"].split(" ")
    while len(words) > 1 and len(prompt_tokens([first, *turns[1:]], tokenizer)) > limit:
        words = words[max(1, len(words) // 8):]
        first["content"] = " ".join(words)
    return [first, *turns[1:]]


def sampling_kwargs(cfg: RunConfig) -> dict:
    """The generation settings GRPOConfig, RLOOConfig and DistillationConfig share."""
    t = cfg.trainer
    vllm = t.generation == "vllm"
    kwargs = dict(
        max_completion_length=cfg.data.max_completion_length,
        temperature=t.temperature,
        top_p=t.top_p,
        use_vllm=vllm,
        remove_unused_columns=False,  # the reward functions read the other columns
        log_completions=False,  # trl prints a table per log on the console; samples.jsonl holds them instead
    )
    if vllm:
        kwargs.update(vllm_mode=t.vllm_mode, vllm_gpu_memory_utilization=t.vllm_gpu_memory_utilization)
        if t.vllm_mode == "server" and os.environ.get(VLLM_URL_VARIABLE):
            kwargs["vllm_server_base_url"] = os.environ[VLLM_URL_VARIABLE]
    return kwargs


def policy_kwargs(cfg: RunConfig) -> dict:
    """The policy-gradient settings GRPOConfig and RLOOConfig share."""
    t = cfg.trainer
    return dict(
        num_generations=t.num_generations,
        beta=t.beta,
        epsilon=t.epsilon,
        epsilon_high=t.epsilon_high,
        num_iterations=t.num_iterations,
        steps_per_generation=t.steps_per_generation,
        mask_truncated_completions=t.mask_truncated_completions,
        reward_weights=t.reward_weights,
        # trl checks that the global eval batch holds whole groups: one group per process always does.
        per_device_eval_batch_size=t.num_generations,
    )


class SamplesLog(TrainerCallback):
    """Every logging.samples_steps steps, append the latest round's prompts, completions, per-function rewards and
    advantages to `samples.jsonl` in the run folder (rank 0: trl gathers them from every rank), so what the model
    samples and how it was scored can be read beside the loss curve."""

    def __init__(self, trainer, every: int, run_dir: Path):
        self.trainer, self.every, self.path = trainer, every, Path(run_dir) / "samples.jsonl"
        self.written_step = -1

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs_of = getattr(self.trainer, "_logs", None)
        if not self.every or state.global_step % self.every or not runtime.is_main() or not logs_of:
            return
        if state.global_step == self.written_step:
            return  # the end of training logs its summary at the last step again
        self.written_step = state.global_step
        prompts, completions = list(logs_of.get("prompt", ())), list(logs_of.get("completion", ()))
        rewards = {name: list(values) for name, values in logs_of.get("rewards", {}).items()}
        advantages = list(logs_of.get("advantages", ()))
        with self.path.open("a") as fh:
            for i, (prompt, completion) in enumerate(zip(prompts, completions)):
                row = {"step": state.global_step, "prompt": prompt, "completion": completion,
                       "rewards": {name: _number(values[i]) for name, values in rewards.items() if i < len(values)}}
                if i < len(advantages):
                    row["advantage"] = _number(advantages[i])
                fh.write(json.dumps(row, default=str) + "\n")


def samples_every(cfg: RunConfig, logging_every: int) -> int:
    """logging.samples_steps, null = every logging step."""
    return logging_every if cfg.logging.samples_steps is None else cfg.logging.samples_steps


def _number(value):
    value = float(value)
    return None if value != value else round(value, 6)  # NaN: a reward function without an opinion


def reward_summary(trainer) -> dict:
    """The last logged mean reward and per-function means (trl's `reward` and `rewards/<name>/mean`), and the mean
    reward over the first and last quarter of the logged steps: whether the run learned what it was paid for."""
    history = [h for h in trainer.state.log_history if "reward" in h]
    if not history:
        return {}
    quarter = max(1, len(history) // 4)
    first = sum(h["reward"] for h in history[:quarter]) / quarter
    last = sum(h["reward"] for h in history[-quarter:]) / quarter
    final = {k.split("/")[1]: round(v, 4) for k, v in history[-1].items()
             if k.startswith("rewards/") and k.endswith("/mean") and v is not None}
    return {"reward_first_quarter": round(first, 4), "reward_last_quarter": round(last, 4),
            "final_rewards": final}
