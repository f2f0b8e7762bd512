"""The preference losses: trainer.loss_type (dpo) takes trl's DPO loss names, checked at plan time with a
suggestion, and reaches trl's DPOConfig with its weights; cpo and simpo build trl's CPOConfig with their own loss
and SFT weight. The configs are built as the trainers build them, without a model."""
import inspect

import pytest

from launcher.config.errors import ConfigError
from launcher.config.library_names import _DPO_LOSSES, dpo_loss_types
from launcher.config.validate import validate
from launcher.hardware import Hardware
from launcher.planning import make_plan
from tests.unit.helpers import valid_cfg


def dpo_cfg(**trainer):
    cfg = valid_cfg()
    cfg.trainer.name = "dpo"
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def problems(cfg) -> dict:
    return {p.key: p.message for p in validate(cfg)}


# ---- the names come from trl

def test_the_loss_names_are_trls_and_each_is_implemented():
    import dataclasses

    from trl import DPOConfig, DPOTrainer

    names = dpo_loss_types()  # read from trl's source, without importing trl
    assert names == list(_DPO_LOSSES)  # trl 1.16's help text parses to its documented list
    help_text = next(f.metadata["help"] for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    assert all(f"`'{name}'`" in help_text for name in names)
    source = inspect.getsource(DPOTrainer)
    for name in names:  # every name trl documents is a branch of its loss
        assert f'loss_type == "{name}"' in source, name


# ---- validation (plan time)

def test_a_misspelled_loss_is_refused_with_a_suggestion():
    found = problems(dpo_cfg(loss_type="sigmod"))
    assert list(found) == ["trainer.loss_type"]
    assert "unknown DPO loss 'sigmod'. Did you mean 'sigmoid'?" in found["trainer.loss_type"]
    assert "bco_pair" in found["trainer.loss_type"]  # the known names are listed


def test_each_name_of_a_list_is_checked():
    found = problems(dpo_cfg(loss_type=["sigmoid", "bco_piar", "sft"]))
    assert "Did you mean 'bco_pair'?" in found["trainer.loss_type"]


@pytest.mark.parametrize("losses", ["ipo", "apo_zero", ["sigmoid", "bco_pair", "sft"]])
def test_known_losses_pass(losses):
    assert validate(dpo_cfg(loss_type=losses)) == []


def test_weights_must_match_the_losses():
    found = problems(dpo_cfg(loss_type=["sigmoid", "sft"], loss_weights=[1.0]))
    assert "1 weight(s) for 2 loss(es)" in found["trainer.loss_weights / trainer.loss_type"]
    assert validate(dpo_cfg(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])) == []


def test_an_empty_list_is_refused():
    assert "trainer.loss_type" in problems(dpo_cfg(loss_type=[]))


def test_exo_pair_needs_label_smoothing():
    assert "trainer.label_smoothing / trainer.loss_type" in problems(dpo_cfg(loss_type="exo_pair"))
    assert validate(dpo_cfg(loss_type="exo_pair", label_smoothing=1e-3)) == []


@pytest.mark.parametrize("trainer", ["cpo", "simpo"])
def test_cpo_and_simpo_settings_are_checked(trainer):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    cfg.trainer.beta, cfg.trainer.cpo_alpha, cfg.trainer.label_smoothing = 0.0, -1.0, 0.5
    found = problems(cfg)
    assert {"trainer.beta", "trainer.cpo_alpha", "trainer.label_smoothing"} <= set(found)
    cfg.trainer.loss_type = "not-read-by-cpo"  # dpo's key: a note, never a problem
    assert "trainer.loss_type" not in problems(cfg)


def test_a_misspelled_loss_stops_the_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        make_plan(None, ["recipe=dpo/preference_tiny", "trainer.loss_type=[sigmoid,hnige]"], Hardware())
    assert [p.key for p in err.value.problems] == ["trainer.loss_type"]
    assert "Did you mean 'hinge'?" in err.value.report()


# ---- the configs handed to trl

def plan_of(tmp_path, monkeypatch, *overrides):
    monkeypatch.chdir(tmp_path)
    return make_plan(None, [*overrides, f"project_name={tmp_path / 'run'}"], Hardware()).cfg


def test_dpo_losses_and_weights_reach_dpoconfig(tmp_path, monkeypatch):
    from launcher.trainers.dpo import dpo_config

    cfg = plan_of(tmp_path, monkeypatch, "recipe=dpo/preference_tiny", "trainer.loss_type=[sigmoid,bco_pair,sft]",
                  "trainer.loss_weights=[0.8,0.2,1.0]", "trainer.beta=0.05", "trainer.label_smoothing=0.1")
    args = dpo_config(cfg, tmp_path / "run", train_rows=20, has_eval=False)
    assert type(args).__name__ == "DPOConfig"
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"] and args.loss_weights == [0.8, 0.2, 1.0]
    assert args.beta == 0.05 and args.label_smoothing == 0.1


def test_dpo_default_is_trls_sigmoid(tmp_path, monkeypatch):
    from launcher.trainers.dpo import dpo_config

    cfg = plan_of(tmp_path, monkeypatch, "recipe=dpo/preference_tiny", "trainer.loss_type=ipo")
    assert dpo_config(cfg, tmp_path / "run", 20, False).loss_type == ["ipo"]
    cfg.trainer.loss_type = "sigmoid"
    args = dpo_config(cfg, tmp_path / "run", 20, False)
    assert args.loss_type == ["sigmoid"] and args.loss_weights is None


@pytest.mark.parametrize("recipe,loss,alpha", [("cpo/preference_tiny", "sigmoid", 1.0),
                                               ("simpo/preference_chat_tiny", "simpo", 0.0)])
def test_cpo_and_simpo_build_their_cpoconfig(recipe, loss, alpha, tmp_path, monkeypatch):
    from launcher.trainers.cpo import cpo_config

    cfg = plan_of(tmp_path, monkeypatch, f"recipe={recipe}", "trainer.cpo_alpha=null", "trainer.simpo_gamma=0.7")
    args = cpo_config(cfg, tmp_path / "run", 20, False)
    assert type(args).__name__ == "CPOConfig"
    assert (args.loss_type, args.cpo_alpha, args.beta) == (loss, alpha, cfg.trainer.beta)
    assert args.simpo_gamma == 0.7 and args.remove_unused_columns is False
    cfg.trainer.cpo_alpha = 0.3  # SimPO with an SFT term is CPO-SimPO
    assert cpo_config(cfg, tmp_path / "run", 20, False).cpo_alpha == 0.3


def test_the_documented_names_are_trls():
    from launcher.config.parse import field_docs
    from launcher.config.schema import TrainerConfig

    doc = field_docs(TrainerConfig)["loss_type"]
    assert all(name in doc for name in dpo_loss_types())
