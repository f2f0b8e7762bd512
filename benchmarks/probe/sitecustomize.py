"""A probe the benchmarks put into every training process they start (this folder on PYTHONPATH makes Python import
it at start-up; it does nothing unless BENCH_PROBE names a file). Once `transformers.trainer_callback` is imported,
transformers' CallbackHandler reports to that file, one JSON line per event with the wall-clock time and the
process's peak RSS so far (on a GPU also its peak CUDA memory): `begin` (train starts; with the model's trainable
parameter count), `step` (an optimizer step ended), `log` (what the Trainer logged: loss, num_tokens, ...) and
`end` (train ended). The same probe in every arm (tunelaunch, a hand-written TRL script, `trl sft`) measures them
the same way, without touching their code; it imports nothing heavy and costs one file append per step.
"""
import os

if os.environ.get("BENCH_PROBE"):
    import importlib.abc
    import importlib.util
    import json
    import sys
    import time

    _PATH = os.environ["BENCH_PROBE"]
    _TARGET = "transformers.trainer_callback"

    def _peak_rss_kb():
        # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a process started from a
        # large one would report that one's peak as its own
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

    def _emit(event, **fields):
        rank = os.environ.get("RANK", "0")
        if rank != "0":
            return
        fields.update(event=event, t=time.time(), pid=os.getpid(),
                      maxrss_kb=_peak_rss_kb())
        torch = sys.modules.get("torch")  # never imported here: only read when the process already uses it
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            fields["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        with open(_PATH, "a") as f:
            f.write(json.dumps(fields, default=str) + "\n")

    def _patch(module):
        handler = module.CallbackHandler
        events = {"on_train_begin": "begin", "on_step_end": "step", "on_log": "log", "on_train_end": "end"}
        for name, event in events.items():
            setattr(handler, name, _hook(getattr(handler, name), event))

    def _hook(original, event):
        def hook(self, args, state, control, *rest, **kwargs):
            extra = {}
            if event == "log":
                logs = rest[0] if rest else kwargs.get("logs")
                extra["logs"] = logs or {}
            elif event == "begin" and getattr(self, "model", None) is not None:
                params = list(self.model.parameters())
                extra["trainable_params"] = sum(p.numel() for p in params if p.requires_grad)
            _emit(event, step=state.global_step, **extra)
            return original(self, args, state, control, *rest, **kwargs)

        return hook

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != _TARGET:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
