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

    online: bool = False
    """It trains on completions it samples from the model itself (prompt-only data; generation in the loop)."""
    packs: bool = False
    """It packs with data.packing: several examples share one row, each attending only to itself (padding-free);
    it then reads the packing keys (`_PACKING`, added to `reads`)."""
    streams: bool = False
    """It can read its data as a stream (data.streaming: tokenised on the fly, never whole in memory); the others
    refuse data.streaming (launcher.resolve), since they would read the whole corpus."""

    def __post_init__(self):
        if self.packs:
            object.__setattr__(self, "reads", (*self.reads, *_PACKING))

    @property
    def module(self):
        return importlib.import_module(f"launcher.trainers.{self.name}")


_PACKING = ("data.packing", "data.chunk_size")
_PREFERENCE_PAIRS = "prompt+chosen+rejected (or prompt+text+rejected_text)"
_PROMPT_LIMITS = ("data.max_prompt_length", "data.max_completion_length")
_SAMPLING = ("trainer.temperature", "trainer.top_p", "trainer.generation", "trainer.vllm_mode",
             "trainer.vllm_gpu_memory_utilization", "logging.samples_steps", *_PROMPT_LIMITS)
_REWARDS = ("trainer.rewards", "trainer.reward_weights", "trainer.format_pattern", "trainer.length_target",
            "trainer.length_tolerance", "trainer.answer_column", "trainer.answer_pattern", "trainer.json_schema")
_POLICY_GRADIENT = ("trainer.beta", "trainer.num_generations", "trainer.epsilon", "trainer.epsilon_high",
                    "trainer.num_iterations", "trainer.steps_per_generation", "trainer.mask_truncated_completions",
                    *_REWARDS, *_SAMPLING)
_PROMPTS = "prompt (text, or chat messages ending with a user turn); other columns go to the reward functions"

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "supervised fine-tuning on text, chat, prompt/completion or Alpaca rows",
           ("alpaca", "prompt_completion", "messages", "text"),
           "text, messages, prompt+completion or instruction+output",
           autotrain_tasks=("llm-sft",), packs=True, streams=True,
           reads=("trainer.train_on", "trainer.train_on_reasoning", "training.neftune_noise_alpha",
                  "data.wrap_packed_sequences", "data.packing_buffer")),
    Method("default", "causal LM on text concatenated into block_size blocks",
           ("alpaca", "prompt_completion", "messages", "text"), "text",
           autotrain_tasks=("llm-generic",), streams=True),
    Method("reward", "a one-label score head on chosen/rejected pairs", ("preference", "reward_pair"),
           "text+rejected_text or chosen+rejected", pairs=True, score_head=True, packs=True, autotrain_tasks=("llm-reward",)),
    Method("dpo", "direct preference optimisation against a frozen reference", ("preference",), _PREFERENCE_PAIRS,
           pairs=True, packs=True, autotrain_tasks=("llm-dpo",),
           reads=("trainer.beta", "trainer.model_ref", "trainer.loss_type", "trainer.loss_weights",
                  "trainer.label_smoothing", *_PROMPT_LIMITS)),
    Method("orpo", "odds-ratio preference optimisation (no reference model)", ("preference",), _PREFERENCE_PAIRS,
           pairs=True, packs=True, autotrain_tasks=("llm-orpo",), reads=("trainer.beta", *_PROMPT_LIMITS)),
    Method("cpo", "contrastive preference optimisation: DPO's loss without a reference, plus SFT on the chosen answer",
           ("preference",), _PREFERENCE_PAIRS, pairs=True, packs=True,
           reads=("trainer.beta", "trainer.cpo_alpha", "trainer.label_smoothing", *_PROMPT_LIMITS)),
    Method("simpo", "simple preference optimisation: length-normalised reward with a target margin, no reference",
           ("preference",), _PREFERENCE_PAIRS, pairs=True, packs=True,
           reads=("trainer.beta", "trainer.simpo_gamma", "trainer.cpo_alpha", "trainer.label_smoothing",
                  *_PROMPT_LIMITS)),
    Method("kto", "Kahneman-Tversky optimisation on single completions labelled desirable or not, against a "
           "frozen reference", ("unpaired", "unpaired_messages"), "prompt+completion+label (or messages+label)", packs=True,
           reads=("trainer.beta", "trainer.model_ref", "trainer.desirable_weight", "trainer.undesirable_weight",
                  *_PROMPT_LIMITS)),
    Method("grpo", "group relative policy optimisation: sample a group of completions per prompt, score them with "
           "the reward functions, and raise the likelihood of the better ones", ("prompt_only",), _PROMPTS,
           online=True, reads=(*_POLICY_GRADIENT, "trainer.loss_type", "trainer.importance_sampling_level",
                               "trainer.scale_rewards", "trainer.tools", "trainer.max_tool_calls")),
    Method("rloo", "REINFORCE leave-one-out: each completion's advantage is its reward minus the mean reward of "
           "the other completions of its prompt", ("prompt_only",), _PROMPTS, online=True, reads=_POLICY_GRADIENT),
    Method("distill", "on-policy distillation: the student samples completions and learns the teacher's next-token "
           "distribution on them", ("prompt_only",), _PROMPTS, online=True,
           reads=("trainer.teacher", "trainer.beta", "trainer.tools", "trainer.max_tool_calls", *_SAMPLING)),
)}
NAMES = tuple(METHODS)
# AutoTrain's `task: llm` leaves the choice to params.trainer.
AUTOTRAIN_TASKS: dict[str, str | None] = {"llm": None, **{t: m.name for m in METHODS.values() for t in m.autotrain_tasks}}


def reads(trainer: str, key: str) -> bool:
    """Whether the trainer reads a method-specific key (keys every method reads are not listed)."""
    return key in METHODS[trainer].reads


def readers(key: str) -> list[str]:
    return [m.name for m in METHODS.values() if key in m.reads]
