"""Packing without contamination: a packed batch, as trl's collator and SFTTrainer.compute_loss see it, gives the
same loss as its samples run one by one, on the CPU attention kernels (sdpa, eager).

How it works (verified here, not assumed): best-fit packing is padding-free, so the collator sends no attention
mask but position ids that restart at 0 for each sample; transformers then builds a block-diagonal causal mask
from them. That only happens without a KV cache, and trl's compute_loss passes use_cache=False."""
import math

import pytest
import torch

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data import processed
from launcher.data.load import check_data

from tests.conftest import REPO, run_cli


def config(tiny, tmp_path, attn="sdpa", **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny)
    cfg.model.attn_implementation = attn
    cfg.precision.mixed_precision = "fp32"
    cfg.data.path = str(REPO / "samples" / "chat")
    cfg.data.chat_template = "chatml"
    cfg.data.block_size = 512
    cfg.data.valid_split = None
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.training.batch_size = 2
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def sample_by_sample_loss(model, input_ids, labels, position_ids) -> float:
    """Mean token loss of the packed batch's samples, each run alone (split where the position ids restart)."""
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(input_ids)]
    total, count = 0.0, 0
    with torch.no_grad():
        for a, b in zip(starts, starts[1:]):
            logits = model(input_ids=input_ids[a:b][None], use_cache=False).logits[0, :-1]
            target = labels[a + 1:b]
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_the_loss_of_the_samples_one_by_one(tiny_model, tmp_path, attn):
    from trl import SFTConfig, SFTTrainer

    cfg = config(tiny_model, tmp_path, attn, packing=True, chunk_size=256)
    tokenizer = models.load_tokenizer(cfg)
    prepared = processed.prepare_sft(cfg, tokenizer, check_data(cfg))
    assert prepared.stats["train"].sequences < prepared.stats["train"].samples  # several samples per sequence
    model = models.load_model(cfg, tokenizer)
    # sdpa runs packed samples one at a time (launcher/attention.py); eager gets the block-diagonal mask
    assert model.config._attn_implementation == {"sdpa": "sdpa_packed"}.get(attn, attn)
    # the trainer arguments launcher/trainers/sft.py uses for packed data
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=256, packing=True,
                     packing_strategy="bfd", assistant_only_loss=False, completion_only_loss=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, report_to=[], bf16=False,
                     gradient_checkpointing=False, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=prepared.train, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    positions = batch["position_ids"][0]
    assert int((positions == 0).sum()) > 2  # several samples in this batch

    model.eval()  # no dropout either way
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
    alone = sample_by_sample_loss(model, batch["input_ids"][0], batch["labels"][0], positions)
    assert math.isclose(packed, alone, rel_tol=1e-4), (packed, alone)

    # the check can fail: the same packed row with plain causal attention lets samples see each other
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss.item()
    assert not math.isclose(leaky, alone, rel_tol=1e-3), (leaky, alone)


def test_training_with_packing_reuses_what_prepare_cached_and_logs_the_counts(tmp_path):
    cache = tmp_path / "cache"
    common = ("recipe=sft/chat_tiny", "data.packing=true", "data.chunk_size=256", f"data.cache_dir={cache}")
    prepared = run_cli("prepare", "--show", "0", *common, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert "tokenised now" in prepared.stdout and "packed 40 samples into" in prepared.stdout

    run = tmp_path / "packed-run"
    result = run_cli("train", *common, f"project_name={run}", "training.max_steps=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "train: 0 of 40 samples truncated to 256 tokens" in log
    assert "train: packed 40 samples into" in log and "padding-free" in log
    assert f"data: reused cache {cache}" in log  # the worker did not tokenise again
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.slow
def test_two_processes_tokenise_once(tmp_path):
    """Under DDP the main process prepares and caches first; the other process then loads its cache."""
    cache = tmp_path / "cache"
    run = tmp_path / "ddp-run"
    result = run_cli("train", "recipe=sft/chat_tiny", "distributed.num_processes=2", "data.packing=true",
                     f"data.cache_dir={cache}", f"project_name={run}", "training.max_steps=2", cwd=tmp_path,
                     env={"TUNELAUNCH_LOG_ALL_RANKS": "1"})  # rank 1's info lines are hidden otherwise
    assert result.returncode == 0, result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert "rank 1 of 2" in both
    assert both.count(f"data: tokenised into cache {cache}") == 1
    assert both.count(f"data: reused cache {cache}") == 1
