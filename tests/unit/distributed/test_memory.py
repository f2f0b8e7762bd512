"""The per-GPU memory estimate (launcher/distributed/memory.py) against figures computed by hand.

The model is Llama-3-8B's shape (hidden 4096, 32 blocks, 32 heads / 8 kv heads of 128, MLP 14336, vocabulary
128256, untied embeddings), counted on the meta device from its config alone. By hand:

    embedding = output layer = 128256 x 4096                               =   525,336,576
    one block: q 4096x4096 + k 4096x1024 + v 4096x1024 + o 4096x4096       =    41,943,040
               gate/up/down 3 x 4096 x 14336                               =   176,160,768
               two RMSNorms 2 x 4096                                       =         8,192
                                                                            =   218,112,000
    P = 32 x 218,112,000 + 2 x 525,336,576 + final norm 4096               = 8,030,261,248
    Linear layers of the blocks (what bitsandbytes quantizes): 32 x 218,103,808 = 6,979,321,856
    LoRA all-linear, sum of (in + out) per block: q 8192 + k 5120 + v 5120 + o 8192 + 3 x 18432 = 81,920;
      x 32 = 2,621,440; r = 16 -> 41,943,040 adapter parameters

Activations for 1 sequence of 1024 tokens in bf16 (2 bytes) with gradient checkpointing:
    block inputs  32 x 1024 x 4096 x 2                                     =   268,435,456
    one block recomputed  1024 x (8 x 4096 + 2 x 1024 + 4 x 14336) x 2     =   188,743,680
    logits  1024 x 128256 x (2 + 8)                                        = 1,313,341,440
                                                                            = 1,770,520,576
"""
import pytest

from launcher.config.schema import RunConfig
from launcher.distributed import memory
from launcher.distributed.memory import GIB, Layout, estimate, shape_from_config

P = 8_030_261_248
EMBED = 525_336_576
BLOCK = 218_112_000
BLOCK_LINEAR = 6_979_321_856
ADAPTERS_R16 = 41_943_040
ACT_CKPT_BF16 = 1_770_520_576
OVERHEAD = GIB

LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "tie_word_embeddings": False, "rope_theta": 500000.0,
}


@pytest.fixture(scope="module")
def shape():
    return shape_from_config(LLAMA3_8B)


def run_config(peft=False, quant="none", precision="bf16", optimizer="adamw_torch", batch=1, block=1024,
               checkpointing=True) -> RunConfig:
    cfg = RunConfig()
    cfg.precision.mixed_precision = precision
    cfg.training.optimizer = optimizer
    cfg.training.batch_size = batch
    cfg.data.block_size = block
    cfg.training.gradient_checkpointing = checkpointing
    cfg.peft.enabled = peft
    cfg.peft.r = 16
    cfg.quantization.mode = quant
    return cfg


def test_llama3_8b_is_counted_exactly_from_its_config(shape):
    assert shape.params == P
    assert shape.block_linear_params == BLOCK_LINEAR
    assert 16 * shape.lora_in_out == ADAPTERS_R16
    assert shape.block_params == BLOCK
    assert shape.largest_module_params == EMBED
    assert (shape.hidden, shape.layers, shape.intermediate, shape.kv_hidden, shape.vocab) == (
        4096, 32, 14336, 1024, 128256)


def test_lora_target_modules_narrow_the_adapter_count():
    shape = shape_from_config(LLAMA3_8B, target_modules=["q_proj", "v_proj"])
    assert 16 * shape.lora_in_out == 16 * 32 * (8192 + 5120)  # 6,815,744


def test_full_finetune_ddp_is_16_bytes_per_parameter(shape):
    est = estimate(run_config(), shape, Layout("ddp"), 8)
    assert est.weights == 4 * P        # fp32 master weights, bf16 through autocast
    assert est.gradients == 4 * P
    assert est.optimizer == 8 * P      # AdamW's two fp32 moments
    assert est.activations == ACT_CKPT_BF16
    assert est.total == 128_484_179_968 + ACT_CKPT_BF16 + OVERHEAD  # ~122.3 GiB
    assert est.fits(80) is False
    assert est.fits(None) is None


def test_full_finetune_zero2_on_8_gpus(shape):
    est = estimate(run_config(), shape, Layout("deepspeed", 2), 8)
    assert est.weights == 2 * P                   # bf16 weights, whole on every GPU: 16,060,522,496
    assert est.gradients == 2 * P / 8 + 4 * P / 8  # bf16 partition + its fp32 copy: 6,022,695,936
    assert est.optimizer == 12 * P / 8             # fp32 master + two moments, partitioned: 12,045,391,872
    assert est.total == pytest.approx(34_128_610_304 + ACT_CKPT_BF16 + OVERHEAD)  # ~34.4 GiB
    assert est.fits(80) is True and est.fits(32) is False


def test_full_finetune_zero3_on_8_gpus(shape):
    est = estimate(run_config(), shape, Layout("deepspeed", 3), 8)
    gathered = 2 * EMBED * 2  # two of the largest gathered units (the embedding) in bf16: 2,101,346,304
    assert est.weights == 2 * P / 8 + gathered
    assert est.gradients == 6 * P / 8
    assert est.optimizer == 12 * P / 8
    assert est.total == pytest.approx(22_176_999_424 + ACT_CKPT_BF16 + OVERHEAD)  # ~23.3 GiB
    assert est.fits(32) is True and est.fits(24) is False


def test_zero1_shards_only_the_optimizer(shape):
    est = estimate(run_config(), shape, Layout("deepspeed", 1), 8)
    assert (est.weights, est.gradients, est.optimizer) == (2 * P, 2 * P + 4 * P / 8, 12 * P / 8)


def test_offload(shape):
    opt = estimate(run_config(), shape, Layout("deepspeed", 3, "optimizer"), 8)
    assert opt.weights == 2 * P / 8 + 4 * EMBED
    assert opt.gradients == 0 and opt.optimizer == 0  # stepped on the CPU
    assert opt.cpu_offloaded == 18 * P / 8
    assert opt.total == pytest.approx(4_108_911_616 + ACT_CKPT_BF16 + OVERHEAD)  # ~6.5 GiB

    full = estimate(run_config(), shape, Layout("deepspeed", 3, "optimizer_and_params"), 8)
    assert full.weights == 4 * EMBED  # only what is gathered at a time
    assert full.gradients == 0 and full.optimizer == 0
    assert full.cpu_offloaded == 20 * P / 8
    assert full.total == pytest.approx(2_101_346_304 + ACT_CKPT_BF16 + OVERHEAD)  # ~4.6 GiB

    zero2 = estimate(run_config(), shape, Layout("deepspeed", 2, "optimizer"), 8)
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == (2 * P, 0, 0)


@pytest.mark.parametrize("world", [1, 2, 8, 64])
def test_model_states_equal_deepspeeds_own_estimator(shape, world):
    """DeepSpeed ships its own arithmetic for AdamW in 16-bit: an independent check of the ZeRO terms. One
    stated difference: ZeRO-3 without offload, where DeepSpeed counts 18 bytes per parameter over N and we 20
    (bf16 weights 2 + bf16 gradients 2 + their fp32 copy 4 + fp32 master 4 + Adam 8)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    def states(layout):
        est = estimate(run_config(), shape, layout, world)
        return est.weights + est.gradients + est.optimizer

    for offload in (False, True):
        _, gpu = estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=world, cpu_offload=offload)
        assert states(Layout("deepspeed", 2, "optimizer" if offload else "none")) == pytest.approx(gpu, abs=8)
    for offload, params in ((False, False), (True, False), (True, True)):
        _, gpu, _ = estimate_zero3_model_states_mem_needs(P, EMBED, num_gpus_per_node=world, cpu_offload=offload,
                                                        cpu_offload_params=params)
        layout = Layout("deepspeed", 3, {(False, False): "none", (True, False): "optimizer",
                                         (True, True): "optimizer_and_params"}[(offload, params)])
        difference = 0 if offload else 2 * P / world
        assert states(layout) == pytest.approx(gpu + difference, abs=8)


def test_lora_freezes_the_base(shape):
    est = estimate(run_config(peft=True), shape, Layout("ddp"), 8)
    assert est.weights == 2 * P + 4 * ADAPTERS_R16  # bf16 base + fp32 adapters
    assert est.gradients == 4 * ADAPTERS_R16
    assert est.optimizer == 8 * ADAPTERS_R16
    assert est.total == pytest.approx(16_060_522_496 + 671_088_640 + ACT_CKPT_BF16 + OVERHEAD)  # ~18.2 GiB


def test_qlora_int4_and_int8(shape):
    int4 = estimate(run_config(peft=True, quant="int4"), shape, Layout("none"), 1)
    # NF4 with double-quantized scales on the block Linear layers, bf16 for embeddings, norms, output layer:
    # 6,979,321,856 x 0.55 + 1,050,939,392 x 2 = 5,940,505,804.8
    assert int4.weights == pytest.approx(5_940_505_804.8 + 4 * ADAPTERS_R16)
    assert int4.total == pytest.approx(5_940_505_804.8 + 16 * ADAPTERS_R16 + ACT_CKPT_BF16 + OVERHEAD)  # ~8.8 GiB
    int8 = estimate(run_config(peft=True, quant="int8"), shape, Layout("none"), 1)
    assert int8.weights == pytest.approx(6_979_321_856 + 2 * 1_050_939_392 + 4 * ADAPTERS_R16)


def test_zero3_shards_the_frozen_base_and_zero2_does_not(shape):
    z2 = estimate(run_config(peft=True), shape, Layout("deepspeed", 2), 8)
    z3 = estimate(run_config(peft=True), shape, Layout("deepspeed", 3), 8)
    assert z2.weights == 2 * P + 2 * ADAPTERS_R16  # DeepSpeed holds the adapters in bf16 too
    assert z3.weights == pytest.approx((2 * P + 2 * ADAPTERS_R16) / 8 + 4 * EMBED)


def test_optimizer_state_bytes(shape):
    for name, k in (("adamw_torch", 8), ("paged_adamw_8bit", 2), ("adafactor", 0), ("sgd", 0)):
        est = estimate(run_config(optimizer=name), shape, Layout("ddp"), 2)
        assert est.optimizer == k * P, name


def test_activations_without_checkpointing_in_fp32(shape):
    est = estimate(run_config(precision="fp32", batch=2, block=512, checkpointing=False), shape, Layout("none"), 1)
    # 32 blocks x 2 x 512 x 92,160 x 4 + logits 2 x 512 x 128256 x (4 + 8)
    assert est.activations == 32 * 377_487_360 + 1_576_009_728
    assert (est.weights, est.gradients, est.optimizer) == (4 * P, 4 * P, 8 * P)


# ---- auto's choice: the first of DDP, ZeRO-2, FSDP without resharding, ZeRO-3, FSDP, ZeRO-3 + optimizer offload,
# + parameter offload, FSDP + offload that fits in 90% of the GPU. The per-GPU totals above (8 GPUs): DDP 122.3 GiB,
# ZeRO-2 34.4, ZeRO-3 23.3, ZeRO-3 + optimizer offload 6.5, + parameter offload 4.6; FSDP's
# (tests/unit/distributed/test_memory_fsdp.py): no resharding 32.6, FSDP 19.0. On 2 GPUs: ZeRO-3 79.4,
# + optimizer offload 12.1. At 24 GiB FSDP fits without offload where ZeRO-3 does not: it replaced ZeRO-3 +
# optimizer offload, auto's choice there before FSDP was a candidate.

@pytest.mark.parametrize("world, gib, expected", [
    (8, 80, Layout("deepspeed", 2)),                           # 34.4 <= 72
    (8, 32, Layout("deepspeed", 3)),                           # 34.4 > 28.8 >= 23.3
    (8, 24, Layout("fsdp")),                                   # ZeRO-3 23.3 > 21.6 >= FSDP 19.0
    (2, 12, Layout("deepspeed", 3, "optimizer_and_params")),   # 12.1 > 10.8 >= 4.6
])
def test_auto_picks_the_first_layout_that_fits(shape, world, gib, expected):
    layout, reason, est = memory.choose(run_config(), shape, "", world, gib)
    assert layout == expected, reason
    assert est.fits(gib)
    assert expected.label in reason and f"fits {gib:g} GiB" in reason
    assert "DDP needs ~122 GiB" in reason  # says why DDP was passed over


def test_auto_with_nothing_that_fits_says_so(shape):
    layout, reason, est = memory.choose(run_config(), shape, "", 2, 4)
    # the smallest estimate: FSDP + offload holds its gathered layers only (4.0 GiB against ZeRO-3's 4.6 with
    # full offload, which was returned as the last one tried before FSDP was a candidate)
    assert layout == Layout("fsdp", offload="optimizer_and_params")
    assert "nothing fits 4 GiB" in reason and not est.fits(4)
    assert f"{layout.label} is the closest" in reason and "ZeRO-3 + full offload needs ~5 GiB" in reason


def test_auto_small_model_is_ddp_and_one_process_is_none(shape):
    tiny = shape_from_config({"model_type": "llama", "hidden_size": 128, "intermediate_size": 384,
                              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "vocab_size": 1024, "max_position_embeddings": 512})
    assert memory.choose(run_config(), tiny, "", 8, 80)[0] == Layout("ddp")
    assert memory.choose(run_config(), shape, "", 1, 80)[0] == Layout("none")
    layout, reason, est = memory.choose(run_config(), None, "no config.json", 8, 80)
    assert layout == Layout("ddp") and est is None and "no config.json" in reason
