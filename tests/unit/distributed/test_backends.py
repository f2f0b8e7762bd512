"""The backend table (launcher/distributed/backends.py): one row per value of distributed.backend, and the rows
say everything that differs between backends (the rest of the launcher reads them instead of names)."""
import typing

import pytest

from launcher.config.schema import DistributedConfig, RunConfig
from launcher.distributed.backends import BACKENDS


def test_one_row_per_backend_choice():
    choices = typing.get_args(typing.get_type_hints(DistributedConfig)["backend"])
    assert set(BACKENDS) == set(choices) - {"auto"}
    assert all(name == row.name for name, row in BACKENDS.items())


def test_what_the_rows_say():
    assert {n: r.accelerate_type for n, r in BACKENDS.items()} == {
        "none": "NO", "ddp": "MULTI_GPU", "deepspeed": "DEEPSPEED", "fsdp": "FSDP"}
    assert [n for n, r in BACKENDS.items() if r.zero] == ["deepspeed"]
    assert sorted(n for n, r in BACKENDS.items() if r.fixed_batch) == ["deepspeed", "fsdp"]
    assert [n for n, r in BACKENDS.items() if r.flattens_params] == ["fsdp"]
    assert {n: r.package for n, r in BACKENDS.items() if r.package} == {"deepspeed": "deepspeed"}


@pytest.mark.parametrize("stage,offload,label,shards", [
    (2, "none", "ZeRO-2", False), (3, "none", "ZeRO-3", True), (3, "optimizer", "ZeRO-3 + optimizer offload", True),
    (3, "optimizer_and_params", "ZeRO-3 + full offload", True)])
def test_deepspeed_labels_and_weight_sharding(stage, offload, label, shards):
    d = DistributedConfig("deepspeed", stage, offload)
    assert BACKENDS["deepspeed"].label(d) == label
    assert BACKENDS["deepspeed"].shards_weights(d) is shards
    assert BACKENDS["fsdp"].shards_weights(d) is True and BACKENDS["ddp"].shards_weights(d) is False


def test_only_deepspeed_writes_files(tmp_path):
    cfg = RunConfig()
    cfg.precision.mixed_precision = "fp32"
    for name, row in BACKENDS.items():
        files = row.files(cfg, 2, 128, False)
        assert list(files) == (["deepspeed.json"] if name == "deepspeed" else []), name


def test_trainer_kwargs_place_cpu_processes(tmp_path):
    assert BACKENDS["ddp"].trainer_kwargs(tmp_path, True) == {"use_cpu": True, "ddp_backend": "gloo"}
    assert BACKENDS["ddp"].trainer_kwargs(tmp_path, False) == {}
    ds = BACKENDS["deepspeed"].trainer_kwargs(tmp_path, True)
    assert ds == {"deepspeed": str(tmp_path / "deepspeed.json"), "accelerator_config": {"use_configured_state": True}}
    assert BACKENDS["deepspeed"].trainer_kwargs(tmp_path, False) == {"deepspeed": str(tmp_path / "deepspeed.json")}
    assert BACKENDS["none"].trainer_kwargs(tmp_path, True) == {} and BACKENDS["none"].prepare_state is None


def test_fsdp_settings_follow_the_configuration(tmp_path, monkeypatch):
    """One source: the fsdp_config of accelerate_config.yaml, handed to the Trainer under torchrun (no accelerate
    environment) and left to accelerate's environment under accelerate launch."""
    import yaml

    from launcher.distributed import fsdp

    cfg = RunConfig()
    settings = fsdp.settings(cfg)
    assert settings["fsdp_version"] == 2 and settings["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in settings  # accelerate reads the model's _no_split_modules
    assert settings["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert (settings["fsdp_reshard_after_forward"], settings["fsdp_offload_params"]) == (True, False)
    cfg.distributed.reshard_after_forward, cfg.distributed.offload = False, "optimizer_and_params"
    assert BACKENDS["fsdp"].accelerate_extras(cfg, tmp_path)["fsdp_config"]["fsdp_reshard_after_forward"] is False
    assert fsdp.settings(cfg)["fsdp_offload_params"] is True

    (tmp_path / "accelerate_config.yaml").write_text(yaml.safe_dump(BACKENDS["fsdp"].accelerate_extras(cfg, tmp_path)))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    kwargs = BACKENDS["fsdp"].trainer_kwargs(tmp_path, True)
    assert kwargs["fsdp"] is True and kwargs["accelerator_config"] == {"use_configured_state": True}
    assert kwargs["fsdp_config"]["version"] == 2 and kwargs["fsdp_config"]["cpu_offload"] is True
    assert kwargs["fsdp_config"]["reshard_after_forward"] is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch: its environment carries them
    assert BACKENDS["fsdp"].trainer_kwargs(tmp_path, False) == {}
    assert BACKENDS["fsdp"].prepare_state is fsdp.prepare_state


def test_fsdp_checkpoint_world_size(tmp_path):
    from launcher.distributed.fsdp import checkpoint_world_size

    assert checkpoint_world_size(tmp_path) is None  # no FSDP shards: not an FSDP checkpoint
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    for rank in range(4):
        (tmp_path / "pytorch_model_fsdp_0" / f"__{rank}_0.distcp").write_bytes(b"")
    assert checkpoint_world_size(tmp_path) == 4
    for rank in range(2):
        (tmp_path / f"rng_state_{rank}.pth").write_bytes(b"")
    assert checkpoint_world_size(tmp_path) == 2  # the Trainer's per-rank states say it first
