"""One node of a Slurm job: `python -m launcher.cluster.node RUN_DIR`, run by each srun task of job.sbatch (inside
the container when there is one).

It calls no Slurm command (container images rarely ship Slurm): its machine rank is SLURM_NODEID, which srun
sets in each task, and the rendezvous endpoint is what the batch step found on the host and exported
(TUNELAUNCH_MASTER_ADDR / TUNELAUNCH_MASTER_PORT). Then it starts this node's workers with the same launch command
as a local run, under the same supervisor (a stop signal becomes a graceful save).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import launcher
from launcher import run_dir as runs

# torch.distributed.elastic's report of a worker that died by a signal: "exitcode  : -9 (pid: 1234)"
_DIED = re.compile(r"exitcode\s*:\s*-(\d+)\b")


def endpoint() -> tuple[str, int]:
    try:
        return os.environ["TUNELAUNCH_MASTER_ADDR"], int(os.environ["TUNELAUNCH_MASTER_PORT"])
    except (KeyError, ValueError):
        raise SystemExit("tunelaunch: TUNELAUNCH_MASTER_ADDR / TUNELAUNCH_MASTER_PORT are not set: this program is "
                         "started by the batch step of job.sbatch (sbatch RUN_DIR/job.sbatch), not by hand") from None


def run(run_dir: Path) -> int:
    from launcher import console
    from launcher.distributed import supervise
    from launcher.distributed.launch import environment, node_command
    from launcher.hardware import Hardware

    run_dir = Path(run_dir).resolve()
    cfg = runs.read_run_config(run_dir)  # a resume: the configuration it starts with (config.yaml until then)
    rank = int(os.environ["SLURM_NODEID"])  # read here, inside the task: each node gets its own
    host, port = endpoint()
    command = node_command(cfg, run_dir, node_rank=rank, endpoint=(host, port))
    where = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    print(f"tunelaunch: node rank {rank} ({where}) of {cfg.distributed.num_nodes}, "
          f"{cfg.distributed.num_processes} worker(s), rendezvous {host}:{port}, "
          f"code {Path(launcher.__file__).resolve().parent}", flush=True)
    if rank > 0:
        _wait_for_rendezvous(host, port)
    signals: list[int] = []

    def watch(line: str) -> None:
        found = _DIED.search(line)
        if found:
            signals.append(int(found.group(1)))

    with console.launcher_stderr(watch=watch):
        code = supervise.run(command, environment(cfg, Hardware.detect(), run_dir))
    status = runs.read_status(run_dir)
    if signals and status not in (runs.Status.FINISHED, runs.Status.PREEMPTED):
        name = signal.Signals(signals[0]).name if signals[0] in signal.valid_signals() else f"signal {signals[0]}"
        why = (" (out of memory is the usual cause: the kernel's OOM killer, or the job's --mem)"
               if signals[0] == signal.SIGKILL else "")
        error = f"a worker on {where} was killed by {name} (signal {signals[0]}){why}"
        print(f"tunelaunch: {error}", file=sys.stderr, flush=True)
        runs.write_state(run_dir, runs.Status.FAILED, error=error, killed_by=name, node=where)
    return supervise.PREEMPTED if status is runs.Status.PREEMPTED else code


def _wait_for_rendezvous(host: str, port: int, timeout: float = 900.0) -> None:
    """Start after node 0's launcher holds the rendezvous store. Node 0 hosts it; a node that starts first on
    a machine where the endpoint also resolves locally (several nodes of one host) would take the port, and
    node 0's launcher would then refuse to start on a port in use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"tunelaunch: node 0 never opened the rendezvous {host}:{port} in {timeout:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m launcher.cluster.node RUN_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(Path(sys.argv[1])))
