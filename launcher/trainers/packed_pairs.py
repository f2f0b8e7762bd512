"""Padding-free packing for the pairwise trainers (dpo, orpo, cpo, simpo, kto, reward) with data.packing=true.

Why: trl pads every batch of these trainers to its longest sequence, and preference answers are long-tailed, so
most computed tokens of a batch can be padding. trl's own DPO `padding_free` is switched off upstream.

How: a batch is still per_device_train_batch_size examples (the same examples, steps and loss as unpacked). The
collator keeps trl's padded batch (index tensors only: the model never runs on them, trl's loss code reads their
masks and shapes) and adds a plan: the batch's sequences laid best-fit into rows of `capacity` tokens, a pair's
sequences always in one row, then concatenated into the single padding-free row that attention kernels take, with
position ids restarting at each sequence and its boundaries (`cu_seq_lens_q/k`, `max_length_q/k`, read by
launcher/attention.py's sdpa_packed and by flash-attention's varlen kernel). Three ways to feed trl's loss:

- dpo, kto (`FusedLogps`): trl calls the model (patched with its fused LM head) on the padded input_ids. The
  forward is wrapped: when those input_ids have a plan, the packed row runs instead and its per-token outputs
  (log-probs, entropy, ...) come back scattered into the padded layout, zero where trl's are zero (prompt, pad).
  trl's `_compute_loss` sums them per sequence and computes its loss and metrics unchanged.
- reward (`Scores`): the same wrapper returns, per sequence, the score trl's model reads (its rightmost non-pad
  token).
- orpo, cpo, simpo (`ConcatenatedLogps`): trl reduces the logits inside `concatenated_forward`; that one method is
  replaced (same reductions: summed or averaged answer log-probs, the SFT term), its loss functions are trl's.
  Only the `logits/chosen|rejected` metrics differ: trl averages the logits of the pad positions too.

Module import is cheap (no torch): `plan` and `prepare` use `packing_efficiency`.
"""
from __future__ import annotations

import functools
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Sequence

PLAN = "packed"
"""Batch key of the plan for `input_ids`; KTO's KL sequences have theirs under `KL_packed` (for `KL_input_ids`)."""


# ---- best-fit rows (pure Python)

def best_fit(sizes: Sequence[int], capacity: int | None) -> list[list[int]]:
    """Indices of `sizes` grouped into rows of at most `capacity` tokens: largest first, each into the fullest row
    it fits (best fit decreasing); one larger than `capacity` gets a row of its own. None: one row."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    if capacity is None:
        return [order] if order else []
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        fits = [r for r in range(len(rows)) if free[r] >= sizes[i]]
        if fits:
            r = min(fits, key=free.__getitem__)
            rows[r].append(i)
            free[r] -= sizes[i]
        else:
            rows.append([i])
            free.append(capacity - sizes[i])
    return rows


@dataclass(frozen=True)
class PackingEfficiency:
    """Computed tokens of one epoch of preference data, padded (as trl batches it) and packed (padding-free)."""
    real_tokens: int
    padded_tokens: int
    """Per batch: its sequences x its longest sequence, summed."""
    packed_tokens: int
    """Padding-free: only the real tokens are computed."""
    rows: int
    """Best-fit rows of `capacity` tokens the batches' sequences fill (what `prepare --show` displays)."""

    @property
    def padded_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    @property
    def packed_efficiency(self) -> float:
        return self.real_tokens / self.packed_tokens if self.packed_tokens else 1.0

    @property
    def ceiling(self) -> float:
        """The speed-up packing can bring at most, in computed tokens (padded / packed)."""
        return self.padded_tokens / self.packed_tokens if self.packed_tokens else 1.0


def packing_efficiency(lengths: Sequence[Sequence[int]], batch_size: int,
                       capacity: int | None) -> PackingEfficiency:
    """Padded vs packed computed tokens of preference data: `lengths` holds, per example in training order, the
    token lengths of its sequences (prompt+chosen and prompt+rejected for a pair; prompt+completion for kto, plus
    its KL sequence if counted; chosen and rejected texts for reward). Batches are consecutive runs of
    `batch_size` examples, as trl's sequential order would give; a shuffled epoch pads about as much."""
    real = padded = rows = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        seqs = [n for example in batch for n in example]
        if not seqs:
            continue
        real += sum(seqs)
        padded += len(seqs) * max(seqs)
        rows += len(best_fit([sum(example) for example in batch], capacity))
    return PackingEfficiency(real, padded, real, rows)


def layout(batch: Sequence[Sequence[int]], capacity: int | None) -> list[list[tuple[int, int, int, int]]]:
    """How `pack` lays out one batch (per example, its sequences' lengths): the best-fit rows, each a list of
    (example, sequence, start, end), start and end being offsets in the batch's one padding-free row."""
    rows, offset = [], 0
    for b in best_fit([sum(example) for example in batch], capacity):
        row = []
        for example in b:
            for seq, n in enumerate(batch[example]):
                row.append((example, seq, offset, offset + n))
                offset += n
        rows.append(row)
    return rows


# ---- the plan of one batch

def pair_groups(sequences: int) -> list[list[int]]:
    """trl's pairwise batches hold the n chosen sequences then the n rejected ones: example i is rows i and n+i."""
    half = sequences // 2
    return [[i, half + i] for i in range(half)]


def single_groups(sequences: int) -> list[list[int]]:
    return [[i] for i in range(sequences)]


def pack(input_ids, attention_mask, groups: list[list[int]], capacity: int | None, **extra) -> dict:
    """The plan for a right-padded batch: its sequences' real tokens in one row, the groups (an example's
    sequences) laid best-fit into rows of `capacity`. `rows[k]` is the padded row of packed sequence k; `extra`
    per-token tensors of the padded layout (e.g. labels) are gathered into the packed layout too."""
    import torch

    lengths = attention_mask.sum(1)
    width = input_ids.shape[1]
    if not torch.equal(attention_mask.bool(), torch.arange(width) < lengths[:, None]):
        raise ValueError("packing expects right-padded sequences (real tokens first)")
    lens = lengths.tolist()
    bins = best_fit([sum(lens[r] for r in group) for group in groups], capacity)
    order = [r for b in bins for g in b for r in groups[g]]
    rows = torch.tensor(order, dtype=torch.long)
    positions = torch.cat([torch.arange(lens[r]) for r in order])
    source = torch.repeat_interleave(rows, torch.tensor([lens[r] for r in order])) * width + positions
    plan = {
        "input_ids": input_ids.reshape(-1)[source][None],
        "position_ids": positions[None],
        "cu_seq_lens": torch.tensor([0, *itertools.accumulate(lens[r] for r in order)], dtype=torch.int32),
        "max_length": max(lens),
        "rows": rows,
        "row_tokens": torch.tensor([sum(lens[r] for g in b for r in groups[g]) for b in bins]),
        "padded_tokens": input_ids.numel(),  # what the padded batch would have computed
    }
    for key, value in extra.items():
        plan[key] = value.reshape(-1)[source][None]
    return plan


def attention_kwargs(plan: dict) -> dict:
    """What the model's forward takes for a padding-free row: position ids restarting per sequence and the
    boundaries the varlen attention kernels read (transformers passes them down to the attention function)."""
    cu, longest = plan["cu_seq_lens"], plan["max_length"]
    return {"position_ids": plan["position_ids"], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}


def segments(plan: dict):
    """(segment index of each packed token, whether token p is the last of its sequence)."""
    import torch

    cu = plan["cu_seq_lens"].long()
    lens = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(len(lens), device=cu.device), lens)
    last = torch.zeros(int(cu[-1]), dtype=torch.bool, device=cu.device)
    last[cu[1:] - 1] = True
    return seg, last


@dataclass
class PackedCollator:
    """trl's collator, then the plan(s) of its batch: (plan key, ids key, mask key) each."""
    inner: Callable
    capacity: int | None
    plans: tuple[tuple[str, str, str], ...] = ((PLAN, "input_ids", "attention_mask"),)
    groups: Callable[[int], list[list[int]]] = pair_groups
    prepare: Callable[[dict], dict] | None = None
    """Turns trl's batch into the padded layout to pack (orpo/cpo: the chosen and rejected halves concatenated)."""
    extra: tuple[str, ...] = ()
    """Per-token keys of the padded layout gathered into the plan (orpo/cpo: labels)."""

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        layout = self.prepare(batch) if self.prepare else batch
        for key, ids, mask in self.plans:
            if ids in layout:
                extra = {name: layout[f"{ids[:-len('input_ids')]}{name}"] for name in self.extra}
                batch[key] = pack(layout[ids], layout[mask], self.groups(len(layout[ids])), self.capacity, **extra)
        return batch


# ---- running a plan in place of the padded batch trl passes to the model

_ACTIVE: dict[int, tuple[dict, Any]] = {}
"""data_ptr of a padded input_ids tensor -> (its plan, the tensor), while trl's loss code runs on that batch."""


@contextmanager
def active_plans(inputs: dict):
    """A copy of `inputs` without the plans (trl passes every other key to the model), their padded input_ids
    registered so that a wrapped forward called on them runs the plan instead."""
    inputs = dict(inputs)
    keys = [k for k in inputs if k.endswith(PLAN)]
    registered = []
    for key in keys:
        plan, ids = inputs.pop(key), inputs[key[:-len(PLAN)] + "input_ids"]
        _ACTIVE[ids.data_ptr()] = (plan, ids)
        registered.append(ids.data_ptr())
    try:
        yield inputs
    finally:
        for ptr in registered:
            _ACTIVE.pop(ptr, None)


def wrap_forward(model, run: Callable, when: Callable[[dict], bool] = lambda kwargs: True) -> None:
    """Wrap `model.forward` (on the instance, over trl's own patch): a call on registered padded input_ids for
    which `when(kwargs)` holds goes to `run(inner_forward, plan, padded_ids, kwargs)`; anything else (generation,
    unpacked batches) to the forward unchanged."""
    if getattr(model.forward, "_packed_pairs", False):
        return
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        import torch

        ids = kwargs.get("input_ids", args[0] if len(args) == 1 else None)
        entry = _ACTIVE.get(ids.data_ptr()) if torch.is_tensor(ids) else None
        if entry is None or entry[1].shape != ids.shape or len(args) > 1 or not when(kwargs):
            return inner(*args, **kwargs)
        for key in ("input_ids", "attention_mask", "inputs_embeds"):
            kwargs.pop(key, None)
        return run(inner, entry[0], ids, kwargs)

    forward._packed_pairs = True
    model.forward = forward


def run_fused(inner, plan: dict, padded_ids, kwargs: dict):
    """trl's fused-LM-head forward on the packed row; its per-token outputs (length L-1: token p predicts p+1)
    scattered back into the padded (rows, width-1) layout trl indexes, zero elsewhere as the fused head leaves
    them. The labels are trl's, gathered into the packed layout; each sequence's first token is never a target
    (the padded layout shifts it away), which also stops a sequence predicting the next one's first token."""
    import torch

    labels = kwargs.pop("labels")
    n_rows, width = padded_ids.shape
    seg, last = segments(plan)
    rows = plan["rows"][seg]
    positions = plan["position_ids"][0]
    packed_labels = labels.reshape(-1)[rows * width + positions].clone()
    packed_labels[positions == 0] = -100
    out = inner(input_ids=plan["input_ids"], labels=packed_labels[None], **attention_kwargs(plan), **kwargs)
    keep = ~last[:-1]
    dest = (rows * (width - 1) + positions)[:-1][keep]
    for name, value in list(out.items()):
        if torch.is_tensor(value) and value.dim() == 2 and value.shape == (1, len(last) - 1):
            padded = value.new_zeros(n_rows * (width - 1)).index_copy(0, dest, value[0][keep])
            out[name] = padded.view(n_rows, width - 1)
    return out


def run_scores(model) -> Callable:
    """For a sequence-classification model: the backbone and score head on the packed row, each sequence's score
    read where trl's model reads it (its rightmost token that is not the pad token), in the padded row order."""
    def run(inner, plan: dict, padded_ids, kwargs: dict):
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        hidden = model.base_model(input_ids=plan["input_ids"], use_cache=False,
                                  **attention_kwargs(plan)).last_hidden_state
        logits = model.score(hidden)[0]  # (tokens, num_labels)
        seg, _ = segments(plan)
        positions = plan["position_ids"][0]
        pad = model.config.get_text_config().pad_token_id
        real = plan["input_ids"][0] != pad if pad is not None else torch.ones_like(positions, dtype=torch.bool)
        # rightmost real token per sequence (as trl's argmax: position 0 when all are pad)
        score_at = torch.zeros(len(plan["rows"]), dtype=torch.long, device=seg.device).scatter_reduce(
            0, seg, positions * real, reduce="amax")
        picked = logits[plan["cu_seq_lens"][:-1].long() + score_at]
        pooled = picked.new_zeros(padded_ids.shape[0], picked.shape[1]).index_copy(0, plan["rows"], picked)
        return SequenceClassifierOutputWithPast(logits=pooled)

    return run


# ---- trainer mixins

class PackedTrainer:
    """Runs trl's loss with the batch's plans active; subclasses say which models to wrap and how. Training logs
    gain `packing/computed_tokens` and `packing/padded_tokens` (what the same batches padded would have computed;
    cumulative, per process), so a run states what packing saved."""
    pack_capacity: int | None = None
    _pack_tokens: tuple[int, int] = (0, 0)

    def compute_loss(self, model, inputs, *args, **kwargs):
        self._count_packed(inputs)
        with active_plans(inputs) as inputs:
            return super().compute_loss(model, inputs, *args, **kwargs)

    def _count_packed(self, inputs: dict) -> None:
        if not self.model.training:
            return
        plans = [v for k, v in inputs.items() if k.endswith(PLAN)]
        computed, padded = self._pack_tokens
        self._pack_tokens = (computed + sum(int(p["cu_seq_lens"][-1]) for p in plans),
                             padded + sum(int(p["padded_tokens"]) for p in plans))

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.model.training and self._pack_tokens[0]:
            logs["packing/computed_tokens"], logs["packing/padded_tokens"] = self._pack_tokens
        super().log(logs, *args, **kwargs)


class FusedLogps(PackedTrainer):
    """dpo, kto: trl's fused LM head computes per-token log-probs of the packed row for the policy and the
    reference (KTO also for its KL sequences, a plan of their own)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plans = ((PLAN, "input_ids", "attention_mask"), (f"KL_{PLAN}", "KL_input_ids", "KL_attention_mask"))
        groups = single_groups if _derives(self, "KTOTrainer") else pair_groups
        self.data_collator = PackedCollator(self.data_collator, self.pack_capacity, plans, groups)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        for model in (base, self.ref_model):
            if model is not None:
                wrap_forward(model, run_fused, when=lambda kwargs: bool(kwargs.get("fused_lm_head")))

    def compute_ref_log_probs(self, model, inputs):
        with active_plans(inputs) as inputs:
            return super().compute_ref_log_probs(model, inputs)


def _derives(trainer, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(trainer).__mro__)


class Scores(PackedTrainer):
    """reward: the score of each sequence from the packed row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = PackedCollator(self.data_collator, self.pack_capacity)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        wrap_forward(base, run_scores(base))


class ConcatenatedLogps(PackedTrainer):
    """orpo, cpo/simpo: `concatenated_forward` on the packed row, with trl's reductions of the logits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = PackedCollator(self.data_collator, self.pack_capacity,
                                            plans=((PLAN, "concatenated_input_ids", "concatenated_attention_mask"),),
                                            prepare=functools.partial(type(self).concatenated_inputs,
                                                                      padding_value=0),
                                            extra=("labels",))

    def compute_loss(self, model, inputs, *args, **kwargs):  # trl reads the plan in concatenated_forward itself
        self._count_packed(inputs)
        return super(PackedTrainer, self).compute_loss(model, inputs, *args, **kwargs)

    def concatenated_forward(self, model, batch):
        import torch
        from trl.trainer.utils import selective_log_softmax

        plan = batch.get(PLAN)
        if plan is None:
            return super().concatenated_forward(model, batch)
        if self.aux_loss_enabled:
            raise ValueError("data.packing does not carry the router's auxiliary loss of MoE models: turn it off")
        logits = model(input_ids=plan["input_ids"], use_cache=False, **attention_kwargs(plan)).logits[0]
        seg, last = segments(plan)
        ids, labels = plan["input_ids"][0], plan["labels"][0]
        same = ~last[:-1]  # token p predicts p+1 inside its sequence
        logps = selective_log_softmax(logits[:-1], ids[1:])
        answer = same & (labels[1:] != -100)
        n = len(plan["rows"])
        chosen_seq = plan["rows"] < n // 2  # padded rows: the chosen half first

        def per_row(values):
            sums = values.new_zeros(n).index_add(0, seg[:-1], values)
            return sums.new_zeros(n).index_copy(0, plan["rows"], sums)

        sums, counts = per_row(logps * answer), per_row(answer.to(logps.dtype))
        is_orpo = _derives(self, "ORPOTrainer")
        average = is_orpo or self.loss_type in ("ipo", "simpo")
        all_logps = sums / counts if average else sums
        chosen_tokens = chosen_seq[seg[:-1]]
        if is_orpo:  # SFT on the chosen sequences, prompt included (trl's labels: every real token)
            nll_mask = same & chosen_tokens
        elif self.cpo_alpha == 0:
            nll_mask = None
        else:  # SFT on the chosen answers
            nll_mask = answer & chosen_tokens
        nll = (torch.tensor(0.0, device=logits.device) if nll_mask is None
               else -(logps * nll_mask).sum() / nll_mask.sum())
        half = n // 2
        # trl only averages these for its logits/* metrics: the per-token means (same mean, no (tokens, vocab) copy)
        token_means = logits[:-1].detach().mean(-1)
        chosen_logits = token_means[chosen_tokens & same][None]
        rejected_logits = token_means[~chosen_tokens & same][None]
        return all_logps[:half], all_logps[half:], chosen_logits, rejected_logits, nll


MIXINS = {"DPOTrainer": FusedLogps, "KTOTrainer": FusedLogps, "RewardTrainer": Scores,
          "ORPOTrainer": ConcatenatedLogps, "CPOTrainer": ConcatenatedLogps}


def capacity(cfg) -> int | None:
    """Tokens per best-fit row: data.chunk_size (resolved by the plan: null -> block_size)."""
    size = cfg.data.chunk_size
    return size if size and size > 0 else None


def trainer_class(base: type, cfg) -> type:
    """`base` (one of trl's pairwise trainers) as is, or with data.packing its padding-free subclass."""
    if not cfg.data.packing:
        return base
    return type(f"Packed{base.__name__}", (MIXINS[base.__name__], base), {"pack_capacity": capacity(cfg)})
