"""Test-only: what a streamed run's worker processes read, recorded from inside them.

tests/integration/test_streaming.py and tests/distributed/test_streaming.py put this folder first on PYTHONPATH
(and probe_site/ after it, whose probe this file installs in its place when its variables are set, so the step
sleep that lets a test kill a run mid-training still works). With TUNELAUNCH_STREAM_PROBE_DIR=DIR, every process
started as `python -m launcher.worker CONFIG` writes DIR/rank<R>.json at exit: the `id` column of every raw row
its stream read (through launcher.data.streaming._raw_rows, wrapped right after that module is imported) and
its peak resident memory (VmHWM, KiB), at exit and when training is over (as launcher.manifest.write, the
first of the run's records, starts). The shipped launcher knows nothing of it.

Why VmHWM and not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a worker started by
subprocess (vfork + exec) from a large pytest process reports that process's peak as its own. VmHWM belongs to
the address space, which exec replaces, so it is the worker's alone.
"""
import os
import sys

from tunelaunch_worker_argv import worker_config  # probe_site/, after this folder on PYTHONPATH

STREAM_PROBE_DIR = "TUNELAUNCH_STREAM_PROBE_DIR"


def peak_rss_kib() -> int:
    """This process's peak resident memory since its exec (VmHWM of /proc/self/status, in KiB)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def _install_stream_probe(out_dir: str) -> None:
    import atexit
    import json

    import tunelaunch_probe  # probe_site/: its post-import hook

    record = {"rank": int(os.environ.get("RANK", "0")), "ids": []}

    def wrap(module):
        raw_rows = module._raw_rows

        def recording_raw_rows(batch):
            rows = raw_rows(batch)
            record["ids"] += [r.get("id") for r in rows]
            return rows

        module._raw_rows = recording_raw_rows

    def dump():
        record["peak_rss_kib"] = peak_rss_kib()
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"rank{record['rank']}.json"), "w") as fh:
            json.dump(record, fh)

    def wrap_manifest(module):
        write = module.write

        def write_after_recording(*args, **kwargs):
            # the peak of training itself, before the run's records are written
            record["peak_rss_trained_kib"] = peak_rss_kib()
            return write(*args, **kwargs)

        module.write = write_after_recording

    sys.meta_path.insert(0, tunelaunch_probe._AfterImport({"launcher.data.streaming": wrap,
                                                           "launcher.manifest": wrap_manifest}))
    atexit.register(dump)


_config = worker_config()
if _config is not None:
    if any(os.environ.get(f"TUNELAUNCH_PROBE_{k}") for k in ("DIR", "FAIL_RANK", "STEP_SLEEP", "SAVE_SLEEP")):
        import tunelaunch_probe

        tunelaunch_probe.install(_config)
    if os.environ.get(STREAM_PROBE_DIR):
        _install_stream_probe(os.environ[STREAM_PROBE_DIR])
