"""Padding-free packing of the pairwise trainers (launcher/trainers/packed_pairs.py): one batch of examples of
different lengths gives the same loss, and the same per-example log-probabilities (rewards for the reward model),
packed as padded, through trl's own loss code, for dpo, orpo, cpo, simpo, kto and reward; the packed batch runs
the model on its real tokens only, in best-fit rows. Plus one `tunelaunch train` of the tiny dpo recipe packed."""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from launcher import attention
from launcher.trainers import packed_pairs

from tests.conftest import run_cli

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TOL = 1e-4
BATCH = 4
CAPACITY = 96  # small enough that the batch's pairs fill more than one best-fit row
WORDS = "the cat sat on a mat while two dogs ran around the old red barn near a quiet river".split()


def text(n: int, shift: int) -> str:
    return " ".join(WORDS[(shift + i) % len(WORDS)] for i in range(n))


def pairs() -> list[dict]:
    """Prompts and answers of different lengths, so that padding differs from example to example."""
    lengths = [(3, 12, 2), (9, 1, 20), (5, 30, 7), (2, 4, 4), (12, 8, 15), (6, 2, 9), (4, 18, 1), (7, 5, 11)]
    return [{"prompt": text(p, i), "chosen": " " + text(c, i + 3), "rejected": " " + text(r, i + 7)}
            for i, (p, c, r) in enumerate(lengths)]


def unpaired() -> list[dict]:
    return [{"prompt": row["prompt"], "completion": row[side], "label": side == "chosen"}
            for row in pairs() for side in ("chosen", "rejected")]


def cfg() -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(packing=True, chunk_size=CAPACITY, block_size=512))


def common_args(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                bf16=False, gradient_checkpointing=False, report_to=[], dataset_num_proc=None, seed=0)


def load(tiny, model_class=None, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = (model_class or AutoModelForCausalLM).from_pretrained(tiny, attn_implementation=attention.register(),
                                                                   dtype=torch.float32, **kwargs)
    return model.eval()


def nudged(model):
    """The policy a little away from the reference, so that the log-ratios (and the losses) are not zero."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


class TokenCounter:
    """The input shapes the embedding layer sees: what the model computed."""

    def __init__(self, model):
        self.shapes = []
        model.get_input_embeddings().register_forward_pre_hook(lambda _, args: self.shapes.append(tuple(args[0].shape)))


def batches(trainer):
    examples = [trainer.train_dataset[i] for i in range(BATCH)]
    packed = trainer.data_collator(examples)
    padded = trainer.data_collator.inner(examples)
    assert packed_pairs.PLAN in packed and packed_pairs.PLAN not in padded
    return padded, packed


def assert_real_tokens_only(counter, plan, padded_ids):
    real = int(plan["cu_seq_lens"][-1])
    assert counter.shapes and all(shape == (1, real) for shape in counter.shapes), counter.shapes
    assert real < padded_ids.numel()  # padding was there to save
    assert len(plan["row_tokens"]) > 1 and int(plan["row_tokens"].max()) <= CAPACITY


def close(a, b) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=TOL, rtol=TOL)


def fused_logps(model, batch, ids="input_ids", mask="completion_mask"):
    """Per-sequence summed completion log-probs, as trl's dpo/kto `_compute_loss` takes them from the fused head."""
    with packed_pairs.active_plans(batch) as inputs:
        labels = inputs[ids].masked_fill(inputs[mask] == 0, -100)
        return model(input_ids=inputs[ids], attention_mask=inputs[ids.replace("input_ids", "attention_mask")],
                     labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(-1)


# ---- one trainer per method, packed

def dpo(tiny, tmp_path, data):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common_args(tmp_path), beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                     max_length=None)
    return packed_pairs.trainer_class(DPOTrainer, cfg())(
        model=nudged(load(tiny)), ref_model=load(tiny), args=args, train_dataset=Dataset.from_list(data),
        processing_class=tokenizer(tiny))


def kto(tiny, tmp_path, data):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(**common_args(tmp_path), beta=0.1, max_length=None)
    return packed_pairs.trainer_class(KTOTrainer, cfg())(
        model=nudged(load(tiny)), ref_model=load(tiny), args=args, train_dataset=Dataset.from_list(data),
        processing_class=tokenizer(tiny))


def orpo(tiny, tmp_path, data):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**common_args(tmp_path), beta=0.1, max_length=512, remove_unused_columns=False)
    return packed_pairs.trainer_class(ORPOTrainer, cfg())(
        model=load(tiny), args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer(tiny))


def cpo(tiny, tmp_path, data, loss_type="sigmoid", cpo_alpha=1.0):
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**common_args(tmp_path), beta=0.1, loss_type=loss_type, cpo_alpha=cpo_alpha, simpo_gamma=0.5,
                     max_length=512, remove_unused_columns=False)
    return packed_pairs.trainer_class(CPOTrainer, cfg())(
        model=load(tiny), args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer(tiny))


def reward(tiny, tmp_path, data):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in data]
    args = RewardConfig(**common_args(tmp_path), max_length=512)
    return packed_pairs.trainer_class(RewardTrainer, cfg())(
        model=load(tiny, AutoModelForSequenceClassification, num_labels=1), args=args,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer(tiny))


# ---- the tests

def test_dpo_packed_equals_padded(tiny_model, tmp_path):
    trainer = dpo(tiny_model, tmp_path, pairs())
    padded, packed = batches(trainer)
    with torch.no_grad():
        assert close(fused_logps(trainer.model, packed), fused_logps(trainer.model, padded))
        assert close(fused_logps(trainer.ref_model, packed), fused_logps(trainer.ref_model, padded))
        loss_padded = trainer.compute_loss(trainer.model, padded)
        counter = TokenCounter(trainer.model)
        loss_packed = trainer.compute_loss(trainer.model, packed)
    assert_real_tokens_only(counter, packed[packed_pairs.PLAN], padded["input_ids"])
    assert loss_padded > 0.7 and close(loss_packed, loss_padded), (loss_packed, loss_padded)


def test_kto_packed_equals_padded_with_its_kl_sequences(tiny_model, tmp_path):
    trainer = kto(tiny_model, tmp_path, unpaired())
    padded, packed = batches(trainer)
    assert f"KL_{packed_pairs.PLAN}" in packed  # trl's mismatched completions are packed too
    with torch.no_grad():
        assert close(fused_logps(trainer.model, packed), fused_logps(trainer.model, padded))
        kl = ("KL_input_ids", "KL_completion_mask")
        assert close(fused_logps(trainer.model, packed, *kl), fused_logps(trainer.model, padded, *kl))
        loss_padded = trainer.compute_loss(trainer.model, padded)
        counter = TokenCounter(trainer.model)
        loss_packed = trainer.compute_loss(trainer.model, packed)
    assert_real_tokens_only(counter, packed[packed_pairs.PLAN], padded["input_ids"])
    assert loss_padded > 0 and close(loss_packed, loss_padded), (loss_packed, loss_padded)


@pytest.mark.parametrize("method", ["orpo", "cpo", "simpo"])
def test_orpo_cpo_simpo_packed_equal_padded(tiny_model, tmp_path, method):
    trainer = orpo(tiny_model, tmp_path, pairs()) if method == "orpo" else cpo(
        tiny_model, tmp_path, pairs(), *(("simpo", 0.2) if method == "simpo" else ()))
    padded, packed = batches(trainer)
    with torch.no_grad():
        want = trainer.concatenated_forward(trainer.model, padded)
        loss_padded = trainer.compute_loss(trainer.model, padded)
        counter = TokenCounter(trainer.model)
        got = trainer.concatenated_forward(trainer.model, packed)
        loss_packed = trainer.compute_loss(trainer.model, packed)
    plan = packed[packed_pairs.PLAN]
    assert_real_tokens_only(counter, plan, torch.cat([padded["chosen_input_ids"], padded["rejected_input_ids"]], 1))
    for index in (0, 1, 4):  # chosen logps, rejected logps (per example), the SFT term
        assert close(got[index], want[index]), (index, got[index], want[index])
    assert float(got[4]) > 0 and float(got[0].abs().min()) > 0
    assert close(loss_packed, loss_padded), (loss_packed, loss_padded)


def test_reward_packed_scores_equal_padded(tiny_model, tmp_path):
    trainer = reward(tiny_model, tmp_path, pairs())
    padded, packed = batches(trainer)
    with torch.no_grad():
        want = trainer.model(**padded).logits
        with packed_pairs.active_plans(packed) as inputs:
            got = trainer.model(**inputs).logits
        loss_padded = trainer.compute_loss(trainer.model, padded)
        counter = TokenCounter(trainer.model)
        loss_packed = trainer.compute_loss(trainer.model, packed)
    assert_real_tokens_only(counter, packed[packed_pairs.PLAN], padded["input_ids"])
    assert want.shape == got.shape == (2 * BATCH, 1) and float(want.std()) > 0
    assert close(got, want), (got, want)
    assert close(loss_packed, loss_padded), (loss_packed, loss_padded)


def test_a_pair_stays_in_one_row_and_rows_are_best_fit():
    assert packed_pairs.best_fit([5, 9, 3, 7, 1], 10) == [[1, 4], [3, 2], [0]]
    assert packed_pairs.best_fit([12, 2], 10) == [[0], [1]]  # longer than a row: a row of its own
    ids = torch.arange(1, 25).view(4, 6)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 3 + [0] * 3, [1] * 5 + [0]])
    plan = packed_pairs.pack(ids, mask, packed_pairs.pair_groups(4), capacity=8)
    rows = plan["rows"].tolist()
    assert sorted(rows) == [0, 1, 2, 3] and abs(rows.index(0) - rows.index(2)) == 1  # example 0: rows 0 and 2
    assert plan["row_tokens"].tolist() == [9, 7] and plan["cu_seq_lens"][-1] == 16
    assert plan["position_ids"][0].tolist()[:9] == [0, 1, 2, 3, 4, 5, 0, 1, 2]


def test_packing_efficiency_counts_padded_and_packed_tokens():
    eff = packed_pairs.packing_efficiency([(10, 2), (4, 4), (6, 1)], batch_size=2, capacity=12)
    assert (eff.real_tokens, eff.padded_tokens, eff.packed_tokens) == (27, 40 + 12, 27)
    assert eff.rows == 2 + 1 and math.isclose(eff.ceiling, 52 / 27)


def test_tunelaunch_trains_the_tiny_dpo_recipe_packed(tmp_path):
    run = tmp_path / "dpo-packed"
    result = run_cli("train", "recipe=dpo/preference_tiny", "data.packing=true", "data.chunk_size=128",
                     "training.max_steps=4", f"project_name={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attention sdpa_packed" in result.stderr
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    curve = [h["loss"] for h in history if "loss" in h]
    assert len(curve) == 4 and all(math.isfinite(x) for x in curve), curve
