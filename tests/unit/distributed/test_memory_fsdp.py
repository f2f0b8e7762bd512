"""FSDP (FSDP2's fully_shard) in the plan: its memory layout against figures computed by hand, auto's choice between
it and ZeRO, QLoRA under it, and what launch.check refuses or states about it.

The model is Llama-3-8B's shape on 8 GPUs, AdamW, bf16, one sequence of 1024 tokens with gradient checkpointing
(tests/unit/distributed/test_memory.py derives P, the block, the embedding and the activations). By hand:

    FSDP model states   fp32 master 4 + fp32 gradient 4 + AdamW 8 = 16P / 8               = 16,060,522,496
    gathered (reshard)  max(two layers, the embedding beside a layer) in bf16:
                        max(2 x 218,112,000, 525,336,576 + 218,112,000) x 2               =  1,486,897,152
    gathered (no reshard)  the whole model in bf16: 2P                                     = 16,060,522,496
    ZeRO-3 model states 20P / 8 + 4 x embedding (tests/unit/distributed/test_memory.py)    = 22,176,999,424
"""
import importlib.util

import pytest

from launcher.config.schema import DistributedConfig
from launcher.distributed import memory
from launcher.distributed.backends import BACKENDS
from launcher.distributed.launch import check
from launcher.distributed.memory import GIB, Layout, estimate, shape_from_config
from launcher.report import render_plan
from tests.unit.distributed.test_memory import (
    ACT_CKPT_BF16, ADAPTERS_R16, BLOCK, BLOCK_LINEAR, EMBED, LLAMA3_8B, OVERHEAD, P, run_config)
from tests.unit.helpers import CPU, H100x8, plan, problems

GATHERED = 1_486_897_152
FSDP_STATES = 16 * P / 8


@pytest.fixture(scope="module")
def shape():
    return shape_from_config(LLAMA3_8B)


# ---- the layout

def test_fsdp_shards_everything_and_holds_less_than_zero3(shape):
    fsdp = estimate(run_config(), shape, Layout("fsdp"), 8)
    assert fsdp.weights == 4 * P / 8 + GATHERED   # the fp32 master's shard + the gathered units in bf16
    assert fsdp.gradients == 4 * P / 8            # reduce-scattered into the fp32 shard: no 16-bit copy beside it
    assert fsdp.optimizer == 8 * P / 8
    assert fsdp.details["gathered"] == GATHERED and fsdp.details["zero3_gather"] == 0
    assert fsdp.total == pytest.approx(FSDP_STATES + GATHERED + ACT_CKPT_BF16 + OVERHEAD)  # ~19.0 GiB
    zero3 = estimate(run_config(), shape, Layout("deepspeed", 3), 8)
    # ZeRO-3 holds 4 more bytes per parameter (16-bit weights and gradients beside the fp32 master and the fp32
    # gradient copy) and gathers two of its largest unit (the embedding) where FSDP has a layer beside it
    assert zero3.total - fsdp.total == pytest.approx(4 * P / 8 + 4 * EMBED - GATHERED)  # 4,629,579,776
    assert fsdp.activations == zero3.activations


def test_the_gathered_units_are_two_layers_when_a_layer_is_the_largest():
    # a model whose embedding (vocabulary 1024 x 512) is smaller than a layer: two layers in flight
    small_vocab = shape_from_config({**LLAMA3_8B, "hidden_size": 512, "intermediate_size": 4096, "vocab_size": 1024,
                                     "num_attention_heads": 8, "num_key_value_heads": 8, "num_hidden_layers": 4})
    assert small_vocab.block_params > small_vocab.largest_module_params
    est = estimate(run_config(), small_vocab, Layout("fsdp"), 4)
    assert est.details["gathered"] == 2 * small_vocab.block_params * 2


def test_without_resharding_the_whole_model_stays_gathered(shape):
    kept = estimate(run_config(), shape, Layout("fsdp", reshard=False), 8)
    assert kept.weights == 4 * P / 8 + 2 * P   # every unit in bf16 from its forward to its backward
    assert (kept.gradients, kept.optimizer) == (4 * P / 8, 8 * P / 8)
    resharded = estimate(run_config(), shape, Layout("fsdp"), 8)
    assert kept.total - resharded.total == pytest.approx(2 * P - GATHERED)
    # close to ZeRO-2, which holds the bf16 weights whole too (and 2 bytes more per parameter over N)
    zero2 = estimate(run_config(), shape, Layout("deepspeed", 2), 8)
    assert zero2.total - kept.total == pytest.approx(2 * P / 8)


def test_offload_leaves_the_gathered_units_on_the_gpu(shape):
    off = estimate(run_config(), shape, Layout("fsdp", offload="optimizer_and_params"), 8)
    assert (off.weights, off.gradients, off.optimizer) == (GATHERED, 0, 0)
    assert off.cpu_offloaded == FSDP_STATES
    assert off.total == pytest.approx(GATHERED + ACT_CKPT_BF16 + OVERHEAD)
    assert f"{FSDP_STATES / GIB:.1f} GiB offloaded to CPU" in off.describe()  # 15.0 GiB
    kept = estimate(run_config(), shape, Layout("fsdp", reshard=False, offload="optimizer_and_params"), 8)
    assert kept.weights == 2 * P  # the gathered model is on the GPU, offload or not


def test_fp32_gathers_in_fp32(shape):
    est = estimate(run_config(precision="fp32"), shape, Layout("fsdp"), 8)
    assert est.details["gathered"] == 2 * GATHERED
    assert est.weights == 4 * P / 8 + 2 * GATHERED


def test_lora_under_fsdp_shards_the_frozen_base(shape):
    est = estimate(run_config(peft=True), shape, Layout("fsdp"), 8)
    # bf16 base and fp32 adapters (accelerate upcasts the trained ones), both sharded; the gathered units in bf16
    assert est.weights == pytest.approx((2 * P + 4 * ADAPTERS_R16) / 8 + GATHERED)
    assert (est.gradients, est.optimizer) == (4 * ADAPTERS_R16 / 8, 8 * ADAPTERS_R16 / 8)


def test_the_frozen_base_is_counted_in_weights_dtype(shape):
    cfg = run_config(peft=True, precision="fp16")
    assert estimate(cfg, shape, Layout("fsdp"), 8).weights == pytest.approx((4 * P + 4 * ADAPTERS_R16) / 8 + GATHERED)
    cfg.precision.weights_dtype = "fp16"  # stated: the base loads in fp16 (auto would load fp32 with fp16 compute)
    assert estimate(cfg, shape, Layout("fsdp"), 8).weights == pytest.approx((2 * P + 4 * ADAPTERS_R16) / 8 + GATHERED)


def test_qlora_under_fsdp_shards_the_packed_weights_and_says_how_it_loads(shape):
    est = estimate(run_config(peft=True, quant="int4"), shape, Layout("fsdp"), 8)
    frozen = 5_940_505_804.8  # test_memory.py: NF4 block Linear layers + bf16 embeddings, norms, output layer
    layer = BLOCK_LINEAR / 32 * 0.55 + (BLOCK - BLOCK_LINEAR / 32) * 2  # a layer as gathered: packed + bf16 norms
    assert est.details["gathered"] == pytest.approx(EMBED * 2 + layer)
    assert est.weights == pytest.approx((frozen + 4 * ADAPTERS_R16) / 8 + EMBED * 2 + layer)
    assert any("each GPU holds the whole 4-bit model (5.5 GiB) before FSDP shards it" in n for n in est.notes)
    assert not any("4-bit" in n for n in estimate(run_config(peft=True), shape, Layout("fsdp"), 8).notes)


def test_layout_of_the_configuration():
    assert Layout.of(DistributedConfig(backend="fsdp")) == Layout("fsdp")
    d = DistributedConfig(backend="fsdp", offload="optimizer_and_params", reshard_after_forward=False)
    assert Layout.of(d) == Layout("fsdp", offload="optimizer_and_params", reshard=False)
    assert Layout.of(DistributedConfig(backend="fsdp", offload="optimizer")) == Layout("fsdp")  # refused by check
    d = DistributedConfig(backend="auto", zero_stage=3, offload="optimizer")
    Layout("fsdp", reshard=False).apply(d)
    assert (d.backend, d.offload, d.reshard_after_forward) == ("fsdp", "none", False)


def test_the_rows_say_who_fully_shards_and_offloads():
    assert [n for n, r in BACKENDS.items() if r.fully_shard] == ["fsdp"]
    assert {n: r.offloads for n, r in BACKENDS.items() if r.offloads} == {
        "deepspeed": ("optimizer", "optimizer_and_params"), "fsdp": ("optimizer_and_params",)}


@pytest.mark.parametrize("offload, reshard, label", [
    ("none", True, "FSDP"), ("none", False, "FSDP (no reshard after forward)"),
    ("optimizer_and_params", True, "FSDP + full offload")])
def test_fsdp_labels(offload, reshard, label):
    d = DistributedConfig(backend="fsdp", offload=offload, reshard_after_forward=reshard)
    assert BACKENDS["fsdp"].label(d) == label == Layout.of(d).label


# ---- auto: ZeRO first at equal communication when deepspeed is installed, FSDP where only it fits or in ZeRO's
# place without deepspeed. Totals (8 GPUs): ZeRO-2 34.4 GiB, FSDP without resharding 32.6, ZeRO-3 23.3, FSDP 19.0.

def test_auto_prefers_zero_when_both_fit(shape):
    for gib, expected in ((80, Layout("deepspeed", 2)), (32, Layout("deepspeed", 3))):
        layout, reason, est = memory.choose(run_config(), shape, "", 8, gib, available=lambda p: True)
        assert layout == expected, reason
        assert estimate(run_config(), shape, Layout("fsdp"), 8).fits(gib)  # FSDP fits as well: ZeRO was preferred
        assert "FSDP fits where ZeRO" not in reason


def test_auto_takes_fsdp_where_zero3_does_not_fit_and_says_why(shape):
    layout, reason, est = memory.choose(run_config(), shape, "", 8, 24, available=lambda p: True)
    assert layout == Layout("fsdp") and est.fits(24)
    assert "8 processes: FSDP, the first of DDP, ZeRO-2, FSDP (no reshard after forward), ZeRO-3, FSDP" in reason
    assert "ZeRO-3 needs ~23 GiB" in reason
    assert "FSDP fits where ZeRO at the same communication does not: no 16-bit copy" in reason
    assert "where ZeRO holds 18 or 20" in reason


@pytest.mark.parametrize("world, gib, expected", [
    (8, 80, Layout("fsdp", reshard=False)),                 # ZeRO-2's place: 32.6 <= 72
    (8, 32, Layout("fsdp")),                                # ZeRO-3's place: 32.6 > 28.8 >= 19.0
    (2, 12, Layout("fsdp", offload="optimizer_and_params")),  # the offloads' place
])
def test_auto_without_deepspeed_takes_fsdp_in_zeros_place(shape, world, gib, expected):
    layout, reason, est = memory.choose(run_config(), shape, "", world, gib, available=lambda p: p != "deepspeed")
    assert layout == expected, reason
    assert "ZeRO" not in reason.split(" (deepspeed not installed")[0]
    assert "(deepspeed not installed: its layouts left out)" in reason and est.fits(gib)


def test_auto_without_deepspeed_through_the_plan(tmp_path, llama3_8b, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", hw=H100x8)
    d = p.cfg.distributed
    assert (d.backend, d.reshard_after_forward, d.offload) == ("fsdp", False, "none")
    assert "deepspeed not installed" in p.resolution.backend_reason
    assert check(p.cfg, p.hardware)[0] == []  # nothing refused: the package FSDP needs is torch


# ---- the plan and launch.check

def test_plan_shows_fsdps_terms(tmp_path, llama3_8b):
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", "distributed=fsdp", hw=H100x8)
    est = p.resolution.estimate
    assert est.layout == Layout("fsdp") and est.weights == 4 * P / 8 + GATHERED
    text = render_plan(p, brief=True)
    assert "~19.0 GiB per GPU (weights 5.1, gradients 3.7, optimizer 7.5, activations 1.6, overhead 1.0)" in text
    off = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", "distributed=fsdp",
               "distributed.offload=optimizer_and_params", hw=H100x8)
    assert f"{FSDP_STATES / GIB:.1f} GiB offloaded to CPU" in render_plan(off, brief=True)
    kept = plan(tmp_path, f"model.name_or_path={llama3_8b}", "training.batch_size=1", "distributed=fsdp",
                "distributed.reshard_after_forward=false", hw=H100x8)
    assert kept.resolution.estimate.layout == Layout("fsdp", reshard=False)
    assert any(n.startswith("fsdp: reshard_after_forward=false keeps every layer's") for n in kept.notes)


def test_qlora_under_fsdp_is_planned_with_quant_storage(tmp_path, llama3_8b):
    p = plan(tmp_path, f"model.name_or_path={llama3_8b}", "peft=qlora", "quantization.mode=int4",
             "distributed=fsdp", hw=H100x8)
    assert p.cfg.distributed.backend == "fsdp" and p.cfg.quantization.mode == "int4"
    assert any("int4 under FSDP shards the packed 4-bit weights" in n and "bnb_4bit_quant_storage" in n
               for n in p.notes), p.notes
    assert any("holds the whole 4-bit model" in n for n in p.resolution.estimate.notes)
    if importlib.util.find_spec("bitsandbytes") is not None:  # what launcher.models hands transformers
        import torch

        from launcher.models import quantization_config

        q = quantization_config(p.cfg, torch.bfloat16)
        assert q.bnb_4bit_quant_storage == torch.bfloat16 and q.bnb_4bit_compute_dtype == torch.bfloat16
    # int8 stays refused: FSDP flattens floating-point tensors only
    assert any("int8 weights cannot be sharded by fsdp" in s for s in problems(
        tmp_path, "peft=qlora", "quantization.mode=int8", "distributed=fsdp", hw=H100x8))


def test_optimizer_offload_is_refused_with_fsdp_and_full_offload_is_fsdps(tmp_path):
    found = problems(tmp_path, "distributed=fsdp", "distributed.offload=optimizer", hw=H100x8)
    assert any(s.startswith("distributed.offload: optimizer is not an offload fsdp has") and
               "distributed.offload=optimizer_and_params" in s and "distributed=zero3" in s for s in found), found
    p = plan(tmp_path, "distributed=fsdp", "distributed.offload=optimizer_and_params", hw=H100x8)
    assert check(p.cfg, p.hardware)[0] == []
    assert not any(n.startswith("distributed.offload:") for n in p.notes)
    # DeepSpeed keeps both forms
    assert not any(s.startswith("distributed.offload:") for s in
                   [str(x) for x in check(plan(tmp_path, "distributed=zero3", "distributed.offload=optimizer",
                                               hw=H100x8).cfg, H100x8)[0]])


def test_fsdp_on_cpu_refuses_offload_and_states_what_is_gpu_only(tmp_path):
    p = plan(tmp_path, "distributed=fsdp", "distributed.num_processes=2")
    found, notes = check(p.cfg, CPU)
    assert not any(x.key == "distributed.offload" for x in found)
    assert any(n.startswith("fsdp on CPU (gloo): bf16/fp16 mixed precision") and "trains in fp32" in n
               for n in notes), notes
    p.cfg.distributed.offload = "optimizer_and_params"
    found, _ = check(p.cfg, CPU)
    assert [x for x in found if x.key == "distributed.offload" and "there already" in x.message
            and "distributed.offload=none" in x.message]
    assert not [x for x in check(p.cfg, H100x8)[0] if x.key == "distributed.offload"]  # with GPUs: fsdp's offload


def test_reshard_after_forward_is_fsdps(tmp_path):
    p = plan(tmp_path, "distributed=zero3", "distributed.reshard_after_forward=false", hw=H100x8)
    assert any(n.startswith("distributed.reshard_after_forward: false is ignored with deepspeed") for n in p.notes)
    p = plan(tmp_path, "distributed=fsdp", "distributed.reshard_after_forward=false", hw=H100x8)
    assert not any(n.startswith("distributed.reshard_after_forward:") for n in p.notes)
