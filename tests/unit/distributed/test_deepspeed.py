"""deepspeed.json (launcher/distributed/deepspeed.py): explicit values only, consistent with the Trainer's own
arguments, sized for the model so that ZeRO-3 really partitions it."""
import json

from launcher.distributed.deepspeed import deepspeed_config
from launcher.distributed.launch import accelerate_config
from tests.unit.helpers import plan


def test_deepspeed_json_is_explicit_and_consistent_with_the_trainer(tmp_path):
    p = plan(tmp_path, "distributed=zero3", "distributed.num_processes=2", "training.gradient_accumulation=3")
    ds = deepspeed_config(p.cfg, p.world_size, p.resolution.hidden_size, has_gpu=False)
    assert "auto" not in json.dumps(ds)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        2, 3, 2 * 3 * 2)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["reduce_bucket_size"] == 128 * 128  # the tiny model's hidden size, so ZeRO-3 really partitions it
    assert z["stage3_param_persistence_threshold"] == 1280
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # fp32 on CPU
    acc = accelerate_config(p.cfg, p.hardware, tmp_path / "run")
    assert acc["distributed_type"] == "DEEPSPEED" and acc["num_processes"] == 2
    assert acc["deepspeed_config"]["deepspeed_config_file"] == str((tmp_path / "run" / "deepspeed.json").resolve())
    assert acc["deepspeed_config"]["zero3_init_flag"] is True


def test_offload_is_written_for_deepspeed(tmp_path):
    p = plan(tmp_path, "distributed=zero3", "distributed.offload=optimizer_and_params", "distributed.num_processes=2")
    z = deepspeed_config(p.cfg, 2, p.resolution.hidden_size, has_gpu=True)["zero_optimization"]
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "cpu", "pin_memory": True}


def test_zero2_without_a_model_shape_leaves_the_buckets_to_deepspeed(tmp_path):
    p = plan(tmp_path, "distributed=zero2", "distributed.num_processes=2")
    z = deepspeed_config(p.cfg, 2, None, has_gpu=False)["zero_optimization"]
    assert z["stage"] == 2 and "reduce_bucket_size" not in z and "stage3_gather_16bit_weights_on_model_save" not in z
    assert "offload_optimizer" not in z
