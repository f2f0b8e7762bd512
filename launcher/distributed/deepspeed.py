"""The DeepSpeed config file written into the run folder (`<run>/deepspeed.json`).

Every value is explicit: no "auto". The Trainer fills "auto" from its own arguments, but trl trainers that build
their own accelerator or a second engine (a DPO reference model) meet the raw file, and an "auto" batch size
there fails late. Explicit values are also what the Trainer checks: train_micro_batch_size_per_gpu,
gradient_accumulation_steps, train_batch_size (= micro x accumulation x world size), gradient_clipping and
bf16/fp16 must equal its own arguments or it stops with a list of the mismatches before training.

The same file is named by `accelerate_config.yaml` (deepspeed_config_file) and passed to the Trainer
(`deepspeed=`), so accelerate launch, torchrun and the Trainer read one source.
"""
from __future__ import annotations

from launcher.config.schema import RunConfig

FILE_NAME = "deepspeed.json"


def deepspeed_config(cfg: RunConfig, world_size: int, hidden_size: int | None, has_gpu: bool) -> dict:
    """cfg is resolved (precision concrete, backend deepspeed); hidden_size sizes the communication buckets."""
    t, d = cfg.training, cfg.distributed
    zero: dict = {"stage": d.zero_stage, "overlap_comm": has_gpu, "contiguous_gradients": True}
    if hidden_size:
        # The sizes accelerate/transformers would derive for "auto", written out. Without them ZeRO-3 keeps every
        # parameter below 1e5 elements whole on each rank (DeepSpeed's default threshold): small models would
        # not be partitioned at all.
        zero["reduce_bucket_size"] = hidden_size * hidden_size
        if d.zero_stage == 3:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    if d.zero_stage == 3:
        # save_model() then writes one consolidated, reloadable model instead of per-rank shards only.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if d.offload in ("optimizer", "optimizer_and_params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": has_gpu}
    if d.offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": has_gpu}
    mp = cfg.precision.mixed_precision
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "train_batch_size": t.batch_size * t.gradient_accumulation * world_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": mp == "bf16"},
        "fp16": {"enabled": mp == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The optimizer and scheduler are the Trainer's (training.optimizer, e.g. torch AdamW): none here.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
