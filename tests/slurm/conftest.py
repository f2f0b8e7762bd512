"""A real local Slurm cluster for tests (scripts/slurm-cluster.sh), and helpers that submit jobs to it and wait.

Tests here are marked `@pytest.mark.slurm` and run with `python -m pytest tests/slurm -m slurm` (root, Debian).
The session fixture `slurm_cluster` starts the cluster (installing slurm and munge on first use); a cluster that
does not come up FAILS the test, it is never skipped.

There is no accounting database (no sacct): the helpers poll `squeue` and read `scontrol show job`, which keeps a
finished job for MinJobAge=300 s. Job ids restart at 1 whenever the cluster is started fresh, so write each
job's output under the test's own tmp_path, never into a shared folder named after the job id alone.

Plain functions (import them: `from tests.slurm.conftest import sbatch, wait_for_job`):
    sbatch(args, cwd, env=None) -> int                      job id (`sbatch --parsable`)
    job_fields(job_id) -> dict                              `scontrol show job` of one job (or array task "7_2")
    wait_for_state(job_id, states, timeout=60) -> dict      until JobState is one of states (e.g. "RUNNING")
    wait_for_job(job_id, timeout=120) -> dict               until it left the queue in a final state
    array_tasks(array_id) -> dict[str, dict]                each task's fields, keyed by ArrayTaskId
    wait_for_array(array_id, timeout=300) -> dict[str, dict] until every task left the queue in a final state
    job_output(fields) -> str                               text of the job's StdOut file ("" if none yet)
    slurm(args, timeout=30, check=True) -> CompletedProcess any Slurm client command (scontrol, scancel, ...)
    free_port() -> int                                      a free TCP port (MASTER_PORT of a job)
The fixture returns a `SlurmCluster` with the same functions as methods, plus `submit(...)` for a script text.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
# the interpreter running the tests (the project's venv): jobs use it through srun / in their scripts
PYTHON = sys.executable

# a job in one of these states is over (squeue no longer lists it once it also finished COMPLETING)
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "SPECIAL_EXIT", "REVOKED",
})

# `scontrol show job -o`: one line per job, "Key=value Key=value ..."; a key may hold ':' or '/' (ReqB:S:C:T,
# CPUs/Task), a value may hold '=' (TRES=cpu=1,node=1) and, rarely, spaces (a Reason or Comment)
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol(text: str) -> list[dict]:
    """Records of `scontrol show job -o` (one line per job or array task) as {field: value} dicts."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        matches = list(_KEY.finditer(line))
        rec = {}
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            rec[m.group(1)] = line[m.end():end].strip()
        if rec:
            records.append(rec)
    return records


def slurm(args: list[str], timeout: float = 30, check: bool = True, cwd=None,
          env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a Slurm client command; with check, a non-zero exit fails the test with its output."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=None if env is None else dict(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"`{shlex.join(str(a) for a in args)}` exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


def sbatch(args: list[str], cwd, env: Mapping[str, str] | None = None) -> int:
    """`sbatch --parsable ARGS` in cwd; the job id (for an array, the array's id). env: the whole environment the
    job inherits (sbatch's default --export=ALL), default this process's."""
    proc = slurm(["sbatch", "--parsable", *args], cwd=cwd, env=env)
    out = proc.stdout.strip().splitlines()
    assert out, f"sbatch printed no job id:\n{proc.stdout}{proc.stderr}"
    job_id = int(out[-1].split(";")[0])  # "ID" or "ID;cluster"
    _SUBMITTED.append(job_id)
    return job_id


_SUBMITTED: list[int] = []  # every job sbatch() submitted; what a test leaves queued is cancelled after it


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs():
    """After each test, scancel the jobs it submitted through sbatch() that are still queued or running, so that a
    failed test's long job does not hold the nodes for the next one."""
    first = len(_SUBMITTED)
    yield
    mine = _SUBMITTED[first:]
    if mine:
        try:
            left = [j for j in mine if _queued(j)]
            if left:
                slurm(["scancel", *map(str, left)], check=False)
        except (AssertionError, OSError, subprocess.SubprocessError):
            pass  # the cluster is gone: nothing left to cancel


def _show(job_id) -> list[dict]:
    """All records `scontrol show job -o ID` prints; [] for a job Slurm does not know (never or no longer)."""
    proc = slurm(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr or "Invalid job id" in proc.stdout:
            return []
        raise AssertionError(f"scontrol show job {job_id} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return parse_scontrol(proc.stdout)


def job_fields(job_id) -> dict:
    """`scontrol show job` of one job (int id, or "ARRAYID_TASK" for one array task) as a dict: JobState, ExitCode
    ("0:0" = exit code:signal), Restarts, NodeList, BatchHost, NumNodes, NumTasks, StdOut, StdErr, WorkDir, Reason,
    ArrayJobId/ArrayTaskId... Fails the test when Slurm does not know the job."""
    records = _show(job_id)
    assert records, f"Slurm knows no job {job_id} (never submitted, or purged 300 s after it ended)"
    return _pick(records, job_id)


def _pick(records: list[dict], job_id) -> dict:
    want = str(job_id)
    if "_" in want:
        array_id, task = want.split("_", 1)
        for rec in records:
            if rec.get("ArrayJobId") == array_id and rec.get("ArrayTaskId") == task:
                return rec
    for rec in records:
        if rec.get("JobId") == want:
            return rec
    return records[0]


def job_output(fields: Mapping[str, str]) -> str:
    """The text of a job's StdOut file (from job_fields/wait_for_job), "" when it does not exist (yet)."""
    path = fields.get("StdOut")
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT / a rendezvous endpoint of a job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(job_id, fields: Mapping[str, str] | None) -> str:
    squeue = slurm(["squeue", "-r"], check=False).stdout
    out = job_output(fields or {})
    shown = " ".join(f"{k}={v}" for k, v in (fields or {}).items())
    return f"job {job_id}: {shown or '(unknown)'}\n-- squeue:\n{squeue}\n-- its StdOut (tail):\n{out[-3000:]}"


def _queued(job_id) -> bool:
    """Whether squeue still lists the job (pending, running, completing, requeued...) or one of its array tasks."""
    proc = slurm(["squeue", "-h", "-r", "-j", str(job_id), "-o", "%i %T"], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return False
        raise AssertionError(f"squeue -j {job_id} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return bool(proc.stdout.strip())


def _states(states: str | Iterable[str]) -> set[str]:
    return {states} if isinstance(states, str) else set(states)


def wait_for_state(job_id, states: str | Iterable[str], timeout: float = 60, poll: float = 0.25) -> dict:
    """Poll until the job's JobState is one of `states` ("RUNNING", or e.g. {"RUNNING", "COMPLETED"}); its fields.
    Fails at once when the job ends in a state not asked for, or after timeout seconds."""
    want = _states(states)
    deadline = time.monotonic() + timeout
    fields = None
    while True:
        records = _show(job_id)
        fields = _pick(records, job_id) if records else None
        if fields:
            state = fields.get("JobState", "")
            if state in want:
                return fields
            if state in FINAL_STATES and not want & FINAL_STATES:
                raise AssertionError(f"waited for {sorted(want)}, but the job ended {state}\n"
                                     + _describe(job_id, fields))
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {sorted(want)} after {timeout:.0f} s\n"
                                 + _describe(job_id, fields))
        time.sleep(poll)


def wait_for_job(job_id, timeout: float = 120, poll: float = 0.5) -> dict:
    """Poll until the job has left the queue (`squeue -h -j ID` empty) and `scontrol show job` shows a final
    JobState (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...); its final fields. A requeued job is waited through
    (it stays queued while PENDING again). Times out with the job's fields, squeue and its output's tail."""
    deadline = time.monotonic() + timeout
    fields = None
    while True:
        if not _queued(job_id):
            fields = job_fields(job_id)
            if fields.get("JobState") in FINAL_STATES:
                return fields
        if time.monotonic() > deadline:
            try:
                fields = job_fields(job_id)
            except AssertionError:
                pass
            raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s\n" + _describe(job_id, fields))
        time.sleep(poll)


def array_tasks(array_id) -> dict[str, dict]:
    """Each record of an array job, keyed by ArrayTaskId: "0", "1", ... for tasks that started; tasks still pending
    together show as one record with a range key such as "2-3" or "2-3%2"."""
    return {rec.get("ArrayTaskId", rec.get("JobId", "?")): rec for rec in _show(array_id)}


def wait_for_array(array_id, timeout: float = 300, poll: float = 0.5) -> dict[str, dict]:
    """Poll until no task of the array is queued (`squeue -h -r -j ID` empty) and every task's state is final;
    the tasks' final fields keyed by ArrayTaskId ("0", "1", ...)."""
    deadline = time.monotonic() + timeout
    tasks: dict[str, dict] = {}
    while True:
        if not _queued(array_id):
            tasks = array_tasks(array_id)
            if tasks and all(t.get("JobState") in FINAL_STATES for t in tasks.values()):
                return tasks
        if time.monotonic() > deadline:
            shown = "\n".join(f"  {k}: {v.get('JobState')} {v.get('NodeList')} {v.get('ExitCode')}"
                              for k, v in (tasks or array_tasks(array_id)).items())
            squeue = slurm(["squeue", "-r"], check=False).stdout
            raise AssertionError(f"array {array_id} not finished after {timeout:.0f} s:\n{shown}\n-- squeue:\n{squeue}")
        time.sleep(poll)


@dataclass
class SlurmCluster:
    """What the `slurm_cluster` fixture returns: the running cluster and the helpers above as methods."""

    nodes: list[str]
    partition: str
    root: Path
    python: str = PYTHON
    repo: Path = REPO
    start_output: str = field(default="", repr=False)

    sbatch = staticmethod(sbatch)
    job_fields = staticmethod(job_fields)
    wait_for_state = staticmethod(wait_for_state)
    wait_for_job = staticmethod(wait_for_job)
    array_tasks = staticmethod(array_tasks)
    wait_for_array = staticmethod(wait_for_array)
    job_output = staticmethod(job_output)
    slurm = staticmethod(slurm)
    free_port = staticmethod(free_port)

    def submit(self, directory: Path, script: str, args: list[str] = (), env: Mapping[str, str] | None = None,
               name: str = "job.sbatch") -> int:
        """Write `script` (a batch script's text, #SBATCH lines welcome) to directory/name and sbatch it from
        there, with `--output=directory/slurm-%j.out` unless args or the script name an output; the job id."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(script)
        path.chmod(0o755)
        extra = [] if any(a.startswith(("--output", "-o")) for a in args) or "--output" in script \
            else [f"--output={directory}/slurm-%j.out"]
        return sbatch([*extra, *args, str(path)], cwd=directory, env=env)


def _start_cluster() -> SlurmCluster:
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`bash {SCRIPT} start` did not finish in 900 s:\n{exc.stdout}{exc.stderr}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"the local Slurm cluster did not start (`bash scripts/slurm-cluster.sh start` exited "
                    f"{proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}", pytrace=False)
    info = slurm(["sinfo", "-h", "-N", "-o", "%N %P %T"]).stdout.split()
    nodes = sorted(set(info[0::3]), key=lambda n: (len(n), n))
    partition = info[1].rstrip("*") if len(info) > 1 else ""
    root = Path(os.environ.get("TUNELAUNCH_SLURM_ROOT", "/tmp/tunelaunch-slurm"))
    return SlurmCluster(nodes=nodes, partition=partition, root=root, start_output=proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local Slurm cluster, started (or found running) once per session; a failed start fails the test."""
    return _start_cluster()
