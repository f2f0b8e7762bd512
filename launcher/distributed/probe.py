"""A test-only look inside the worker processes of a run (nothing happens unless the variables below are set).

A distributed run that "works" can still be two unsynchronised copies training on the same data (FACTS.md:
accelerate's --cpu, FSDP on CPU, and the Trainer's own world size on a machine without GPUs). So the tests of
`launcher.distributed` ask every rank what it saw, from inside:

- TUNELAUNCH_PROBE_DIR=DIR: every rank writes DIR/rank<R>.json at the end of training: the world size as torch
  and as the Trainer see it, the class wrapping the trained model, the parameters this rank holds against the
  full count (ZeRO-3 partitions them), the optimizer-state elements it holds (ZeRO-1/2/3 partition them), a hash
  of each of its first micro-batches, and a hash of the final parameters (gathered first under ZeRO-3).
  Ranks other than 0 also list every file they created, renamed or removed inside the run folder: a Python
  audit hook, plus the two writers that bypass Python's open() (torch.save's zip writer and safetensors'
  serialize_file), which the hook alone missed - rank 1's rng_state_1.pth went unrecorded.
- TUNELAUNCH_PROBE_FAIL_RANK=R: rank R raises an exception after its first optimizer step.

The probe is a TrainerCallback added to transformers' default callbacks by `install()`, which the worker calls
before it builds the trainer, so every trainer file gets it without knowing about it.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
from pathlib import Path

PROBE_DIR = "TUNELAUNCH_PROBE_DIR"
FAIL_RANK = "TUNELAUNCH_PROBE_FAIL_RANK"
BATCHES_KEPT = 64
_WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                 "shutil.rmtree", "shutil.copyfile", "shutil.move",
                 "torch.save", "safetensors.serialize_file")  # the last two reported by _watch_native_writes

_record: dict = {}


def enabled() -> bool:
    return bool(os.environ.get(PROBE_DIR) or os.environ.get(FAIL_RANK))


def install(run_dir: Path) -> bool:
    """Register the probe for every Trainer this process builds; returns whether it is on."""
    if not enabled():
        return False
    import transformers.trainer as hf_trainer

    probe = _probe_class()
    if probe not in hf_trainer.DEFAULT_CALLBACKS:
        hf_trainer.DEFAULT_CALLBACKS.append(probe)
    from launcher.distributed import runtime

    _record.update(rank_env=runtime.rank(), world_size_env=runtime.world_size(), writes=[],
                   local_rank_env=runtime.local_rank(), node_rank_env=int(os.environ.get("GROUP_RANK", "0")))
    if os.environ.get(PROBE_DIR):
        if not runtime.is_main():
            _watch_writes(Path(run_dir).resolve())
        atexit.register(_dump)
    return True


def _dump() -> None:
    out = Path(os.environ[PROBE_DIR])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{_record.get('rank_env', 0)}.json").write_text(json.dumps(_record, indent=1, default=str))


def _watch_writes(run_dir: Path) -> None:
    prefix = str(run_dir) + os.sep
    writes = _record["writes"]

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            # an int path is a file descriptor being wrapped (os.fdopen, subprocess pipes): no file to name
            paths = [path] if writing and isinstance(path, (str, bytes, os.PathLike)) else []
        elif event in _WRITE_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            p = os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else p
            full = os.path.abspath(p)
            if full.startswith(prefix) or full == prefix[:-1]:
                writes.append([event, os.path.relpath(full, prefix)])

    sys.addaudithook(hook)
    _watch_native_writes(lambda event, path: hook(event, (path,)))


def _watch_native_writes(record) -> None:
    """torch.save and safetensors write through native code that the audit hook does not see: record the path
    they are given before they write."""
    import torch.serialization as ser

    zip_writer = ser._open_zipfile_writer

    def recording_zip_writer(name_or_buffer):
        if isinstance(name_or_buffer, (str, bytes, os.PathLike)):
            record("torch.save", name_or_buffer)
        return zip_writer(name_or_buffer)

    ser._open_zipfile_writer = recording_zip_writer
    try:
        import safetensors.torch as st
    except ImportError:
        return
    serialize_file = st.serialize_file

    def recording_serialize_file(tensors, filename, *args, **kwargs):
        record("safetensors.serialize_file", filename)
        return serialize_file(tensors, filename, *args, **kwargs)

    st.serialize_file = recording_serialize_file


def _tensor_digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().to("cpu").float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _find_trainer():
    """The Trainer whose loop is calling us (callbacks get the unwrapped model only)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    raise RuntimeError("probe: no Trainer on the call stack")


def _innermost_optimizer(opt):
    seen = set()
    while hasattr(opt, "optimizer") and id(opt) not in seen:
        seen.add(id(opt))
        opt = opt.optimizer
    return opt


def _make_probe_class():
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            import torch.distributed as dist

            trainer = self.trainer = _find_trainer()
            batches = _record.setdefault("batches", [])

            def remember_batch(module, a, kw):
                ids = kw.get("input_ids", a[0] if a else None)
                if module.training and ids is not None and len(batches) < BATCHES_KEPT:
                    batches.append({"sha256": hashlib.sha256(ids.detach().cpu().numpy().tobytes()).hexdigest(),
                                    "shape": list(ids.shape)})

            trainer.model.register_forward_pre_hook(remember_batch, with_kwargs=True)
            _record.update(
                rank=dist.get_rank() if dist.is_initialized() else 0,
                world_size=dist.get_world_size() if dist.is_initialized() else 1,
                torch_backend=dist.get_backend() if dist.is_initialized() else None,
                trainer_world_size=args.world_size,
                trainer_process_index=args.process_index,
                accelerate_type=str(trainer.accelerator.distributed_type),
                wrapper=type(trainer.model_wrapped).__name__,
                model=type(trainer.model).__name__,
                deepspeed=bool(getattr(trainer, "is_deepspeed_enabled", False)),
            )

        def on_step_end(self, args, state, control, **kwargs):
            fail = os.environ.get(FAIL_RANK)
            if fail is not None and state.global_step == 1 and int(fail) == args.process_index:
                raise RuntimeError(f"probe: rank {args.process_index} fails on purpose after step 1")

        def on_train_end(self, args, state, control, **kwargs):
            trainer = self.trainer
            params = list(trainer.model.named_parameters())
            full = sum(int(getattr(p, "ds_numel", p.numel())) for _, p in params)
            local = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for _, p in params)
            opt = _innermost_optimizer(trainer.optimizer)
            opt_numel = sum(int(s["exp_avg"].numel()) for s in getattr(opt, "state", {}).values() if "exp_avg" in s)
            if any(hasattr(p, "ds_tensor") for _, p in params):  # ZeRO-3: gather the partitions (collective)
                import deepspeed

                with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
                    digest = _tensor_digest(params)
            else:
                digest = _tensor_digest(params)
            _record.update(
                params_full=full, params_local=local, optimizer_state_numel=opt_numel,
                optimizer=type(opt).__name__, params_sha256=digest, global_step=state.global_step,
                losses=[h["loss"] for h in state.log_history if "loss" in h],
            )
            if os.environ.get(PROBE_DIR):
                _dump()

    return Probe


_cached = None


def _probe_class():
    global _cached
    if _cached is None:
        _cached = _make_probe_class()
    return _cached
