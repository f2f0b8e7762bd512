"""The memory estimate's terms for the online methods and the frozen models beside the trained one
(launcher/distributed/memory.py), by hand on Llama-3-8B's shape (tests/unit/distributed/test_memory.py):
P = 8,030,261,248; 32 blocks, kv width 1024, vocabulary 128256."""
import json

import pytest

from launcher.distributed.memory import GIB, Layout, estimate
from tests.unit.distributed.test_memory import LLAMA3_8B, P, run_config, shape  # noqa: F401 (fixture)


def online(name="grpo", beta=0.04, peft=False, **trainer):
    cfg = run_config(peft=peft, batch=2)
    cfg.trainer.name, cfg.trainer.beta = name, beta
    cfg.training.gradient_accumulation = 4
    cfg.data.max_prompt_length, cfg.data.max_completion_length = 512, 512
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def test_grpo_terms(shape):
    est = estimate(online(), shape, Layout("ddp"), 8)
    assert est.reference == 4 * P  # a full fine-tune loads its reference in fp32, as the model
    s = 1024  # prompt + completion
    assert est.kv_cache == 2 * 32 * 1024 * s * (2 * 4) * 2  # 2 x 4 completions per device per round, bf16
    assert est.rollout_logits == 2 * s * 128256 * 4
    text = est.describe()
    for label in ("reference", "KV cache", "rollout logits"):
        assert label in text
    assert "teacher" not in text
    assert est.total == pytest.approx(16 * P + est.activations + est.reference + est.kv_cache + est.rollout_logits
                                      + GIB)


def test_no_reference_without_kl_or_with_the_adapter_switched_off(shape):
    assert estimate(online(beta=0), shape, Layout("ddp"), 8).reference == 0
    assert estimate(online(beta=None), shape, Layout("ddp"), 8).reference == 0  # null resolves to 0 for grpo
    assert estimate(online(peft=True), shape, Layout("ddp"), 8).reference == 0
    with_ref = estimate(online(peft=True, model_ref="org/ref-model"), shape, Layout("ddp"), 8)
    assert with_ref.reference == 2 * P and "reference counted as the model's shape" in with_ref.describe()
    zero3 = estimate(online(), shape, Layout("deepspeed", 3), 8)
    assert zero3.reference == 2 * P / 8  # DeepSpeed casts it to bf16 and ZeRO-3 shards it


def test_steps_per_generation_sizes_the_kv_cache(shape):
    a = estimate(online(), shape, Layout("ddp"), 8)
    b = estimate(online(steps_per_generation=8), shape, Layout("ddp"), 8)
    assert b.kv_cache == 2 * a.kv_cache


def test_colocated_vllm_takes_its_share_and_the_fit_check_the_rest(shape):
    est = estimate(online(peft=True, generation="vllm", vllm_gpu_memory_utilization=0.5), shape, Layout("ddp"), 8)
    assert est.kv_cache == 0 and est.vllm_share == 0.5
    assert "vLLM (colocated) 50% of each GPU" in est.describe()
    gib = est.total / GIB
    assert est.fits(gib / 0.9 * 1.01) is False and est.fits(gib / 0.45 * 1.01) is True
    server = estimate(online(peft=True, generation="vllm", vllm_mode="server"), shape, Layout("ddp"), 8)
    assert server.vllm_share == 0 and server.kv_cache == 0


def test_distill_teacher_from_its_folder_a_run_folder_or_the_student(shape, tmp_path):
    small = {**LLAMA3_8B, "num_hidden_layers": 2}
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(small))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "teacher")}))
    for teacher in (tmp_path / "teacher", tmp_path / "run"):
        est = estimate(online("distill", beta=None, peft=True, teacher=str(teacher)), shape, Layout("ddp"), 8)
        assert est.teacher == pytest.approx(2 * (P - 30 * 218_112_000))  # bf16, two blocks of 32
        assert "teacher" in est.describe() and "stand-in" not in est.describe()
    est = estimate(online("distill", beta=None, peft=True, teacher="org/not-cached"), shape, Layout("ddp"), 8)
    assert est.teacher == 2 * P and "teacher counted as the student's shape" in est.describe()
    assert est.rollout_logits == 2 * 2 * 1024 * 128256 * 4  # the teacher's log-softmax too
