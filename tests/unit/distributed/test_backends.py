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
    assert [n for n, r in BACKENDS.items() if r.needs_gpu] == ["fsdp"]
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
