"""Trainer callbacks every trainer can add, and the loss curve drawn from a finished run's history."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class ValidationPromptCallback(TrainerCallback):
    """At each evaluation, answer `training.validation_prompt` with the training template and log it, so a
    run's progress can be read, not only its loss."""

    def __init__(self, prompt: str, tokenizer, chat: bool, stop_ids: list[int], max_new_tokens: int = 48):
        self.prompt, self.tokenizer, self.chat = prompt, tokenizer, chat
        self.stop_ids, self.max_new_tokens = stop_ids, max_new_tokens
        self.samples: list[dict] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero:
            return
        from launcher.generate import Generator

        was_training = model.training
        model.eval()
        gen = Generator(model, self.tokenizer, self.stop_ids, self.chat)
        answer = gen.complete(text=self.prompt, max_new_tokens=self.max_new_tokens)
        if was_training:
            model.train()
        self.samples.append({"step": state.global_step, "prompt": self.prompt, "answer": answer})
        log.info("validation sample at step %d: %r -> %r", state.global_step, self.prompt, answer)
        out = Path(args.output_dir) / "validation_samples.jsonl"
        with out.open("a") as fh:
            fh.write(json.dumps(self.samples[-1]) + "\n")


class TrackerRunCallback(TrainerCallback):
    """Ties the mlflow or trackio run to the run folder (the Trainer's output_dir): launcher.trackers says how.
    mlflow's run starts when the Trainer is built and ends with training; trackio's is opened by transformers'
    TrackioCallback at train begin, and gets our parameters right after."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mlflow_run: str | None = None

    def on_init_end(self, args, state, control, **kwargs):
        from launcher import trackers

        if self.mlflow_run is None:
            self.mlflow_run = trackers.on_trainer_built(self.cfg, Path(args.output_dir))

    def on_train_begin(self, args, state, control, **kwargs):
        from launcher import trackers

        trackers.on_train_begin(self.cfg, Path(args.output_dir))

    def on_train_end(self, args, state, control, **kwargs):
        from launcher import trackers

        if self.mlflow_run is not None:
            trackers.end_mlflow_run()
            self.mlflow_run = None


def run_callbacks(cfg, tokenizer) -> list[TrainerCallback]:
    """The callbacks a run's configuration asks for (the stop-on-signal one is added by checkpointing)."""
    from launcher.data.templates import stop_tokens
    from launcher.trackers import TRACKERS

    callbacks: list[TrainerCallback] = [TrackerRunCallback(cfg)] if cfg.logging.report_to in TRACKERS else []
    if cfg.training.validation_prompt:
        callbacks.append(ValidationPromptCallback(cfg.training.validation_prompt, tokenizer,
                                                  cfg.data.chat_template != "none",
                                                  stop_tokens(tokenizer, cfg.data.chat_template)))
    return callbacks


def plot_loss_curve(run_dir: Path) -> Path | None:
    """`loss_curve.png` from trainer_state.json: training loss per logged step, and eval loss when present (and an
    online run's `reward_curve.png`)."""
    state_file = run_dir / "trainer_state.json"
    if not state_file.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    history = json.loads(state_file.read_text())["log_history"]
    if any("reward" in h for h in history):
        _plot_rewards(run_dir, history, plt)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if not train:
        return None
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    curves = [("train loss", train, {})] + ([("eval loss", evals, {"marker": "o"})] if evals else [])
    return _save_plot(run_dir, "loss_curve.png", "loss", curves, plt)


def _plot_rewards(run_dir: Path, history: list[dict], plt) -> Path:
    """`reward_curve.png` of an online run (grpo, rloo): the mean total reward per logged step and each reward
    function's mean, which is what such a run learns; its loss hovers near 0 by construction."""
    rows = [h for h in history if "reward" in h]
    curves = [("reward (weighted sum)", [(h["step"], h["reward"]) for h in rows], {"linewidth": 2})]
    for name in sorted({k for h in rows for k in h if k.startswith("rewards/") and k.endswith("/mean")}):
        points = [(h["step"], h[name]) for h in rows if h.get(name) is not None]
        if points:
            curves.append((name.split("/")[1], points, {"alpha": 0.7}))
    return _save_plot(run_dir, "reward_curve.png", "mean reward", curves, plt)


def _save_plot(run_dir: Path, file: str, ylabel: str, curves: list, plt) -> Path:
    """One figure of (label, [(step, value)], line options) curves over the optimizer steps, saved in the run."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, points, options in curves:
        ax.plot(*zip(*points), label=label, **options)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / file
    fig.savefig(out)
    plt.close(fig)
    return out
