"""On-policy distillation through trl's DistillationTrainer: the student samples a completion for each prompt, and
learns the teacher's next-token distribution on every token of it. The loss is the generalized Jensen-Shannon
divergence between the two distributions (at trainer.temperature): trainer.beta 0 is the forward KL (the student
covers all the teacher's modes), 1 the reverse KL (mode-seeking, on-policy distillation's; the default), 0.5 the
symmetric JSD. Learning on its own samples, the student is corrected where it actually goes, not on teacher text.

Data: prompt-only rows (`prompt`: text, or chat messages ending with the user turn; see launcher.data.formats).
With a chat template they are conversations, rendered with the run's template as `tunelaunch generate` renders
prompts. Prompts keep their last data.max_prompt_length tokens (launcher.trainers.online.fit_prompt); at most
data.max_completion_length tokens are sampled (null: 256). The sampled prompts and completions are appended to
samples.jsonl every logging.samples_steps steps.
Teacher: trainer.teacher, a hub id, a model folder or a finished run folder of ours (a full model, or an adapter
merged onto its base), loaded as the student is (dtype, attention, quantization); it must share the student's
vocabulary (checked at plan time by launcher.rl.teacher when both are local, and by trl at load).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from launcher import models
from launcher.callbacks import run_callbacks
from launcher.config.schema import RunConfig
from launcher.distributed import runtime
from launcher.rl import tools
from launcher.rl.teacher import adapter_base, model_folder
from launcher.trainers import online
from launcher.trainers.common import train_and_save, training_kwargs

log = logging.getLogger(__name__)



def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    from trl import DistillationTrainer

    # ---- data and student (prompts cut to data.max_prompt_length as rendered, keeping their end)
    data, tokenizer, train_set, eval_set, cut, model = online.prompts_and_policy(cfg)

    # ---- teacher, tools
    teacher = teacher_model(cfg, tokenizer)
    tool_functions = tools.tool_functions(cfg) if cfg.trainer.tools else None

    # ---- trainer
    args = distill_config(cfg, run_dir, len(train_set), eval_set is not None)
    trainer = DistillationTrainer(model=model, teacher_model=teacher, args=args, train_dataset=train_set,
                                  eval_dataset=eval_set, processing_class=tokenizer,
                                  peft_config=models.lora_config(cfg), tools=tool_functions,
                                  callbacks=run_callbacks(cfg, tokenizer))
    every = online.samples_every(cfg, args.logging_steps)
    if every:
        quiet_completion_log(trainer, run_dir)
        trainer.add_callback(online.SamplesLog(trainer, every, run_dir))
    log.info("distill: %s teaches %s, beta %g (%s), temperature %g, up to %d sampled tokens",
             cfg.trainer.teacher, cfg.model.name_or_path, args.beta, divergence_name(args.beta), args.temperature,
             args.max_completion_length)

    # ---- train and save
    metrics = train_and_save(trainer, cfg, run_dir, tokenizer, resume_from, data, truncated_prompts=cut)
    return {**metrics, **final_divergence(trainer.state.log_history)}


def distill_config(cfg: RunConfig, run_dir: Path, train_rows: int, has_eval: bool):
    """trl's DistillationConfig for the run. Its loss is the divergence itself (no reference model: beta picks the
    divergence, it is no penalty weight). trl decodes the sampled texts only with log_completions on, so it is on
    whenever samples.jsonl is written (quiet_completion_log stops trl's own copies of them)."""
    from trl import DistillationConfig

    t = cfg.trainer
    kwargs = {**online.sampling_kwargs(cfg), "log_completions": online.samples_every(cfg, 1) > 0}
    return DistillationConfig(
        **training_kwargs(cfg, run_dir, train_rows, has_eval, runtime.world_size()),
        **kwargs,
        beta=t.beta,
        max_tool_calling_iterations=t.max_tool_calls,
    )


def divergence_name(beta: float) -> str:
    return {0.0: "forward KL", 0.5: "Jensen-Shannon", 1.0: "reverse KL"}.get(beta, "generalized JSD")


def teacher_model(cfg: RunConfig, tokenizer):
    """The teacher, frozen, loaded as the student is (the student's configuration with the teacher's path, as dpo's
    reference model): the same dtype, attention and quantization, embeddings resized to the student's tokenizer.
    A run folder gives its final model or latest complete checkpoint (launcher.rl.teacher.model_folder, as
    `tunelaunch generate` loads a run); an adapter is merged onto the base named in its adapter_config.json."""
    ref = copy.deepcopy(cfg)
    ref.model.revision, ref.model.gguf_file = None, None
    folder = model_folder(cfg.trainer.teacher)
    base = adapter_base(folder) if folder is not None else None
    ref.model.name_or_path = base or str(folder or cfg.trainer.teacher)
    model = models.load_model(ref, tokenizer)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        log.info("teacher: the adapter of %s merged onto %s", folder, base)
    model.requires_grad_(False)
    return model.eval()


def quiet_completion_log(trainer, run_dir: Path) -> None:
    """With log_completions on, trl prints a table of the sampled texts at each log and writes them as parquet
    files under completions/; samples.jsonl (online.SamplesLog, called inside trl's log) is the one record here,
    so trl's `log` of this trainer runs with the flag off (the next generations still keep their texts)."""
    empty = Path(run_dir) / "completions"
    if empty.is_dir() and not any(empty.iterdir()):
        empty.rmdir()  # made by trl's __init__ for those parquet files
    log_metrics = trainer.log

    def log_without_tables(logs, start_time=None):
        trainer.log_completions = False
        try:
            log_metrics(logs, start_time)
        finally:
            trainer.log_completions = True

    trainer.log = log_without_tables


def final_divergence(history: list[dict]) -> dict:
    """The last logged divergence (trl's loss) and the sampling statistics logged with it."""
    keys = {"loss": "final_divergence", "entropy": "final_entropy",
            "completions/mean_length": "final_completion_length",
            "completions/clipped_ratio": "final_clipped_ratio"}
    last = next((h for h in reversed(history) if "loss" in h), {})
    return {ours: round(last[theirs], 6) for theirs, ours in keys.items() if last.get(theirs) is not None}
