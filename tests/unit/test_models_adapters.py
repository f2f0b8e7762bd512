"""LoRA variants (peft.use_dora, use_rslora, init, modules_to_save) and NEFTune at plan time: the peft config they
build, the rules that refuse what cannot run, the notes `plan` prints, and what they add to the memory estimate.

Memory figures by hand, for Llama-3-8B's shape (tests/unit/distributed/test_memory.py has the rest):
    DoRA magnitudes = the adapted layers' output sizes: q 4096 + k 1024 + v 1024 + o 4096 + gate 14336
                      + up 14336 + down 4096 = 43,008 per block; x 32 blocks      = 1,376,256
    DoRA activations, 1 x 1024 tokens in bf16: 1024 x 1,376,256 x 2             = 2,818,572,288
                      with checkpointing one block at a time: / 32              =    88,080,384
    modules_to_save [lm_head] = 128256 x 4096                                   =   525,336,576
"""
import pytest

from launcher.config.schema import RunConfig
from launcher.config.validate import unused_keys, validate
from launcher.distributed.memory import Layout, estimate, shape_from_config
from tests.unit.helpers import LLAMA3_8B, plan, problems, valid_cfg

DORA_MAGNITUDES = 1_376_256
DORA_ACT_BF16 = 2_818_572_288
LM_HEAD = 525_336_576


def lora_cfg(**peft) -> RunConfig:
    cfg = valid_cfg()
    cfg.peft.enabled = True
    for key, value in peft.items():
        setattr(cfg.peft, key, value)
    return cfg


def messages(cfg: RunConfig) -> dict:
    return {p.key: p.message for p in validate(cfg)}


# ---- the peft config

def test_each_variant_reaches_peft_lora_config():
    from launcher.models import lora_config

    cfg = lora_cfg(use_dora=True, use_rslora=True, init="gaussian")
    c = lora_config(cfg)
    assert (c.use_dora, c.use_rslora, c.init_lora_weights, c.modules_to_save) == (True, True, "gaussian", None)
    assert lora_config(lora_cfg()).init_lora_weights is True and lora_config(lora_cfg()).use_dora is False
    assert lora_config(lora_cfg(init="orthogonal")).init_lora_weights == "orthogonal"


def test_modules_to_save_reach_peft_and_tie_only_tied_embeddings(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig

    from launcher.models import lora_config

    cfg = lora_cfg(modules_to_save=["lm_head"])
    cfg.model.name_or_path = str(tiny_model_dir)  # untied embeddings: no tying asked (peft would warn)
    c = lora_config(cfg)
    assert c.modules_to_save == ["lm_head"] and c.ensure_weight_tying is False
    assert cfg.peft.modules_to_save == ["lm_head"]  # peft edits the list it gets: ours is a copy
    LlamaConfig(tie_word_embeddings=True).save_pretrained(tmp_path)
    cfg.model.name_or_path = str(tmp_path)
    assert lora_config(cfg).ensure_weight_tying is True
    assert lora_config(lora_cfg()).ensure_weight_tying is False  # nothing trained in full: nothing to tie


@pytest.fixture(scope="module")
def tiny_model_dir():
    from launcher.embedded import build_tiny_llama

    return build_tiny_llama()


# ---- rules

def test_an_unknown_init_gets_a_did_you_mean_and_the_known_names():
    msg = messages(lora_cfg(init="gausian"))["peft.init"]
    assert "Did you mean 'gaussian'?" in msg and "Known: default, gaussian, orthogonal" in msg


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_16", "olora", "loftq", "eva"])
def test_peft_inits_that_are_not_offered_say_why(init):
    msg = messages(lora_cfg(init=init))["peft.init"]
    assert f"'{init}' is not offered: it " in msg and "Use default, gaussian, orthogonal" in msg
    if init.startswith(("pissa", "olora")):
        assert "residual" in msg and "path_initial_model_for_weight_conversion" in msg


def test_orthogonal_needs_an_even_rank():
    assert messages(lora_cfg(init="orthogonal", r=7)) == {"peft.init / peft.r": "orthogonal needs an even rank, got r=7"}
    assert messages(lora_cfg(init="orthogonal", r=8)) == {}


def test_neftune_alpha_must_be_positive_for_sft_and_is_a_note_elsewhere():
    cfg = valid_cfg()
    cfg.training.neftune_noise_alpha = 0.0
    assert "must be positive" in messages(cfg)["training.neftune_noise_alpha"]
    cfg.training.neftune_noise_alpha = 5.0
    assert messages(cfg) == {} and unused_keys(cfg) == []
    cfg.trainer.name = "dpo"
    assert "training.neftune_noise_alpha: 5.0 is not used by the dpo trainer (read by sft)" in unused_keys(cfg)


def test_variants_without_peft_are_notes():
    cfg = valid_cfg()
    cfg.peft.use_dora, cfg.peft.modules_to_save = True, ["lm_head"]
    assert messages(cfg) == {}
    assert unused_keys(cfg) == [
        "peft.use_dora: True is ignored: it shapes the LoRA adapter, and peft.enabled is false",
        "peft.modules_to_save: ['lm_head'] is ignored: it shapes the LoRA adapter, and peft.enabled is false"]


def test_plan_names_the_variants_and_refuses_a_module_the_model_lacks(tmp_path):
    p = plan(tmp_path, "peft=lora", "peft.use_dora=true", "peft.use_rslora=true", "peft.init=gaussian",
             "peft.modules_to_save=[lm_head]")
    note = next(n for n in p.notes if n.startswith("adapter: "))
    assert "DoRA" in note and "alpha/sqrt(r) = 8 instead of alpha/r = 2" in note and "init gaussian" in note
    assert "lm_head" in note and "trainable parameters" in note
    assert not any(n.startswith("adapter: ") for n in plan(tmp_path, "peft=lora").notes)  # plain LoRA: no note
    assert problems(tmp_path, "peft=lora", "peft.modules_to_save=[lm_hed]") == [
        f"peft.modules_to_save: 'lm_hed' matches no module of {p.cfg.model.name_or_path} (a name matches the "
        "modules whose dotted name ends with it, e.g. lm_head or embed_tokens); did you mean lm_head?"]


def test_the_dora_group_option_is_lora_with_dora(tmp_path):
    peft = plan(tmp_path, "peft=dora").cfg.peft
    assert peft.enabled and peft.use_dora and (peft.r, peft.target_modules) == (16, "all-linear")


def test_dora_over_int8_is_refused_on_cpu(tmp_path):
    found = problems(tmp_path, "peft=qlora", "quantization.mode=int8", "peft.use_dora=true")
    assert len(found) == 1 and found[0].startswith("peft.use_dora / quantization.mode: DoRA over int8 weights fails")


# ---- memory

@pytest.fixture(scope="module")
def shape():
    return shape_from_config(LLAMA3_8B, modules_to_save=["lm_head"])


def test_dora_adds_its_magnitudes_and_the_base_outputs_it_keeps(shape):
    for checkpointing, extra_act in ((True, DORA_ACT_BF16 // 32), (False, DORA_ACT_BF16)):
        lora, dora = lora_cfg(), lora_cfg(use_dora=True)
        for c in (lora, dora):
            c.precision.mixed_precision, c.data.block_size, c.training.batch_size = "bf16", 1024, 1
            c.training.gradient_checkpointing = checkpointing
            c.peft.modules_to_save = ["lm_head"]
        a, b = (estimate(c, shape, Layout("ddp"), 8) for c in (lora, dora))
        assert b.details["trained_params"] - a.details["trained_params"] == DORA_MAGNITUDES
        assert b.activations - a.activations == extra_act
        assert b.optimizer - a.optimizer == DORA_MAGNITUDES * 8  # AdamW's two fp32 moments


def test_modules_to_save_are_trained_in_full(shape):
    assert shape.lora_out == DORA_MAGNITUDES and shape.saved_params == LM_HEAD and shape.unmatched_modules == ()
    plain = shape_from_config(LLAMA3_8B)
    with_head, without = lora_cfg(modules_to_save=["lm_head"]), lora_cfg()
    a, b = estimate(without, plain, Layout("ddp"), 8), estimate(with_head, shape, Layout("ddp"), 8)
    assert b.details["trained_params"] - a.details["trained_params"] == LM_HEAD
    assert b.gradients - a.gradients == LM_HEAD * 4 and b.optimizer - a.optimizer == LM_HEAD * 8
    assert shape_from_config(LLAMA3_8B, modules_to_save=["lm_hed"]).unmatched_modules == ("lm_hed",)
