"""A test-only look inside the worker processes of a run, put there by sitecustomize.py beside this file.

A distributed run that "works" can still be two unsynchronised copies training on the same data (FACTS.md:
accelerate's --cpu, FSDP on CPU, and the Trainer's own world size on a machine without GPUs). So the tests of
`launcher.distributed` ask every rank what it saw, from inside:

- TUNELAUNCH_PROBE_DIR=DIR: every rank writes DIR/rank<R>.json at the end of training: the world size as torch
  and as the Trainer see it, the class wrapping the trained model, the parameters this rank holds against the
  full count (ZeRO-3 partitions them), the optimizer-state elements it holds (ZeRO-1/2/3 partition them), a hash
  of each of its first micro-batches, and a hash of the final parameters (gathered first under ZeRO-3 and FSDP).
  Under FSDP2 also how many parameters are DTensors and, per parameter, the elements of its local shard against
  the whole tensor's (`shards`).
  Ranks other than 0 also list every file they created, renamed or removed inside the run folder: a Python
  audit hook, plus the two writers that bypass Python's open() (torch.save's zip writer and safetensors'
  serialize_file), which the hook alone missed - rank 1's rng_state_1.pth went unrecorded.
- TUNELAUNCH_PROBE_FAIL_RANK=R: rank R raises an exception after its first optimizer step.
- TUNELAUNCH_PROBE_STEP_SLEEP=S: every rank sleeps S seconds after each optimizer step (so that a test can kill or
  signal a tiny run, which would otherwise finish in seconds, at a step of its choosing).
- TUNELAUNCH_PROBE_SAVE_SLEEP=S: every rank sleeps S seconds in the middle of each checkpoint save (after the model
  and optimizer, before its RNG state and trainer_state.json), so that a test can kill a run mid-save.

The shipped worker knows nothing of this. `install()` runs at interpreter startup of a worker process, before
any of its code, and imports nothing heavy: it registers an audit hook and an exit hook, and a post-import hook
that patches three modules right after they are first executed, whoever imports them: transformers.trainer (the
probe joins its DEFAULT_CALLBACKS, so every Trainer the worker builds gets it), and for ranks other than 0
torch.serialization and safetensors.torch (the native writers above).
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.abc
import json
import os
import sys
from pathlib import Path

PROBE_DIR = "TUNELAUNCH_PROBE_DIR"
FAIL_RANK = "TUNELAUNCH_PROBE_FAIL_RANK"
STEP_SLEEP = "TUNELAUNCH_PROBE_STEP_SLEEP"
SAVE_SLEEP = "TUNELAUNCH_PROBE_SAVE_SLEEP"
BATCHES_KEPT = 64
_WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                 "shutil.rmtree", "shutil.copyfile", "shutil.move",
                 "torch.save", "safetensors.serialize_file")  # the last two reported by the patched writers

_record: dict = {}


def install(config: str) -> None:
    """Start probing this worker process (`python -m launcher.worker CONFIG`); CONFIG names its run folder."""
    run_dir = Path(config).resolve().parent  # as the worker finds it
    rank = int(os.environ.get("RANK", "0"))  # as launcher.distributed.runtime reads them
    _record.update(rank_env=rank, world_size_env=int(os.environ.get("WORLD_SIZE", "1")), writes=[],
                   local_rank_env=int(os.environ.get("LOCAL_RANK", "0")),
                   node_rank_env=int(os.environ.get("GROUP_RANK", "0")),
                   # the cores this worker may run on (Slurm's CPU binding), and the job's CPU share as srun says
                   affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                   slurm_cpus_per_task=os.environ.get("SLURM_CPUS_PER_TASK"))
    after_import = {"transformers.trainer": _add_probe_callback}
    if os.environ.get(PROBE_DIR):
        if rank != 0:
            after_import.update(_watch_writes(run_dir))
        atexit.register(_dump)
    sys.meta_path.insert(0, _AfterImport(after_import))


def _dump() -> None:
    out = Path(os.environ[PROBE_DIR])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{_record.get('rank_env', 0)}.json").write_text(json.dumps(_record, indent=1, default=str))


# ---- a post-import hook: fn(module) right after the module's code ran, before its importer gets it

class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, hooks: dict):
        self.hooks = hooks

    def find_spec(self, name, path, target=None):
        if name not in self.hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenLoader(spec.loader, lambda module: self.hooks.pop(name, _nothing)(module))
                return spec
        return None


def _nothing(module) -> None:
    pass


class _ThenLoader(importlib.abc.Loader):
    """The module's own loader, then the hook (once per module: popped from the hooks when it runs)."""

    def __init__(self, loader, then):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.then(module)

    def __getattr__(self, name):  # get_source, get_code, is_package, get_resource_reader, ...
        return getattr(self.loader, name)


def _add_probe_callback(hf_trainer) -> None:
    hf_trainer.DEFAULT_CALLBACKS.append(_make_probe_class())


# ---- what rank > 0 writes in the run folder

def _watch_writes(run_dir: Path) -> dict:
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
    record = lambda event, path: hook(event, (path,))  # noqa: E731

    def watch_torch_save(ser) -> None:
        """torch.save writes through native code that the audit hook does not see: record the path first."""
        zip_writer = ser._open_zipfile_writer

        def recording_zip_writer(name_or_buffer):
            if isinstance(name_or_buffer, (str, bytes, os.PathLike)):
                record("torch.save", name_or_buffer)
            return zip_writer(name_or_buffer)

        ser._open_zipfile_writer = recording_zip_writer

    def watch_safetensors(st) -> None:
        serialize_file = st.serialize_file

        def recording_serialize_file(tensors, filename, *args, **kwargs):
            record("safetensors.serialize_file", filename)
            return serialize_file(tensors, filename, *args, **kwargs)

        st.serialize_file = recording_serialize_file

    return {"torch.serialization": watch_torch_save, "safetensors.torch": watch_safetensors}


# ---- the callback

def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local_numel(t) -> int:
    """The elements this rank holds: a DTensor's (FSDP2) local shard, a ZeRO-3 partition, else the tensor."""
    if _is_dtensor(t):
        return int(t.to_local().numel())
    return int(t.ds_tensor.numel()) if hasattr(t, "ds_tensor") else int(t.numel())


def _tensor_digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        if _is_dtensor(t):  # FSDP2: the whole tensor, gathered from every rank's shard (a collective)
            t = t.full_tensor()
        # a copy: numpy() on the tensor itself would share its storage, which FSDP2 can then no longer free
        # ("Trying to resize storage that is not resizable" in the final save)
        h.update(t.detach().to("cpu", copy=True).float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _reshard(model) -> None:
    """FSDP2: back to the sharded parameters (a module left gathered after a forward, such as the root after the
    last evaluation, shows its whole tensors instead of its DTensor shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


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
    from transformers.trainer_callback import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            import torch.distributed as dist

            trainer = self.trainer = _find_trainer()
            batches = _record.setdefault("batches", [])
            if os.environ.get(SAVE_SLEEP):
                import time

                save_rng_state = trainer._save_rng_state

                def slow_save_rng_state(output_dir):
                    time.sleep(float(os.environ[SAVE_SLEEP]))
                    save_rng_state(output_dir)

                trainer._save_rng_state = slow_save_rng_state

            def remember_batch(module, a, kw):
                ids = kw.get("input_ids", a[0] if a else None)
                # (trl's distillation calls the wrapped model with the model itself first: not a batch)
                if module.training and hasattr(ids, "detach") and len(batches) < BATCHES_KEPT:
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
            if os.environ.get(STEP_SLEEP):
                import time

                time.sleep(float(os.environ[STEP_SLEEP]))

        def on_train_end(self, args, state, control, **kwargs):
            trainer = self.trainer
            _reshard(trainer.model)
            params = list(trainer.model.named_parameters())
            full = sum(int(getattr(p, "ds_numel", p.numel())) for _, p in params)
            local = sum(_local_numel(p) for _, p in params)
            opt = _innermost_optimizer(trainer.optimizer)
            opt_numel = sum(_local_numel(s["exp_avg"]) for s in getattr(opt, "state", {}).values() if "exp_avg" in s)
            # FSDP2: which parameters are DTensors, and per parameter [elements held here, whole tensor]
            _record.update(dtensor_params=sum(_is_dtensor(p) for _, p in params), params_count=len(params),
                           shards={n: [_local_numel(p), int(p.numel()), bool(p.requires_grad)] for n, p in params})
            ref = getattr(trainer, "ref_model", None)  # trl's separate reference model (dpo without LoRA)
            if ref is not None:
                _record["ref_model_dtensor_params"] = sum(_is_dtensor(p) for p in ref.parameters())
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
