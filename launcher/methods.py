"""The training methods: one row each. Every list of trainer names (the schema's choices, AutoTrain's tasks,
the data formats a trainer takes, `prepare`'s report, the messages) derives from this table, so adding a method
is adding a row and its file under `launcher/trainers/`.

Pure data: importing it costs nothing (the plan imports it; the trainer module is imported only to train).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    formats: tuple[str, ...]
    """Data formats (launcher.data.formats) it trains on."""
    needs: str
    """The columns it needs, as a user reads them in an error message."""
    pairs: bool = False
    """It trains on preference pairs (chosen / rejected)."""
    score_head: bool = False
    """Its model is a sequence classifier with a one-label score head, not a causal LM (no generation)."""
    autotrain_tasks: tuple[str, ...] = ()
    """AutoTrain `task:` values that select it."""
    reads: tuple[str, ...] = ()
    """Method-specific configuration keys it reads; a rule about one of these binds only the methods that read it."""

    @property
    def module(self):
        return importlib.import_module(f"launcher.trainers.{self.name}")


_PREFERENCE_PAIRS = "prompt+chosen+rejected (or prompt+text+rejected_text)"
_PROMPT_LIMITS = ("data.max_prompt_length", "data.max_completion_length")

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "supervised fine-tuning on text, chat, prompt/completion or Alpaca rows",
           ("alpaca", "prompt_completion", "messages", "text"),
           "text, messages, prompt+completion or instruction+output",
           autotrain_tasks=("llm-sft",), reads=("trainer.train_on", "training.neftune_noise_alpha")),
    Method("default", "causal LM on text concatenated into block_size blocks",
           ("alpaca", "prompt_completion", "messages", "text"), "text",
           autotrain_tasks=("llm-generic",)),
    Method("reward", "a one-label score head on chosen/rejected pairs", ("preference", "reward_pair"),
           "text+rejected_text or chosen+rejected", pairs=True, score_head=True, autotrain_tasks=("llm-reward",)),
    Method("dpo", "direct preference optimisation against a frozen reference", ("preference",), _PREFERENCE_PAIRS,
           pairs=True, autotrain_tasks=("llm-dpo",),
           reads=("trainer.beta", "trainer.model_ref", "trainer.loss_type", "trainer.loss_weights",
                  "trainer.label_smoothing", *_PROMPT_LIMITS)),
    Method("orpo", "odds-ratio preference optimisation (no reference model)", ("preference",), _PREFERENCE_PAIRS,
           pairs=True, autotrain_tasks=("llm-orpo",), reads=("trainer.beta", *_PROMPT_LIMITS)),
    Method("cpo", "contrastive preference optimisation: DPO's loss without a reference, plus SFT on the chosen answer",
           ("preference",), _PREFERENCE_PAIRS, pairs=True,
           reads=("trainer.beta", "trainer.cpo_alpha", "trainer.label_smoothing", *_PROMPT_LIMITS)),
    Method("simpo", "simple preference optimisation: length-normalised reward with a target margin, no reference",
           ("preference",), _PREFERENCE_PAIRS, pairs=True,
           reads=("trainer.beta", "trainer.simpo_gamma", "trainer.cpo_alpha", "trainer.label_smoothing",
                  *_PROMPT_LIMITS)),
    Method("kto", "Kahneman-Tversky optimisation on single completions labelled desirable or not, against a "
           "frozen reference", ("unpaired", "unpaired_messages"), "prompt+completion+label (or messages+label)",
           reads=("trainer.beta", "trainer.model_ref", "trainer.desirable_weight", "trainer.undesirable_weight",
                  *_PROMPT_LIMITS)),
)}
NAMES = tuple(METHODS)
# AutoTrain's `task: llm` leaves the choice to params.trainer.
AUTOTRAIN_TASKS: dict[str, str | None] = {"llm": None, **{t: m.name for m in METHODS.values() for t in m.autotrain_tasks}}


def reads(trainer: str, key: str) -> bool:
    """Whether the trainer reads a method-specific key (keys every method reads are not listed)."""
    return key in METHODS[trainer].reads


def readers(key: str) -> list[str]:
    return [m.name for m in METHODS.values() if key in m.reads]
