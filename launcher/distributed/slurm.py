"""Slurm: the batch script `tunelaunch submit` writes, what runs in its batch step, and what runs on each node.

    job.sbatch     #SBATCH lines from `cluster.*` (plain values: Slurm expands no shell variable there), the
                   setup lines, then `python -m launcher.distributed.slurm job RUN_DIR`
    job  (batch)   one `srun` task per node running `... slurm node RUN_DIR`; a SIGUSR1 (`--signal=B:USR1@lead`
                   before the time limit, or `scancel --signal=USR1 --batch`) is passed on to every node; when the
                   workers stopped with a complete checkpoint the job requeues itself (up to cluster.max_requeues)
    node (task)    reads its OWN machine rank (SLURM_NODEID) inside the task, meets the others at a c10d endpoint on
                   the first host of the allocation, on a port derived from the job id (two jobs sharing a node do
                   not collide), and starts its workers with the same launch command as a local run

Workers only ever read RUN_DIR/config.yaml, written once by the submitting process. A requeued job starts the
same script again: the run folder is unfinished, so the workers resume from its newest complete checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from launcher import atomic, run_dir as runs
from launcher.config.schema import RunConfig

JOB_FILE = "job.sbatch"
PREPARE_FILE = "prepare.sbatch"
ARRAY_FILE = "sweep.sbatch"
TRIALS_FILE = "trials.json"
PORT_BASE, PORT_RANGE = 15000, 20000


def log_dir(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.cluster.log_dir).expanduser().resolve() if cfg.cluster.log_dir else run_dir.resolve() / "slurm"


def job_name(run_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name)[:64] or "tunelaunch"


def python_for(cfg: RunConfig) -> str:
    """The Python that runs tunelaunch on the nodes: cluster.python, else the one running `submit`."""
    return cfg.cluster.python or sys.executable


def directives(cfg: RunConfig, name: str, output: str, gpus: bool = True, partition: str | None = None,
               nodes: int | None = None) -> list[str]:
    c = cfg.cluster
    lines = [f"--job-name={name}", f"--nodes={c.nodes if nodes is None else nodes}", "--ntasks-per-node=1"]
    if gpus and c.gpus_per_node:
        lines.append(f"--gpus-per-node={c.gpus_per_node}")
    for flag, value in (("cpus-per-task", c.cpus_per_task), ("mem", c.mem), ("time", c.time),
                        ("partition", partition or c.partition), ("account", c.account), ("qos", c.qos),
                        ("constraint", c.constraint)):
        if value is not None:
            lines.append(f"--{flag}={value}")
    lines += [f"--output={output}", "--open-mode=append", f"--signal=B:USR1@{c.signal_lead}", "--requeue"]
    return lines + list(c.extra_directives)


def _script(sbatch_lines: list[str], cfg: RunConfig, comment: str, command: list[str]) -> str:
    body = ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch_lines), f"# {comment}",
            "set -eo pipefail", f"cd {shlex.quote(os.getcwd())}", *cfg.cluster.setup,
            "exec " + shlex.join(command)]
    return "\n".join(body) + "\n"


def job_script(cfg: RunConfig, run_dir: Path) -> str:
    run_dir = run_dir.resolve()
    output = str(log_dir(cfg, run_dir) / "%x-%j.out")
    return _script(directives(cfg, job_name(run_dir), output), cfg,
                   f"Written by `tunelaunch submit` for {run_dir}; `sbatch` this file again to resume the run.",
                   [python_for(cfg), "-m", "launcher.distributed.slurm", "job", str(run_dir)])


def prepare_script(cfg: RunConfig, run_dir: Path) -> str:
    """A one-node CPU job that tokenises and packs the data into the cache the training job then reuses."""
    run_dir = run_dir.resolve()
    output = str(log_dir(cfg, run_dir) / "%x-prepare-%j.out")
    lines = [line for line in directives(cfg, job_name(run_dir), output, gpus=False, nodes=1,
                                         partition=cfg.cluster.preprocess_partition)
             if not line.startswith(("--signal", "--requeue"))]
    return _script(lines, cfg, f"Written by `tunelaunch submit`: prepares the data of {run_dir}.",
                   [python_for(cfg), "-m", "launcher.distributed.slurm", "prepare", str(run_dir)])


def array_script(cfg: RunConfig, base: Path, trials: list[Path]) -> str:
    base = base.resolve()
    limit = f"%{cfg.cluster.array_parallelism}" if cfg.cluster.array_parallelism else ""
    output = str((Path(cfg.cluster.log_dir).expanduser().resolve() if cfg.cluster.log_dir else base / "slurm")
                 / "%x-%A_%a.out")
    lines = directives(cfg, job_name(base), output) + [f"--array=0-{len(trials) - 1}{limit}"]
    return _script(lines, cfg, f"Written by `tunelaunch submit -m`: one array task per trial listed in "
                               f"{base / TRIALS_FILE}.",
                   [python_for(cfg), "-m", "launcher.distributed.slurm", "array", str(base / TRIALS_FILE)])


def write_job(cfg: RunConfig, run_dir: Path) -> list[str]:
    """Write job.sbatch (and prepare.sbatch when the data is prepared in a job of its own) into the run folder;
    returns the sbatch command that submits the training job."""
    atomic.write_text(run_dir / JOB_FILE, job_script(cfg, run_dir))
    log_dir(cfg, run_dir).mkdir(parents=True, exist_ok=True)
    if cfg.cluster.preprocess_job:
        atomic.write_text(run_dir / PREPARE_FILE, prepare_script(cfg, run_dir))
    return ["sbatch", "--parsable", str((run_dir / JOB_FILE).resolve())]


def write_array(cfg: RunConfig, base: Path, trials: list[Path]) -> list[str]:
    base.mkdir(parents=True, exist_ok=True)
    atomic.write_text(base / TRIALS_FILE, json.dumps([str(t.resolve()) for t in trials], indent=1))
    atomic.write_text(base / ARRAY_FILE, array_script(cfg, base, trials))
    (Path(cfg.cluster.log_dir).expanduser() if cfg.cluster.log_dir else base / "slurm").mkdir(parents=True,
                                                                                                exist_ok=True)
    return ["sbatch", "--parsable", str((base / ARRAY_FILE).resolve())]


def sbatch(command: list[str], dependency: str | None = None) -> str:
    """Submit; returns the job id (sbatch's own error text on failure, as a RuntimeError)."""
    if dependency:
        command = [command[0], f"--dependency={dependency}", *command[1:]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


# ---- inside the job

def port_for(job_id: str) -> int:
    """The rendezvous port of a job: derived from its id, so jobs sharing a node use different ports."""
    return PORT_BASE + int(re.sub(r"\D", "", job_id) or 0) % PORT_RANGE


def first_host() -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0]


def srun_command(cfg: RunConfig, run_dir: Path, nodes: int) -> list[str]:
    """One task per node, each running the setup lines and then the node program (inside the wrapper). Nothing
    about ranks is decided here: each task reads its own. If one node's launcher fails, srun ends the others
    (a graceful stop cannot trip this: every rank leaves only after the barrier that follows the save)."""
    node = shlex.join([python_for(cfg), "-m", "launcher.distributed.slurm", "node", str(run_dir)])
    task = "\n".join([*cfg.cluster.setup, f"exec {cfg.cluster.wrapper + ' ' if cfg.cluster.wrapper else ''}{node}"])
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "bash", "-c", task]


def run_job(run_dir: Path) -> int:
    """The batch step: one srun task per node, signals passed on, and a requeue after a graceful stop."""
    from launcher.distributed.supervise import PREEMPTED

    run_dir = run_dir.resolve()
    cfg = runs.read_config(run_dir)
    job = os.environ.get("SLURM_JOB_ID", "?")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    newest = runs.latest_checkpoint(run_dir)
    print(f"tunelaunch: job {job}, SLURM_RESTART_COUNT={restarts}, nodes {os.environ.get('SLURM_JOB_NODELIST')}: "
          f"{run_dir}, {'resuming from ' + newest.name if newest else 'starting from the beginning'}", flush=True)
    if runs.run_state(run_dir) is runs.RunState.FINISHED:
        print(f"tunelaunch: {run_dir} is already finished; nothing to do", flush=True)
        return 0
    srun = srun_command(cfg, run_dir, int(os.environ.get("SLURM_JOB_NUM_NODES", cfg.cluster.nodes)))
    warned = []

    def pass_on(signum, _frame):
        # srun hands SIGUSR1 to every task (each node's supervisor, which tells its workers).
        warned.append(signum)
        print(f"tunelaunch: {signal.Signals(signum).name} received: the workers save a checkpoint and stop",
              flush=True)
        proc.send_signal(signal.SIGUSR1)

    proc = subprocess.Popen(srun)
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, pass_on)
    code = proc.wait()
    state = runs.read_state(run_dir).get("status")
    if state == "finished":
        print(f"tunelaunch: finished: {run_dir}", flush=True)
        return 0
    if state != "preempted":
        print(f"tunelaunch: the run stopped with status {state} (srun exit {code}); see {run_dir / 'train.log'}",
              flush=True)
        return code or 1
    if signal.SIGUSR1 not in warned:  # SIGTERM: Slurm preempts (and requeues) or cancels the job itself
        return PREEMPTED
    if restarts >= cfg.cluster.max_requeues:
        print(f"tunelaunch: stopped with a checkpoint, but the job was already requeued {restarts} time(s) "
              f"(cluster.max_requeues); `sbatch {run_dir / JOB_FILE}` resumes it", flush=True)
        return PREEMPTED
    print(f"tunelaunch: checkpoint saved; requeueing job {job} (restart {restarts + 1} of at most "
          f"{cfg.cluster.max_requeues})", flush=True)
    subprocess.run(["scontrol", "requeue", job], check=False)
    return 0


def run_node(run_dir: Path) -> int:
    """One node: its own rank, the job's endpoint, then the same launch as a local run."""
    from launcher.distributed import supervise
    from launcher.distributed.launch import environment, node_command
    from launcher.hardware import Hardware

    cfg = runs.read_config(run_dir)
    rank = int(os.environ["SLURM_NODEID"])  # read here, inside the task: each node gets its own
    endpoint = (first_host(), port_for(os.environ["SLURM_JOB_ID"]))
    command = node_command(cfg, run_dir, node_rank=rank, endpoint=endpoint)
    print(f"tunelaunch: node rank {rank} ({os.environ.get('SLURMD_NODENAME', '?')}) of {cfg.distributed.num_nodes}, "
          f"{cfg.distributed.num_processes} worker(s), rendezvous {endpoint[0]}:{endpoint[1]}", flush=True)
    if rank > 0:
        _wait_for_rendezvous(*endpoint)
    code = supervise.run(command, environment(cfg, Hardware.detect(), run_dir))
    return supervise.PREEMPTED if runs.read_state(run_dir).get("status") == "preempted" else code


def _wait_for_rendezvous(host: str, port: int, timeout: float = 900.0) -> None:
    """Start after node 0's launcher holds the rendezvous store. Node 0 hosts it; a node that starts first on
    a machine where the endpoint also resolves locally (several nodes of one host) would take the port, and
    node 0's launcher would then refuse to start on a port in use."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"tunelaunch: node 0 never opened the rendezvous {host}:{port} in {timeout:.0f} s")


def run_prepare(run_dir: Path) -> int:
    from launcher.prepare import main as prepare

    return prepare(str(run_dir / "config.yaml"), [], show=0)


def run_array(trials_file: Path) -> int:
    trials = json.loads(Path(trials_file).read_text())
    return run_job(Path(trials[int(os.environ["SLURM_ARRAY_TASK_ID"])]))


def main(argv: list[str]) -> int:
    commands = {"job": run_job, "node": run_node, "prepare": run_prepare, "array": run_array}
    if len(argv) != 2 or argv[0] not in commands:
        print(f"usage: python -m launcher.distributed.slurm {{{','.join(commands)}}} PATH", file=sys.stderr)
        return 2
    return commands[argv[0]](Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
