"""PyTorch FSDP2 (`fully_shard`) through accelerate: the settings built from the configuration, and what a run
needs to be sharded for real on a machine without CUDA.

One source of settings. `settings(cfg)` is written into the run folder's `accelerate_config.yaml` (`fsdp_config`),
which `accelerate launch` turns into its FSDP_* environment; under torchrun nothing sets that environment, so the
worker hands the same file's settings to the Trainer (`TrainingArguments(fsdp=True, fsdp_config=...)`), which
builds the same accelerate plugin from them. A user's own `accelerate launch` with an FSDP config keeps its own
settings: the environment is then already there and nothing is passed over it.

- Wrapping: one FSDP unit per decoder layer (TRANSFORMER_BASED_WRAP with no class named: accelerate takes the
  model's `_no_split_modules`, LlamaDecoderLayer for a Llama, and the PeftModel forwards the attribute), plus
  accelerate's own units for the embeddings and the final norm + head.
- `distributed.reshard_after_forward`: FSDP2's reshard_after_forward (true: ZeRO-3's memory; false: ZeRO-2's).
- `distributed.offload=optimizer_and_params`: FSDP2's CPUOffloadPolicy (`fsdp_offload_params`); FSDP has no
  optimizer-only offload (launch.check refuses `optimizer` with fsdp).
- Mixed precision: nothing is set here. accelerate builds FSDP2's MixedPrecisionPolicy from its own
  `mixed_precision` (accelerate_config.yaml, from precision.mixed_precision) on GPUs; on CPU the run is fp32.
- Checkpoints: SHARDED_STATE_DICT. Each rank writes its own shard of the model and of the optimizer through
  torch.distributed.checkpoint (DCP) into `pytorch_model_fsdp_0/` and `optimizer_0/` of the checkpoint, inside
  the staging folder launcher.checkpointing publishes atomically. The final model is gathered into one
  `model.safetensors` / `adapter_model.safetensors` (launcher.trainers.common.save_final).

Resharding on resume: DCP records every shard with its offsets in the global tensor and loads by those offsets
(its load planner reads, for each rank's new shard, the pieces of the saved shards it covers), so by design the
model and optimizer DCP folders load under another number of processes (not measured here: the tests resume with
the same 2). The Trainer's checkpoint around them does not: it holds one `rng_state_R.pth` per rank (under
another world size it warns and the ranks draw other random numbers) and a data position counted in batches of
the old global size. So a resume is exact only with the world size that wrote the checkpoint:
`checkpoint_world_size` reads it back, for the planner to refuse (or state) a mismatch.

On CPU (FACTS.md: Trainer `fsdp=` with FSDP2 silently trained plain DDP, `accelerate launch --use_fsdp` trained
two unsynchronised copies): accelerate 1.15/1.16 files a gloo world without an accelerator as DistributedType.NO
(MULTI_CPU only with cpu=True), and `AcceleratorState.__init__` (accelerate/state.py) enables FSDP only for the
MULTI_<device> types (`elif self.distributed_type in [DistributedType.MULTI_GPU, ...]`: the branch that sets
`distributed_type = FSDP` and `fsdp_plugin`). The plugin is then dropped without a word: the Trainer sees no
`fsdp_plugin` (measured without prepare_state's MULTI_GPU line, through `tunelaunch train`: exit 0, accelerate's
type NO on both ranks, no wrapper, whole parameters on each, different final parameters).
`prepare_state` makes the process state first (gloo, every rank counted) and files it under MULTI_GPU, the type
whose branch turns it into FSDP; the device stays the CPU (set from that state, `PartialState.set_device`), and
the Trainer is told to reuse that state (`use_configured_state`), as for DeepSpeed on CPU. The minimal patch
upstream: add DistributedType.MULTI_CPU to that list in AcceleratorState.__init__ (a CPU world started with
cpu=True / the Trainer's use_cpu is MULTI_CPU over gloo, and fully_shard runs there: tests/distributed/test_fsdp.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from launcher.config.schema import RunConfig

ACCELERATE_FILE = "accelerate_config.yaml"  # launch.ACCELERATE_FILE (launch imports the backends: not imported here)
MODEL_DIR = "pytorch_model_fsdp_0"
"""The DCP folder of the model's shards in a checkpoint (accelerate's save_fsdp_model, model index 0)."""
RNG_STATE_RE = re.compile(r"^rng_state_(\d+)\.pth$")


def settings(cfg: RunConfig) -> dict:
    """accelerate's `fsdp_config` for the run folder's accelerate_config.yaml (the keys `accelerate config`
    writes)."""
    d = cfg.distributed
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the class from the model's _no_split_modules
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # Rank 0's weights are broadcast into every rank's shards when the model is sharded: every rank starts
        # from the same weights, a LoRA adapter's random initialisation included.
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_reshard_after_forward": bool(d.reshard_after_forward),
        "fsdp_offload_params": d.offload == "optimizer_and_params",
        # The Trainer's gradient checkpointing (training.gradient_checkpointing) is used, not FSDP's own: both
        # at once are refused by the Trainer.
        "fsdp_activation_checkpointing": False,
    }


def accelerate_extras(cfg: RunConfig, run_dir: Path) -> dict:
    return {"fsdp_config": settings(cfg)}


def trainer_fsdp_config(accelerate_settings: dict) -> dict:
    """accelerate's fsdp_config keys as TrainingArguments' `fsdp_config` reads them (it strips the `fsdp_`
    prefix itself; parameter offload is its `cpu_offload`)."""
    out = {k.removeprefix("fsdp_"): v for k, v in accelerate_settings.items() if k != "fsdp_offload_params"}
    out["cpu_offload"] = bool(accelerate_settings.get("fsdp_offload_params", False))
    return out


def _read_settings(run_dir: Path) -> dict:
    import yaml

    text = (Path(run_dir) / ACCELERATE_FILE).read_text()
    return (yaml.safe_load(text) or {}).get("fsdp_config") or {}


def trainer_kwargs(run_dir: Path, cpu_processes: bool) -> dict:
    """TrainingArguments for FSDP. Under accelerate launch (ours or the user's) the FSDP settings are already in
    the environment (ACCELERATE_USE_FSDP, FSDP_*) and the Trainer's accelerator reads them there; under torchrun
    they come from the run folder's accelerate_config.yaml. Several CPU processes reuse the state prepare_state
    made."""
    kwargs: dict = {}
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        kwargs.update(fsdp=True, fsdp_config=trainer_fsdp_config(_read_settings(run_dir)))
    if cpu_processes:
        kwargs["accelerator_config"] = {"use_configured_state": True}
    return kwargs


def prepare_state() -> None:
    """Several processes without CUDA: the gloo process state, filed where accelerate's FSDP branch takes it
    (see the module's docstring)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(backend="gloo")  # initialises the process group: every rank counted
    if state.distributed_type == DistributedType.NO:
        state.distributed_type = DistributedType.MULTI_GPU  # on the CPU device: only FSDP's branch reads it


# ---- checkpoints

def checkpoint_world_size(checkpoint_dir: Path | str) -> int | None:
    """The number of processes that wrote an FSDP checkpoint (its per-rank RNG states, else its per-rank DCP
    shard files), or None where the folder holds no FSDP model shards. A resume is exact only under the same
    world size (see the module's docstring): the planner compares it with the planned one."""
    folder = Path(checkpoint_dir)
    model = folder / MODEL_DIR
    if not model.is_dir():
        return None
    ranks = {int(m.group(1)) for p in folder.iterdir() if (m := RNG_STATE_RE.match(p.name))}
    if ranks:
        return max(ranks) + 1
    shards = list(model.glob("__*_*.distcp"))  # DCP names each rank's file __<rank>_<n>.distcp
    if shards:
        return len({p.name.split("_")[2] for p in shards})
    return 1 if (folder / "rng_state.pth").is_file() else None

