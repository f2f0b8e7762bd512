"""Run one node's launcher (accelerate launch / torchrun) and turn a stop signal into a graceful save.

SIGUSR1 (Slurm's warning before the time limit), SIGTERM (preemption, scancel, `kill`) and SIGINT (Ctrl-C) all
mean the same here: tell the workers, which finish their step, agree on stopping, write a complete
checkpoint and exit with PREEMPTED. Why it takes a supervisor:
- the launcher runs in its own session, so a Ctrl-C in the terminal reaches this process only: torchrun's
  agent answers SIGINT/SIGTERM by killing the workers 30 s later, which may be mid-save;
- the launcher inherits SIGUSR1 as ignored (a disposition that survives exec), so a USR1 sent to every process
  of a Slurm step does not kill it (Python's default for USR1 is to terminate); the workers set their own
  handler;
- the workers are told with SIGUSR1, which only the workers act on.
A second Ctrl-C stops everything at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from launcher.checkpointing import PREEMPTED, STOP_SIGNALS, die_with_parent  # noqa: F401 (PREEMPTED: callers')
WORKER_MODULE = "launcher.worker"


def worker_processes(root_pid: int) -> list:
    """The worker processes below a launcher (the launcher itself and helper processes are left alone)."""
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for proc in children:
        try:
            if WORKER_MODULE in proc.cmdline():
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def run(command: list[str], env: dict) -> int:
    """Start the launcher, forward stop signals to its workers, and return its exit status."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by the launcher (see the module docstring)
    # die_with_parent: should this process be killed (-9), the launcher gets a SIGTERM and passes it on, so the
    # workers save and stop instead of training on, orphaned, beside a rerun of the same command.
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    stops = []

    def forward(signum, _frame):
        stops.append(signum)
        if len(stops) > 1 and signum == signal.SIGINT:  # a second Ctrl-C: stop now, no checkpoint
            print("\nstopping without a checkpoint", file=sys.stderr, flush=True)
            _kill_group(proc.pid, signal.SIGTERM)
            return
        if len(stops) == 1:
            print(f"\n{signal.Signals(signum).name}: the workers finish their step and save a checkpoint "
                  "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        for worker in worker_processes(proc.pid):
            try:
                worker.send_signal(signal.SIGUSR1)
            except Exception:  # gone meanwhile
                pass

    for s in STOP_SIGNALS:
        signal.signal(s, forward)
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
